"""What the origin adapter does with one request (flow steps 5-7): recompute the cache
decision, call the model, answer the client, and once the client has the whole answer,
store what may be served again and release the lease (OriginResponse.after). A request
with `stream: true` gets the model's events as they are generated (streaming.py).

Nothing after the model's last byte delays the answer: the store and the lease release
run after the response is complete, with budgets of their own (results_store.py), and
their failures cost the client nothing but the cache. Every answer's Server-Timing names
the steps it took (the edge's, forwarded in EDGE_TIMING_HEADER, and the origin's).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lambdas import cache_decision
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    COALESCED_HEADER,
    EDGE_TIMING_HEADER,
    EMBEDDINGS_ROUTE,
    INVOCATIONS_ROUTE,
    KEY_HEADER,
    MODELS_ROUTE,
    SERVABLE_BODY_LIMIT_BYTES,
    SERVER_TIMING_HEADER,
    STAGE_SECRET_HEADER,
    STATUS_HEADER,
    TENANT_HEADER,
    TimingStep,
)
from lambdas.errors import ApiError
from lambdas.origin_adapter.coalescing import Coalescer, Lease
from lambdas.origin_adapter.embeddings import EmbeddingsService
from lambdas.origin_adapter.endpoint import EndpointFailure, EndpointStream, SageMakerEndpoint
from lambdas.origin_adapter.results_store import ResultsStore
from lambdas.origin_adapter.streaming import (
    SSE_CONTENT_TYPE,
    StreamRelay,
    error_event,
    requested_choices,
    wants_usage,
)

# The viewer's credentials never enter the decision here: behind OAC the Authorization
# header is CloudFront's signature. The tenant comes from the edge, in TENANT_HEADER.
_NOT_FOR_DECISION = ("authorization", "x-api-key", TENANT_HEADER, KEY_HEADER, STAGE_SECRET_HEADER, EDGE_TIMING_HEADER)
# One Server-Timing entry the edge forwards: a token name and a duration, nothing else
# (it is echoed to the client: never a way to write other headers or text).
_EDGE_ENTRY = re.compile(r"([a-z][a-z0-9-]{0,31});dur=(\d{1,6}(?:\.\d{1,3})?)")
_EDGE_ENTRIES_MAX = 8


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
    # A streamed answer: the body comes from here, and the Outcome is final once it ended.
    stream: StreamedBody | None = None
    # What is left once the client has the whole answer (or went away): store it if it may
    # be served again, then release the lease. Whoever sends the response runs it once,
    # after the response's last byte (the web app: app.py); never before.
    after: Callable[[], None] | None = None

    def finish(self) -> None:
        """Run what is left after the answer (once; a no-op when nothing is)."""
        after, self.after = self.after, None
        if after is not None:
            after()


class StreamedBody:
    """A streamed answer's body: iterate it once. close() ends it and its model stream,
    whether or not it was iterated to the end (or at all)."""

    def __init__(self, chunks: Iterator[bytes], end: Callable[[], None]) -> None:
        self._chunks, self._end = chunks, end

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()
        self._end()


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
    store_error: str | None = None  # why storing failed (a timeout, a 5xx): logged, never the client's
    # Coalescing (coalescing.py): answered from an identical request's result; won the
    # key's lease; took a failed or expired holder's place; gave up waiting (503).
    coalesced: bool = False
    lease_won: bool = False
    lease_takeover: bool = False
    lease_expired: bool = False  # the lease it took over was past its expiry
    coalesce_gave_up: bool = False
    lease_unavailable: bool = False  # the results bucket failed (or is paused): run uncoordinated
    lease_released: bool | None = None  # False: the release failed; the lease holds its key until it expires
    # Streaming: the answer was streamed; seconds from the request to its first event;
    # why a stream ended without a complete answer (client gone, model error, timeout).
    streamed: bool = False
    first_token_seconds: float | None = None
    stream_cut_off: str | None = None
    # Milliseconds per step (TimingStep names): the steps before the answer go into its
    # Server-Timing; the store and release after it, into the log line.
    timings: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class InferenceAdapter:
    def __init__(
        self,
        cache_settings: EdgeCacheSettings,
        endpoint: SageMakerEndpoint,
        store: ResultsStore,
        logger,
        coalescer: Coalescer | None = None,
        stream_seconds: float = 52.0,
        stream_lease_seconds: float | None = None,
        embeddings: EmbeddingsService | None = None,
    ):
        self.cache = cache_settings
        self.endpoint = endpoint
        # /v1/embeddings: the stage's embeddings model on its own endpoint (None: none).
        self.embeddings = embeddings
        self.store = store
        self.logger = logger
        self.coalescer = coalescer  # None: every miss calls the model
        # How long a stream may run from the request's start: the adapter ends it (an
        # error event, nothing stored) before Lambda's timeout would cut it mid-event.
        self.stream_seconds = stream_seconds
        # How long a streamed miss's lease holds its key (its stream, and the store after
        # it); a whole answer's lease is the coalescer's own, shorter one.
        self.stream_lease_seconds = stream_lease_seconds
        self.routes = frozenset(cache_settings.routes)
        self._macs: dict[str, bytes] = {}

    def answer(self, request: OriginRequest) -> tuple[OriginResponse, Outcome]:
        """The answer to send, and its Outcome. The caller sends the response, then runs
        `response.finish()` (the store and the lease release), however the sending ended."""
        response, outcome = self._answer(request)
        # The origin's own time on every answer (a streamed one: until its stream began).
        outcome.timings[TimingStep.ORIGIN] = _ms(outcome.started)
        response.headers[SERVER_TIMING_HEADER] = _server_timing(request.headers.get(EDGE_TIMING_HEADER, ""), response, outcome)
        return response, outcome

    def _answer(self, request: OriginRequest) -> tuple[OriginResponse, Outcome]:
        started = time.monotonic()  # the coalescing budgets count from here
        outcome = Outcome()
        if request.method == "GET" and request.path == MODELS_ROUTE:
            return self._models(), outcome
        if request.path not in self.routes:
            return _error(404, "not_found", f"No route {request.path}."), outcome
        if request.method != "POST":
            return _error(405, "method_not_allowed", f"{request.path} takes POST."), outcome

        decision_headers = {k: v for k, v in request.headers.items() if k not in _NOT_FOR_DECISION}
        # The stage secret as the edge got it (from the viewer-request function, which
        # removes any viewer copy; only CloudFront reaches this function, through OAC).
        mac = self._mac_key(request.headers.get(STAGE_SECRET_HEADER))
        decided = time.perf_counter()
        decision = cache_decision.decide(
            request.path,
            decision_headers,
            request.body,
            self.cache,
            tenant=request.headers.get(TENANT_HEADER) or None,
            mac=mac,
        )
        outcome.timings[TimingStep.ORIGIN_DECISION] = _ms(decided)
        if decision.cacheable and mac is None:  # fail closed: no deployed key without the secret
            decision = decision._replace(cacheable=False, key=None, lookup=False, store=False, reason="no stage secret")
        outcome.reason, outcome.key = decision.reason, decision.key
        if decision.error is not None:
            return OriginResponse(decision.error.status, decision.error.body(), _json_headers("BYPASS")), outcome
        claimed = request.headers.get(KEY_HEADER)
        if claimed and claimed != decision.key:
            # Never trusted: the key is the body's, whatever the header says.
            outcome.key_mismatch = True
            self.logger.warning("cache key header differs from the body's key", extra={"claimed": claimed, "computed": decision.key})

        body = _json_object(request.body)  # as the decision read it; None: the model answers it
        streams = request.path != EMBEDDINGS_ROUTE and body is not None and body.get("stream") is True
        lease = None
        if self.coalescer is not None and _coalesces(decision):
            claimed_at = time.perf_counter()
            turn = self.coalescer.acquire(
                decision.key,
                max_age_seconds=decision.ttl_seconds,
                started=started,
                lease_seconds=self.stream_lease_seconds if streams else None,
            )
            outcome.timings[TimingStep.LEASE] = _ms(claimed_at)
            outcome.lease_unavailable = turn.unavailable
            outcome.lease_won = turn.lease is not None and not turn.takeover
            outcome.lease_takeover, outcome.lease_expired = turn.takeover, turn.expired_takeover
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
        return self._generate(request, body if streams else None, decision, outcome, lease), outcome

    def _generate(self, request: OriginRequest, streamed: dict | None, decision, outcome: Outcome, lease: Lease | None) -> OriginResponse:
        """Call the model (streamed: the body of a `stream: true` request). What may be
        served again is stored, and the lease released, by the response's `after`, once the
        client has the whole answer."""
        kept: list[tuple[bytes, str]] = []  # (body, content type) to store, once the client has all of it
        after = self._after(decision, outcome, lease, kept, request.path)
        try:
            if streamed is not None:
                response = self._stream(request, streamed, decision, outcome, kept)
            else:
                response = self._whole(request, decision, outcome, kept)
        except BaseException:
            after()  # no answer will be sent: free the key for the waiters at once
            raise
        response.after = after
        return response

    def _after(
        self, decision, outcome: Outcome, lease: Lease | None, kept: list[tuple[bytes, str]], path: str
    ) -> Callable[[], None]:
        """The work after the answer, in this order: the store, then the lease release (a
        released marker once an answer is stored, see coalescing.py), so that an identical
        request that comes meanwhile waits for the stored answer instead of calling the
        model again. Each has its own budget (the bucket client's
        timeouts, no retries); a failure is logged and counted, never the client's."""
        ran = []

        def after() -> None:
            if ran:
                return
            ran.append(True)
            stored = False
            try:
                if kept and _storable(decision):
                    stored_at = time.perf_counter()
                    outcome.stored_bytes, outcome.store_failed = self._store(decision, *kept[0], outcome, path)
                    outcome.timings[TimingStep.STORE] = _ms(stored_at)
                    stored = not outcome.store_failed
            finally:
                if lease is not None:
                    released_at = time.perf_counter()
                    outcome.lease_released = self.coalescer.release(lease, stored=stored)
                    outcome.timings[TimingStep.RELEASE] = _ms(released_at)

        return after

    def _whole(self, request: OriginRequest, decision, outcome: Outcome, kept: list[tuple[bytes, str]]) -> OriginResponse:
        """InvokeEndpoint: the whole answer at once (embeddings: in the container's
        batches, translated to OpenAI's shape, embeddings.py)."""
        try:
            if request.path == EMBEDDINGS_ROUTE:
                if self.embeddings is None:  # the decision answered 404 already; never a model call
                    raise EndpointFailure(404, "model_not_found", "This stage serves no embeddings model.", param="model")
                answer = self.embeddings.answer(request.body, outcome.started)
            else:
                answer = self.endpoint.invoke(request.body, "application/json")
        except EndpointFailure as failure:
            return _failed(failure, outcome)
        outcome.inference_seconds = answer.seconds
        outcome.timings[TimingStep.MODEL] = answer.seconds * 1000
        outcome.cache = "MISS" if decision.store else "BYPASS"
        if _storable(decision) and _is_json(answer):
            if len(answer.body) > SERVABLE_BODY_LIMIT_BYTES:  # the edge could never serve it back
                outcome.too_large_to_store = True
            else:
                kept.append((answer.body, answer.content_type))
        return OriginResponse(200, answer.body, self._answer_headers(answer.content_type, decision, outcome))

    def _stream(self, request: OriginRequest, body: dict, decision, outcome: Outcome, kept: list[tuple[bytes, str]]) -> OriginResponse:
        """InvokeEndpointWithResponseStream: the client gets each event as the model
        writes it; the answer is kept for the store once the stream ended normally and the
        client got its last byte (streaming.py)."""
        called = time.perf_counter()
        try:
            stream = self.endpoint.invoke_stream(request.body, "application/json")
        except EndpointFailure as failure:
            return _failed(failure, outcome)
        outcome.timings[TimingStep.MODEL] = _ms(called)  # until its stream began
        sse = request.path != INVOCATIONS_ROUTE  # /invocations: the container's own framing
        relay = StreamRelay(
            sse=sse, choices=requested_choices(body), usage=wants_usage(body), keep_limit=SERVABLE_BODY_LIMIT_BYTES
        )
        content_type = SSE_CONTENT_TYPE if sse else stream.content_type
        outcome.cache, outcome.streamed = ("MISS" if decision.store else "BYPASS"), True
        ended = []

        def end() -> None:  # once, however the stream ends
            if not ended:
                ended.append(True)
                outcome.inference_seconds = time.perf_counter() - stream.started
                stream.close()

        chunks = self._relay(stream, relay, content_type, decision, outcome, end, kept)
        return OriginResponse(200, b"", self._answer_headers(content_type, decision, outcome), StreamedBody(chunks, end))

    def _relay(
        self, stream: EndpointStream, relay: StreamRelay, content_type: str, decision, outcome: Outcome, end, kept: list[tuple[bytes, str]]
    ) -> Iterator[bytes]:
        deadline = outcome.started + self.stream_seconds
        try:
            try:
                for part in stream:
                    frames = relay.feed(part)
                    if frames:
                        if outcome.first_token_seconds is None:
                            outcome.first_token_seconds = time.perf_counter() - outcome.started
                        yield b"".join(frames)
                    if time.perf_counter() > deadline:
                        raise EndpointFailure(504, "model_timeout", "The answer took longer than the origin may stream.")
                frames = relay.finish()
            except EndpointFailure as failure:
                outcome.stream_cut_off, outcome.model_error = failure.code, failure.model_error
                yield error_event(failure.status, failure.code, failure.message, sse=relay.sse)
                return
            if not relay.complete:
                outcome.stream_cut_off, outcome.model_error = relay.why_incomplete(), relay.model_error is not None
                if not relay.error_relayed:  # else the model's own error event reached the client
                    message = f"The model's stream ended early ({outcome.stream_cut_off})."
                    frames.append(error_event(502, "model_stream_incomplete", message, sse=relay.sse))
                yield b"".join(frames)
                return
            yield b"".join(frames)
            # Resumed after the last event went out: the client has the whole answer, which
            # the response's `after` stores once the response ended.
            whole = relay.kept()
            if whole is None:
                outcome.too_large_to_store = True
            else:
                kept.append((whole, content_type))
        except GeneratorExit:  # the client went away: nothing of this is stored
            outcome.stream_cut_off = outcome.stream_cut_off or "client gone"
            raise
        finally:
            end()

    def _mac_key(self, secret: str | None) -> bytes | None:
        """The cache-key MAC key of a stage secret (a comma-joined repeat is no secret)."""
        if not secret or "," in secret:
            return None
        mac = self._macs.get(secret)
        if mac is None:
            if len(self._macs) >= 4:  # a secret changes only at a rotation
                self._macs.clear()
            mac = self._macs[secret] = cache_decision.mac_key(secret)
        return mac

    def _answer_headers(self, content_type: str, decision, outcome: Outcome) -> dict:
        headers = {"content-type": content_type, STATUS_HEADER: outcome.cache}
        if decision.key:
            headers[KEY_HEADER] = decision.key
        return headers

    def _store(self, decision, body: bytes, content_type: str, outcome: Outcome, path: str) -> tuple[int, bool]:
        embeddings = path == EMBEDDINGS_ROUTE
        try:
            self.store.put(
                decision.key,
                body,
                content_type=content_type,
                ttl_seconds=decision.ttl_seconds,
                model=self.cache.embeddings_model_id if embeddings else self.cache.model_id,
                model_version=self.cache.embeddings_model_version if embeddings else self.cache.model_version,
            )
            return len(body), False
        except Exception as exc:  # a storage failure never fails the client's request
            outcome.store_error = f"{type(exc).__name__}: {exc}"[:300]
            self.logger.warning("storing the result failed; the client had its answer, unstored",
                                extra={"cache_key": decision.key, "error": outcome.store_error})
            return 0, True

    def _models(self) -> OriginResponse:
        """Exactly the stage's models, each with the version that keys its cache and the
        route that serves it (OpenAI's model object has no such field; clients such as
        bin/smoke pick the embeddings model by it)."""
        served = [(self.cache.model_id, self.cache.model_version, "chat/completions")]
        if self.cache.embeddings_model_id is not None:
            served.append((self.cache.embeddings_model_id, self.cache.embeddings_model_version, "embeddings"))
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "inference-cache", "version": version, "task": task}
            for model, version, task in served
        ]
        body = json.dumps({"object": "list", "data": data}).encode()
        return OriginResponse(200, body, {"content-type": "application/json"})


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _server_timing(edge: str, response: OriginResponse, outcome: Outcome) -> str:
    """W3C Server-Timing of an origin answer: the edge's steps it forwarded (decision,
    lookup), then the origin's own in the order it took them; `store` has no duration (it
    runs after the answer) but says that it will. `origin` is the adapter's whole time
    until its answer began, its steps included."""
    forwarded = (_EDGE_ENTRY.fullmatch(part.strip(" \t")) for part in edge.split(",")[:_EDGE_ENTRIES_MAX])
    entries = [match.group(0) for match in forwarded if match]
    timings = outcome.timings
    for step in (TimingStep.ORIGIN_DECISION, TimingStep.LEASE, TimingStep.MODEL):
        if step in timings:
            entry = f"{step};dur={timings[step]:.2f}"
            if step == TimingStep.LEASE and outcome.lease_unavailable:
                entry += ';desc="results bucket unavailable: not coordinated"'
            elif step == TimingStep.LEASE and outcome.coalesced:
                entry += ';desc="waited for an identical request"'
            elif step == TimingStep.MODEL and outcome.streamed:
                entry += ';desc="until its stream began"'
            entries.append(entry)
    if response.status == 200 and not outcome.coalesced and outcome.cache == "MISS":
        entries.append(f'{TimingStep.STORE};desc="after the answer"' if not outcome.too_large_to_store
                       else f'{TimingStep.STORE};desc="not stored: too large for the edge"')
    entries.append(f"{TimingStep.ORIGIN};dur={timings[TimingStep.ORIGIN]:.2f}")
    return ", ".join(entries)


