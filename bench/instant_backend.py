"""An instant OpenAI-compatible chat server for the side-by-side benchmark: both gateways
(the local run, through LOCAL_CHAT_URL; LiteLLM, as its api_base) sit in front of it, so
what differs between them is their own time. Greedy requests get the same answer every
time (the caches may serve it again); `stream: true` gets SSE chunks, one per word,
`token_ms` apart after the first.

  python -m bench.instant_backend [--port N] [--token-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from local_run.servers import BackgroundServer

WORDS = 8


def _answer_words(messages) -> list[str]:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return [f"w{digest[i:i + 4]}" for i in range(0, 4 * WORDS, 4)]


def instant_backend(token_ms: float = 0.0) -> Starlette:
    calls = {"n": 0}
    lock = threading.Lock()

    async def chat(request: Request) -> Response:
        body = await request.json()
        with lock:
            calls["n"] += 1
        words = _answer_words(body.get("messages"))
        model = body.get("model", "instant")
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse({
                "id": "chatcmpl-instant", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)},
            })

        async def events():
            for i, word in enumerate(words):
                if i and token_ms:
                    await asyncio.sleep(token_ms / 1000)
                chunk = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": {"content": word + " "},
                                      "finish_reason": "stop" if i == len(words) - 1 else None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "instant", "object": "model", "created": 0, "owned_by": "bench"}]})

    async def stats(request: Request) -> Response:
        return JSONResponse({"chat_calls": calls["n"]})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instant_backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = BackgroundServer(instant_backend(args.token_ms), port=args.port, name="instant-backend").start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
