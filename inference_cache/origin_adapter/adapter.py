"""What the origin adapter does with one request (flow steps 5-7): recompute the cache
decision, call the model, store what may be served again, answer the client."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from inference_cache import cache_decision
from inference_cache.cache_settings import EdgeCacheSettings
from inference_cache.contract import (
    COALESCED_HEADER,
    KEY_HEADER,
    MODELS_ROUTE,
    SERVABLE_BODY_LIMIT_BYTES,
    SERVER_TIMING_HEADER,
    STATUS_HEADER,
    TENANT_HEADER,
)
from inference_cache.errors import ApiError
from inference_cache.origin_adapter.coalescing import Coalescer
from inference_cache.origin_adapter.endpoint import EndpointFailure, SageMakerEndpoint
from inference_cache.origin_adapter.results_store import ResultsStore

# The viewer's credentials never enter the decision here: behind OAC the Authorization
# header is CloudFront's signature. The tenant comes from the edge, in TENANT_HEADER.
_NOT_FOR_DECISION = ("authorization", "x-api-key", TENANT_HEADER, KEY_HEADER)


@dataclass(frozen=True)
class OriginRequest:
    method: str
    path: str
    headers: dict  # lowercase names
    body: bytes


@dataclass
class OriginResponse:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened, for logs and metrics (the handler turns it into EMF)."""

    cache: str = "BYPASS"  # MISS | BYPASS | HIT (coalesced: an identical request's result)
    key: str | None = None
    reason: str = ""
    inference_seconds: float | None = None
    stored_bytes: int = 0
    store_failed: bool = False
    model_error: bool = False
    key_mismatch: bool = False
    too_large_to_store: bool = False
    # Coalescing (coalescing.py): answered from an identical request's result; won the
    # key's lease; took a failed or expired holder's place; gave up waiting (503).
    coalesced: bool = False
    lease_won: bool = False
    lease_takeover: bool = False
    coalesce_gave_up: bool = False


class InferenceAdapter:
    def __init__(
        self,
        cache_settings: EdgeCacheSettings,
        endpoint: SageMakerEndpoint,
        store: ResultsStore,
        logger,
        coalescer: Coalescer | None = None,
    ):
        self.cache = cache_settings
        self.endpoint = endpoint
        self.store = store
        self.logger = logger
        self.coalescer = coalescer  # None: every miss calls the model
        self.routes = frozenset(cache_settings.routes)

    def answer(self, request: OriginRequest) -> tuple[OriginResponse, Outcome]:
        started = time.perf_counter()
        response, outcome = self._answer(request)
        # The origin's own time on every answer, as the edge's answers carry theirs.
        response.headers[SERVER_TIMING_HEADER] = f"origin;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response, outcome

    def _answer(self, request: OriginRequest) -> tuple[OriginResponse, Outcome]:
        started = time.monotonic()
        outcome = Outcome()
        if request.method == "GET" and request.path == MODELS_ROUTE:
            return self._models(), outcome
        if request.path not in self.routes:
            return _error(404, "not_found", f"No route {request.path}."), outcome
        if request.method != "POST":
            return _error(405, "method_not_allowed", f"{request.path} takes POST."), outcome

        decision_headers = {k: v for k, v in request.headers.items() if k not in _NOT_FOR_DECISION}
        decision = cache_decision.decide(
            request.path,
            decision_headers,
            request.body,
            self.cache,
            tenant=request.headers.get(TENANT_HEADER) or None,
        )
        outcome.reason, outcome.key = decision.reason, decision.key
        if decision.error is not None:
            return OriginResponse(decision.error.status, decision.error.body(), _json_headers("BYPASS")), outcome
        claimed = request.headers.get(KEY_HEADER)
        if claimed and claimed != decision.key:
            # Never trusted: the key is the body's, whatever the header says.
            outcome.key_mismatch = True
            self.logger.warning("cache key header differs from the body's key", extra={"claimed": claimed, "computed": decision.key})

        lease = None
        if self.coalescer is not None and _coalesces(decision):
            turn = self.coalescer.acquire(decision.key, max_age_seconds=decision.ttl_seconds, started=started)
            outcome.lease_won = turn.lease is not None and not turn.takeover
            outcome.lease_takeover = turn.takeover
            if turn.result is not None:
                outcome.cache, outcome.coalesced = "HIT", True
                outcome.reason += ", coalesced"
                headers = {"content-type": turn.result.content_type, STATUS_HEADER: "HIT", COALESCED_HEADER: "1", KEY_HEADER: decision.key}
                if turn.result.created is not None:
                    headers["age"] = str(max(0, int(time.time() - turn.result.created)))
                return OriginResponse(200, turn.result.body, headers), outcome
            if turn.gave_up:
                outcome.coalesce_gave_up = True
                response = _error(503, "identical_request_pending", "An identical request is still being answered; retry shortly.")
                response.headers["retry-after"] = "1"
                return response, outcome
            lease = turn.lease
        try:
            return self._generate(request, decision, outcome)
        finally:
            if lease is not None:
                self.coalescer.release(lease)

    def _generate(self, request: OriginRequest, decision, outcome: Outcome) -> tuple[OriginResponse, Outcome]:
        """Call the model; store the answer if it may be served again."""
        streaming, payload = _without_stream(request.body)
        try:
            answer = self.endpoint.invoke(payload, "application/json")
        except EndpointFailure as failure:
            outcome.model_error = failure.model_error
            response = _error(failure.status, failure.code, failure.message)
            if failure.retry_after:
                response.headers["retry-after"] = str(failure.retry_after)
            return response, outcome
        outcome.inference_seconds = answer.seconds

        body, content_type = answer.body, answer.content_type
        if streaming:
            body, content_type = _as_event_stream(request.path, answer.body), "text/event-stream"
        outcome.cache = "MISS" if decision.store else "BYPASS"
        if decision.store and decision.key and decision.ttl_seconds > 0 and _is_json(answer):
            if len(body) > SERVABLE_BODY_LIMIT_BYTES:  # the edge could never serve it back
                outcome.too_large_to_store = True
            else:
                outcome.stored_bytes, outcome.store_failed = self._store(decision, body, content_type)
        headers = {"content-type": content_type, STATUS_HEADER: outcome.cache}
        if decision.key:
            headers[KEY_HEADER] = decision.key
        return OriginResponse(200, body, headers), outcome

    def _store(self, decision, body: bytes, content_type: str) -> tuple[int, bool]:
        try:
            self.store.put(
                decision.key,
                body,
                content_type=content_type,
                ttl_seconds=decision.ttl_seconds,
                model=self.cache.model_id,
                model_version=self.cache.model_version,
            )
            return len(body), False
        except Exception:  # a storage failure never fails the client's request
            self.logger.exception("storing the result failed", extra={"cache_key": decision.key})
            return 0, True

    def _models(self) -> OriginResponse:
        model = {"id": self.cache.model_id, "object": "model", "created": 0, "owned_by": "inference-cache"}
        body = json.dumps({"object": "list", "data": [model]}).encode()
        return OriginResponse(200, body, {"content-type": "application/json"})


