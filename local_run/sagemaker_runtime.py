"""The local run's SageMaker runtime URL (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME): each
endpoint's calls (`/endpoints/{name}/...`) go to the stand-in of that endpoint, as
SageMaker routes them by name; an unknown name gets SageMaker's 400 ValidationError.
Every other path goes to the default app (the LLM stand-in's container face, its
counters). An ASGI dispatcher: no extra hop."""

from __future__ import annotations

import json

_ENDPOINTS = "/endpoints/"


class SageMakerRuntime:
    def __init__(self, default_app, endpoints: dict) -> None:
        self.default_app, self.endpoints = default_app, dict(endpoints)

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(_ENDPOINTS):
            return await self.default_app(scope, receive, send)
        name = path[len(_ENDPOINTS) :].split("/", 1)[0]
        app = self.endpoints.get(name)
        if app is not None:
            return await app(scope, receive, send)
        body = json.dumps({"__type": "ValidationError", "message": f"Endpoint {name} of account 000000000000 not found."})
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"x-amzn-errortype", b"ValidationError")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
