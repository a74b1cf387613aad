"""The work after an answer runs inside the invocation that answered it.

The origin adapter sends the client its answer first and stores it (and releases its
lease, and writes its metrics record) after the response ended. On Lambda that work must
not be frozen: Lambda freezes an execution environment once its runtime and every
extension have asked for the next event, and a thread still running then stops mid-call,
resuming at the next invocation or never (Lambda Developer Guide, "Using the Lambda
Extensions API"; AWS Compute Blog, "Running code after returning a response from an AWS
Lambda function"). Under Lambda Web Adapter the runtime is the adapter, which asks for the
next event as soon as the app's response ended.

So, in Lambda, the app registers an internal extension (Extensions API, a thread of the
app's own process, subscribed to INVOKE), as Lambda Web Adapter's own
examples/fastapi-background-tasks does. For each invocation it asks for the next event
only once the app has finished that invocation's request and the work after its answer,
or at the invocation's deadline, whichever comes first. The client has its answer when the
response ends; the invocation (Lambda's Duration) lasts until the store is done. If the
environment dies anyway, the client still had its answer, nothing incomplete was stored,
and the lease frees its key at its expiry.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.request

EXTENSION_NAME = "inference-cache-after-answer"
_API = "2020-01-01/extension"
# Ask for the next event this long before the invocation's deadline at the latest.
_DEADLINE_MARGIN_SECONDS = 0.5
_REMEMBERED = 256  # finished request ids kept (an INVOKE event may come after its request ended)


class Invocations:
    """The requests this process is answering, by Lambda request id, until the work after
    their answers is done."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: collections.Counter[str] = collections.Counter()
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    def begin(self, request_id: str) -> None:
        with self._changed:
            self._open[request_id] += 1
            self._finished.pop(request_id, None)

    def end(self, request_id: str) -> None:
        with self._changed:
            self._open[request_id] -= 1
            if self._open[request_id] <= 0:
                del self._open[request_id]
                self._finished[request_id] = None
                while len(self._finished) > _REMEMBERED:
                    self._finished.popitem(last=False)
            self._changed.notify_all()

    def wait_finished(self, request_id: str, deadline: float) -> bool:
        """Until `request_id` was answered and its after-work done (True), or the wall-clock
        `deadline` passed (False: the request never reached the app, or is still running)."""
        with self._changed:
            return self._changed.wait_for(lambda: request_id in self._finished, timeout=max(0.0, deadline - time.time()))

    def wait_idle(self, timeout: float) -> bool:
        """Until no request is open (the local run and tests: every after-work done)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._open, timeout=timeout)


class InvocationHold(threading.Thread):
    """The internal extension: registered at construction (during the Init phase: the app
    module is imported before Lambda Web Adapter's readiness check can pass), then, as a
    daemon thread, answers each INVOKE event with its next Next request only once the
    invocation's work is done. It never stops asking for events: an extension that stops
    would hold every invocation to its timeout."""

    def __init__(self, runtime_api: str, invocations: Invocations, logger=None) -> None:
        super().__init__(name=EXTENSION_NAME, daemon=True)
        self.base = f"http://{runtime_api}/{_API}"
        self.invocations = invocations
        self.logger = logger
        request = urllib.request.Request(
            f"{self.base}/register",
            data=json.dumps({"events": ["INVOKE"]}).encode(),
            headers={"Lambda-Extension-Name": EXTENSION_NAME, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            self.extension_id = answer.headers["Lambda-Extension-Identifier"]

    def run(self) -> None:
        while True:
            try:
                event = self._next()
            except Exception as exc:  # the Runtime API hiccuped: ask again, never stop asking
                self._warn("asking for the next event failed", exc)
                time.sleep(0.05)
                continue
            if event.get("eventType") == "SHUTDOWN":
                return
            if event.get("eventType") == "INVOKE":
                deadline = float(event.get("deadlineMs") or 0) / 1000 - _DEADLINE_MARGIN_SECONDS
                if not self.invocations.wait_finished(str(event.get("requestId")), deadline):
                    self._warn("the invocation's work did not finish before its deadline", None)

    def _next(self) -> dict:
        request = urllib.request.Request(f"{self.base}/event/next", headers={"Lambda-Extension-Identifier": self.extension_id})
        with urllib.request.urlopen(request, timeout=None) as answer:  # blocks until the next event
            return json.loads(answer.read() or b"{}")

    def _warn(self, message: str, exc: Exception | None) -> None:
        if self.logger is not None:
            self.logger.warning(message, extra={"error": f"{type(exc).__name__}: {exc}" if exc else None})


def hold_invocations(runtime_api: str | None, invocations: Invocations, logger=None) -> InvocationHold | None:
    """Started in Lambda (AWS_LAMBDA_RUNTIME_API is set): the hold, running. Elsewhere (the
    local run, tests) nothing freezes the process, and nothing is held."""
    if not runtime_api:
        return None
    try:
        hold = InvocationHold(runtime_api, invocations, logger)
    except Exception as exc:  # noqa: BLE001 - without the hold the after-work may be frozen, never wrong
        if logger is not None:
            logger.warning("registering the after-answer extension failed: stores may wait for the next invocation",
                           extra={"error": f"{type(exc).__name__}: {exc}"})
        return None
    hold.start()
    return hold
