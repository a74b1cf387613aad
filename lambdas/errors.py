"""The OpenAI error shape, which every error this service answers with takes:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from collections import namedtuple


# A named tuple, not a dataclass: dataclasses would add ~15 ms to every edge cold start.
class ApiError(namedtuple("ApiError", "status message param code")):
    __slots__ = ()

    @property
    def kind(self) -> str:
        """OpenAI's error `type` for the status."""
        if self.status == 429:
            return "rate_limit_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()