def _coalesces(decision) -> bool:
    """Only a miss that will be looked up and stored waits for an identical one. Not a
    non-cacheable request (sampled, tools, ...), nor `Cache-Control: no-cache` (lookup off:
    the client asked for a new generation, not one that was in flight before it came)."""
    return bool(decision.lookup) and _storable(decision)


def _storable(decision) -> bool:
    """A 2xx answer to this request may be stored."""
    return bool(decision.store and decision.key and decision.ttl_seconds > 0)


def _json_object(body: bytes) -> dict | None:
    """The request body as the decision read it (None if it is no JSON object: the
    decision let it through uncached, and the model answers it)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _is_json(answer) -> bool:
    if "json" not in answer.content_type:
        return False
    try:
        json.loads(answer.body)
        return True
    except ValueError:
        return False


def _json_headers(cache_status: str) -> dict:
    return {"content-type": "application/json", STATUS_HEADER: cache_status}


def _failed(failure: EndpointFailure, outcome: Outcome) -> OriginResponse:
    outcome.model_error = failure.model_error
    response = _error(failure.status, failure.code, failure.message, failure.param)
    if failure.retry_after:
        response.headers["retry-after"] = str(failure.retry_after)
    return response


def _error(status: int, code: str, message: str, param: str | None = None) -> OriginResponse:
    body = ApiError(status, message, param, code).body()
    return OriginResponse(status, body, _json_headers("BYPASS"))
