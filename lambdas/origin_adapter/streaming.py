"""Relaying a model's token stream to the client as it is generated (`stream: true`).

SageMaker's InvokeEndpointWithResponseStream hands over the container's bytes in
PayloadParts cut anywhere, not at line ends. The serving containers write one event per
line: LMI (djl-serving) JSON Lines of `chat.completion.chunk` / `text_completion` objects,
or TGI-style `{"token": ...}` objects; vLLM's own server and TGI write SSE (`data: {...}`).
StreamRelay reassembles the lines, writes each event out as soon as its line is complete
(as OpenAI SSE on the /v1 routes, byte for byte as the container sent it on
/invocations), keeps what it sent (the answer a hit replays), and judges whether the
stream ended normally: only such a stream may be stored (docs/decisions.md, "Streaming
misses").
"""

from __future__ import annotations

import json

SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"


class StreamRelay:
    """One stream's relay: feed() the model's bytes, finish() once the model's stream
    ended; both return what to send the client now.

    `sse`: OpenAI routes: each event as `data: <the line>\\n\\n`, `data: [DONE]` at a normal
    end; else (/invocations) every line is relayed as the container wrote it.
    `choices`: how many choices the request asked for (n); each must get a finish reason.
    `usage`: the request asked for a usage chunk (stream_options.include_usage).
    `keep_limit`: the largest answer worth keeping for the cache (bytes); past it the
    relay stops keeping a copy and the answer is not stored.
    """

    def __init__(self, *, sse: bool, choices: int = 1, usage: bool = False, keep_limit: int) -> None:
        self.sse = sse
        self.choices = choices
        self.usage_wanted = usage
        self.keep_limit = keep_limit
        self.events = 0  # events relayed (a model's error event included)
        self.finished: set[int] = set()  # choice indexes that got a finish reason
        self.usage_seen = False
        self.model_error: str | None = None  # the model's own error event, or a line we cannot read
        self.error_relayed = False  # the model's own error event went to the client as it was
        self.ended = False  # finish() ran: the model's stream ended
        self._pending = b""
        self._kept: list[bytes] | None = []
        self._kept_bytes = 0

    # -- the stream ----------------------------------------------------------------------
    def feed(self, part: bytes) -> list[bytes]:
        data = self._pending + part
        *lines, self._pending = data.split(b"\n")
        out = [frame for line in lines if (frame := self._line(line)) is not None]
        self._keep(out)
        return out

    def finish(self) -> list[bytes]:
        """The model's stream ended (no exception): a last line without its newline, then
        the end of the client's stream when the answer is complete."""
        self.ended = True
        out = []
        if self._pending:
            frame = self._line(self._pending)
            self._pending = b""
            if frame is not None:
                out.append(frame)
        if self.sse and self.complete:
            out.append(SSE_DONE)
        self._keep(out)
        return out

    # -- the verdict ---------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """The stream ended normally: the model's stream ended, no error event, every
        choice finished, and the usage chunk came if it was asked for."""
        return (
            self.ended
            and self.model_error is None
            and self.events > 0
            and self.finished >= set(range(self.choices))
            and (self.usage_seen or not self.usage_wanted)
        )

    def why_incomplete(self) -> str:
        if self.model_error is not None:
            return self.model_error
        if not self.ended:
            return "stream cut off"
        if self.events == 0:
            return "empty stream"
        if not self.finished >= set(range(self.choices)):
            return "a choice ended without a finish reason"
        return "usage chunk missing"

    def kept(self) -> bytes | None:
        """What the client got, whole, if it is worth storing (complete, not too large)."""
        if not self.complete or self._kept is None:
            return None
        return b"".join(self._kept)

    # -- lines -----------------------------------------------------------------------------
    def _line(self, raw: bytes) -> bytes | None:
        line = raw.rstrip(b"\r")
        text = line.strip()
        if text.startswith(b"data:"):
            text = text[5:].strip()
        elif text.startswith((b":", b"event:", b"id:", b"retry:")):
            text = b""  # SSE fields other than data: nothing to judge
        readable = True
        if text and text != b"[DONE]":
            readable = self._judge(text)
        if not self.sse:
            return raw + b"\n"  # the container's own framing, byte for byte
        if not text or text == b"[DONE]" or not readable:
            return None  # our own framing and terminator; no event a client could not parse
        return b"data: " + text + b"\n\n"

    def _judge(self, text: bytes) -> bool:
        """Note what the event says; False for a line that is no event at all."""
        self.events += 1
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if type(event) is not dict:
            self.model_error = self.model_error or "unreadable event in the model's stream"
            return False
        if event.get("error"):  # vLLM's, TGI's and LMI's mid-stream error events
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self.model_error = self.model_error or f"model error mid-stream: {str(message)[:200]}"
            self.error_relayed = True
            return True
        choices = event.get("choices")
        if isinstance(choices, list):  # OpenAI chunks (chat.completion.chunk, text_completion)
            for choice in choices:
                if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                    index = choice.get("index", 0)
                    self.finished.add(index if type(index) is int else -1)
            if event.get("usage"):
                self.usage_seen = True
        elif "token" in event:  # TGI-style stream: the last event carries the generated text
            details = event.get("details")
            if event.get("generated_text") is not None or (isinstance(details, dict) and details.get("finish_reason")):
                self.finished.add(0)
        return True

    def _keep(self, frames: list[bytes]) -> None:
        if self._kept is None or not frames:
            return
        self._kept_bytes += sum(map(len, frames))
        if self._kept_bytes > self.keep_limit:
            self._kept = None  # it could never be served from the edge: no copy kept
        else:
            self._kept.extend(frames)


def error_event(status: int, code: str, message: str, *, sse: bool) -> bytes:
    """The event that ends a cut-off stream: the OpenAI error shape, which the openai
    client raises as an APIError; on /invocations the same object as a line."""
    error = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                       "param": None, "code": code}}
    line = json.dumps(error).encode()
    return b"data: " + line + b"\n\n" if sse else line + b"\n"


def requested_choices(request: dict) -> int:
    """n of a generation request, as the servers coerce it (2, 2.0 and "2" ask for two
    choices); absent or unreadable: 1. The edge refuses n < 1."""
    n = request.get("n")
    try:
        count = float(n.strip() if type(n) is str else n) if type(n) is not bool else 1.0
    except (TypeError, ValueError):
        return 1
    return int(count) if 1 <= count <= 1024 and count == int(count) else 1  # NaN and inf fail the bounds


def wants_usage(request: dict) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