def _coalesces(decision) -> bool:
    """Only a miss that will be looked up and stored waits for an identical one. Not a
    non-cacheable request (sampled, tools, ...), nor `Cache-Control: no-cache` (lookup off:
    the client asked for a new generation, not one that was in flight before it came)."""
    return bool(decision.key and decision.lookup and decision.store and decision.ttl_seconds > 0)


def _without_stream(body: bytes) -> tuple[bool, bytes]:
    """The endpoint is always asked for the whole answer; a streaming client gets it as
    one event stream (true token streaming needs a Node.js streaming origin)."""
    request = json.loads(body)
    if request.get("stream") is True:
        request["stream"] = False
        request.pop("stream_options", None)
        return True, json.dumps(request, ensure_ascii=False).encode()
    return False, body


def _is_json(answer) -> bool:
    if "json" not in answer.content_type:
        return False
    try:
        json.loads(answer.body)
        return True
    except ValueError:
        return False


def _as_event_stream(path: str, body: bytes) -> bytes:
    try:
        full = json.loads(body)
    except ValueError:
        full = None
    events = []
    if isinstance(full, dict) and isinstance(full.get("choices"), list):
        chat = path.endswith("/chat/completions") or full.get("object") == "chat.completion"
        base = {k: full[k] for k in ("id", "model", "system_fingerprint") if k in full}
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        base["created"] = full.get("created", int(time.time()))
        for choice in full["choices"]:
            index = choice.get("index", 0)
            if chat:
                message = choice.get("message") or {}
                delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
                if message.get("tool_calls"):
                    delta["tool_calls"] = message["tool_calls"]
                events.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
                events.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
            else:
                events.append({**base, "choices": [{"index": index, "text": choice.get("text", ""), "finish_reason": choice.get("finish_reason")}]})
        if full.get("usage"):
            events.append({**base, "choices": [], "usage": full["usage"]})
    else:
        events.append(full if full is not None else body.decode("utf-8", "replace"))
    lines = [f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def _json_headers(cache_status: str) -> dict:
    return {"content-type": "application/json", STATUS_HEADER: cache_status}


def _error(status: int, code: str, message: str) -> OriginResponse:
    body = ApiError(status, message, None, code).body()
    return OriginResponse(status, body, _json_headers("BYPASS"))
