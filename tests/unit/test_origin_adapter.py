"""Origin adapter tests: its web app served on 127.0.0.1 by uvicorn, each request made of
it as Lambda Web Adapter makes it from a function URL event as CloudFront forwards it
(tests/events); SageMaker and S3 stubbed at the boto3 boundary with botocore's Stubber."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import httpx2
import pytest
from botocore.eventstream import EventStream
from botocore.parsers import EventStreamJSONParser
from botocore.response import StreamingBody
from botocore.stub import ANY
from moto.core.eventstream import EventStreamEncoder

from config.stages import STAGES
from lambdas import cache_decision
from lambdas.contract import (
    EMBEDDINGS_MODEL_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    HEALTH_ROUTE,
    METRICS_NAMESPACE,
    ORIGIN_ADAPTER_SERVICE,
    RESULTS_BUCKET_ENV,
    SERVABLE_BODY_LIMIT_BYTES,
    SETTINGS_ENV,
    SETTINGS_FILE,
)
from lambdas.origin_adapter import app as origin_app
from lambdas.origin_adapter.settings import AdapterSettings
from local_run.embeddings_server import packaged_embedding_model
from local_run.events import function_url_event, web_adapter_request
from local_run.servers import BackgroundServer
from tests.stage_secret import MAC, WITH_SECRET
from tests.unit.boto_boundary import CountingStubber

ENDPOINT = "inference-cache-dev"
BUCKET = "results-bucket"
MODEL_BUCKET = "models-bucket"
GREEDY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}
CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


@dataclass
class LambdaContext:
    function_name: str = "origin-adapter"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-west-2:111111111111:function:origin-adapter"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"


@pytest.fixture
def lambda_context():
    return LambdaContext()


@dataclass
class Answer:
    status: int
    headers: httpx2.Headers
    body: bytes


@pytest.fixture
def origin(tmp_path, monkeypatch):
    """The origin adapter's web app with an adapter built afresh from the dev stage's
    settings (the environment the Inference stack sets), served on 127.0.0.1; `call`
    makes a function URL event's request of it as Lambda Web Adapter does."""
    settings = tmp_path / SETTINGS_FILE
    settings.write_text(STAGES["dev"].edge_cache_settings().to_json())
    for name, value in {
        SETTINGS_ENV: str(settings),
        ENDPOINT_NAME_ENV: ENDPOINT,
        RESULTS_BUCKET_ENV: BUCKET,
        ENDPOINT_READ_TIMEOUT_ENV: str(STAGES["dev"].endpoint.timeouts.model_read_seconds),
        EMBEDDINGS_MODEL_ENV: STAGES["dev"].adapter_embeddings_model(MODEL_BUCKET).to_json(),
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_SERVICE_NAME": ORIGIN_ADAPTER_SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
    }.items():
        monkeypatch.setenv(name, value)
    adapter_settings = AdapterSettings.from_environment()
    adapter = origin_app.build_adapter(adapter_settings)
    web_app = origin_app.create_app(lambda: adapter, environments=4)
    server = BackgroundServer(web_app, name="origin-under-test").start()
    client = httpx2.Client(base_url=server.url, timeout=30)

    def settled() -> None:
        """The invocation is over: the store and the lease release after the answer done,
        its record written (what Lambda waits for before it freezes the environment)."""
        assert web_app.state.invocations.wait_idle(10), "the work after the answer did not finish"

    def call(event: dict, context: LambdaContext) -> Answer:
        method, path, headers, body = web_adapter_request(event, request_id=context.aws_request_id, deadline_ms=0)
        headers.pop("host", None)
        answer = client.request(method, path, headers=headers, content=body)
        settled()
        return Answer(answer.status_code, answer.headers, answer.content)

    def stream(event: dict, context: LambdaContext):
        """(status, headers, [(seconds since the request, chunk bytes), ...]) as they arrive."""
        method, path, headers, body = web_adapter_request(event, request_id=context.aws_request_id, deadline_ms=0)
        headers.pop("host", None)
        started = time.perf_counter()
        with client.stream(method, path, headers=headers, content=body) as answer:
            chunks = [(time.perf_counter() - started, chunk) for chunk in answer.iter_raw()]
        settled()
        return answer.status_code, answer.headers, chunks

    yield SimpleNamespace(call=call, stream=stream, url=server.url, ADAPTER=adapter, SETTINGS=adapter_settings,
                          settled=settled, client=client)
    client.close()
    server.stop()


@pytest.fixture
def stubs(origin):
    """SageMaker and S3 at the boto3 boundary. Every test ends with exactly the calls it
    queued made: a call beyond them (a store that should not happen, a retry) fails the
    test even where the adapter caught the Stubber's refusal."""
    sagemaker = CountingStubber(origin.ADAPTER.endpoint.client)
    s3 = CountingStubber(origin.ADAPTER.store.client)
    with sagemaker, s3:
        yield sagemaker, s3
        sagemaker.assert_calls_as_queued()
        s3.assert_calls_as_queued()


@pytest.fixture
def outcomes(origin, monkeypatch):
    """Each Outcome the adapter reported for the app's requests (what the logs and
    metrics are made of), in order."""
    seen, answer = [], origin.ADAPTER.answer

    def recorded(request):
        response, outcome = answer(request)
        seen.append(outcome)
        return response, outcome

    monkeypatch.setattr(origin.ADAPTER, "answer", recorded)
    return seen


def url_event(body=GREEDY, path="/v1/chat/completions", method="POST", headers=None, secret=True) -> dict:
    """The recorded function URL event (tests/events) with this request in it, and the
    stage secret CloudFront forwards from the viewer-request function (unless `secret` is False)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"content-type": "application/json", **(WITH_SECRET if secret else {}), **(headers or {})}
    return function_url_event(body=raw, headers=headers, path=path, method=method)


def endpoint_answer(sagemaker, answer=CHAT_ANSWER, expected_body=None):
    payload = json.dumps(answer).encode()
    expected = {"EndpointName": ENDPOINT, "Body": expected_body or ANY, "ContentType": "application/json", "Accept": "application/json"}
    sagemaker.add_response(
        "invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"}, expected
    )
    return payload


def emitted_metrics(capsys) -> dict:
    """Metric name -> values from the EMF line the app printed for the request."""
    found = {}
    for line in capsys.readouterr().out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "_aws" in record:
            for definition in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = record[definition["Name"]]
                found[definition["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_cacheable_miss_invokes_stores_and_answers_miss(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    request_body = json.dumps(GREEDY).encode()
    payload = endpoint_answer(sagemaker, expected_body=request_body)
    key = cache_decision.decide("/v1/chat/completions", {}, request_body, origin.SETTINGS.cache, mac=MAC).key
    stored = {}
    s3.client.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: stored.update(params["Metadata"]))
    s3.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": f"_cache/{key}",
            "Body": payload,
            "ContentType": "application/json",
            "CacheControl": f"max-age={STAGES['dev'].cache.default_ttl_seconds}",
            "Metadata": {"model": GREEDY["model"], "model-version": STAGES["dev"].model.model_version, "created": ANY, "expires": ANY},
        },
    )
    began = int(time.time())
    response = origin.call(url_event(), lambda_context)
    assert response.status == 200
    assert response.body == payload
    assert response.headers["x-inference-cache"] == "MISS"
    assert response.headers["x-inference-cache-key"] == key
    # When it was stored, and until when it may be served: the writer's TTL binds every reader.
    created = int(stored["created"])
    assert began <= created <= time.time() and int(stored["expires"]) == created + STAGES["dev"].cache.default_ttl_seconds
    metrics = emitted_metrics(capsys)
    assert metrics["CacheMiss"] == 1.0 and metrics["CacheStore"] == 1.0
    assert metrics["StoredBytes"] == float(len(payload))
    assert metrics["GpuSecondsOnMiss"] >= 0 and "InferenceLatency" in metrics


def test_sampling_request_is_a_bypass_and_not_stored(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    endpoint_answer(sagemaker)
    response = origin.call(url_event({**GREEDY, "temperature": 0.8}), lambda_context)
    assert response.status == 200 and response.headers["x-inference-cache"] == "BYPASS"
    assert sagemaker.calls == ["invoke_endpoint"] and s3.calls == []  # no store was even tried
    metrics = emitted_metrics(capsys)
    assert metrics["CacheBypass"] == 1.0 and "CacheStore" not in metrics and "CacheStoreFailed" not in metrics


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"cache-control": "no-store"}, "BYPASS"), ({"x-inference-cache-ttl": "0"}, "BYPASS")],
    ids=["no-store", "ttl-0"],
)
def test_a_request_that_may_not_be_stored_is_answered_and_not_stored(origin, stubs, lambda_context, capsys, headers, status):
    """no-store: not cacheable at all; a TTL of 0: cacheable (its key is forwarded), but
    nothing may be kept for 0 seconds."""
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker)
    response = origin.call(url_event(headers=headers), lambda_context)
    assert response.status == 200 and response.body == payload
    assert response.headers["x-inference-cache"] == status
    assert sagemaker.calls == ["invoke_endpoint"] and s3.calls == []
    metrics = emitted_metrics(capsys)
    assert "CacheStore" not in metrics and "CacheStoreFailed" not in metrics


def test_a_ttl_of_one_second_is_stored_for_one_second(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, {"Bucket": BUCKET, "Key": ANY, "Body": payload, "ContentType": "application/json",
                                       "CacheControl": "max-age=1", "Metadata": ANY})
    response = origin.call(url_event(headers={"x-inference-cache-ttl": "1"}), lambda_context)
    assert response.headers["x-inference-cache"] == "MISS" and s3.calls == ["put_object"]


@pytest.mark.parametrize(("content_type", "body"), [("text/plain", b"4"), ("application/json", b'{"choices": [')],
                         ids=["not-json", "broken-json"])
def test_an_answer_that_is_not_json_is_relayed_and_not_stored(origin, stubs, lambda_context, content_type, body):
    sagemaker, s3 = stubs
    sagemaker.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": content_type})
    response = origin.call(url_event(), lambda_context)
    assert (response.status, response.body, response.headers["content-type"]) == (200, body, content_type)
    assert s3.calls == []


def test_forged_key_header_is_ignored_and_counted(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    response = origin.call(url_event(headers={"x-inference-cache-key": "0" * 64}), lambda_context)
    assert response.headers["x-inference-cache-key"] != "0" * 64
    assert emitted_metrics(capsys)["CacheKeyMismatch"] == 1.0


def test_without_the_stage_secret_the_answer_is_neither_keyed_nor_stored(origin, stubs, lambda_context):
    """Fail closed: a key without the secret would be one nobody else computes; no
    put_object reaches S3 (the Stubber has none queued, and none is asked for)."""
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker)
    response = origin.call(url_event(secret=False), lambda_context)
    assert response.status == 200 and response.body == payload
    assert response.headers["x-inference-cache"] == "BYPASS" and "x-inference-cache-key" not in response.headers
    # A viewer's forged secret cannot get here: only CloudFront reaches the function URL,
    # after the viewer-request function replaced any viewer copy. Two copies are no secret.
    endpoint_answer(sagemaker)
    doubled = url_event(headers={"x-inference-stage-secret": "a, b"}, secret=False)
    assert origin.call(doubled, lambda_context).headers["x-inference-cache"] == "BYPASS"
    assert sagemaker.calls == ["invoke_endpoint"] * 2 and s3.calls == []  # no store was even tried


def test_storage_failure_never_fails_the_request(origin, stubs, lambda_context, capsys, caplog):
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker)
    s3.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403, service_message="denied " * 60)
    response = origin.call(url_event(), lambda_context)
    assert response.status == 200 and response.body == payload
    metrics = emitted_metrics(capsys)
    assert metrics["CacheStoreFailed"] == 1.0 and "CacheStore" not in metrics and "StoredBytes" not in metrics
    # The failure is logged with the key it was for and S3's error (a warning: the client
    # had its answer), and the answer's own log line says it went unstored.
    failed = [r for r in caplog.records if r.getMessage().startswith("storing the result failed")]
    assert len(failed) == 1 and failed[0].levelname == "WARNING" and failed[0].error.startswith("AccessDenied")
    assert failed[0].cache_key == response.headers["x-inference-cache-key"]
    (answered,) = [r for r in caplog.records if r.getMessage() == "answered"]
    assert answered.stored is False and answered.store_error.startswith("AccessDenied")
    assert len(answered.store_error) == 300  # S3's message cut short: a log line, not a dump


# -- streamed answers (stream: true) ------------------------------------------------------

def lmi_chunk(index: int = 0, content: str | None = None, finish: str | None = None, **extra) -> bytes:
    """One line of LMI's stream of a chat body: a chat.completion.chunk, no `data: `."""
    delta = {} if content is None else {"content": content}
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": GREEDY["model"],
             "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}
    return json.dumps(chunk).encode() + b"\n"


def add_stream(
    sagemaker, *parts: bytes, error: tuple[str, str] | None = None, expected_body=None, gap: float = 0.0
) -> _WireStream:
    """A stubbed InvokeEndpointWithResponseStream whose Body is botocore's own EventStream
    over SageMaker's wire bytes: these PayloadParts, then a ModelStreamError (code,
    message) if given, encoded with moto's event-stream encoder. The Stubber validates a
    response against the service model, whose event stream it cannot express (a known
    gap: cohere-ai/cohere-aws#65); validation is skipped for this one response only."""
    client = sagemaker.client
    encoder = EventStreamEncoder()
    wire = [
        encoder.encode_message({":message-type": "event", ":event-type": "PayloadPart", ":content-type": "application/octet-stream"}, part)
        for part in parts
    ]
    if error is not None:
        code, message = error
        wire.append(encoder.encode_message(
            {":message-type": "exception", ":exception-type": code, ":content-type": "application/json"},
            json.dumps({"Message": message}).encode(),
        ))
    operation = client.meta.service_model.operation_model("InvokeEndpointWithResponseStream")
    raw = _WireStream(wire, gap)
    body = EventStream(raw, operation.output_shape.members["Body"], EventStreamJSONParser(), operation.name)
    expected = {"EndpointName": ENDPOINT, "Body": expected_body or ANY, "ContentType": "application/json"}
    with mock.patch.object(sagemaker, "_validate_operation_response"):
        sagemaker.add_response("invoke_endpoint_with_response_stream", {"Body": body, "ContentType": "application/jsonlines"}, expected)
    return raw


class _WireStream:
    """The HTTP body botocore's EventStream reads: stream() yields the bytes as they came,
    `gap` seconds apart."""

    def __init__(self, chunks: list[bytes], gap: float = 0.0) -> None:
        self.chunks, self.gap, self.closed = chunks, gap, False

    def stream(self):
        for chunk in self.chunks:
            time.sleep(self.gap)
            yield chunk

    def close(self) -> None:
        self.closed = True


def sse_events(chunks) -> list[str]:
    """The data of each event of an SSE body (as the openai client splits it)."""
    body = b"".join(c for _, c in chunks).decode()
    return [event.removeprefix("data: ") for event in body.split("\n\n") if event]


def wait_for_metrics(capsys, name: str, seconds: float = 5.0) -> dict:
    """A stream's EMF record is written once the stream ended, after its last byte."""
    deadline, seen = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        seen.update(emitted_metrics(capsys))
        if name in seen:
            return seen
        time.sleep(0.02)
    return seen


STREAM = {**GREEDY, "stream": True}


def test_a_streamed_miss_relays_each_event_as_it_comes_and_stores_the_stream(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    request_body = json.dumps(STREAM).encode()
    # Cut anywhere, as PayloadParts are: the relay reassembles the lines.
    lines = [lmi_chunk(content="The"), lmi_chunk(content=" answer"), lmi_chunk(content=" is 4"), lmi_chunk(finish="stop"), b"\n"]
    wire = b"".join(lines)
    add_stream(sagemaker, wire[:7], wire[7:150], wire[150:151], wire[151:], expected_body=request_body)  # the body as sent: stream: true
    key = cache_decision.decide("/v1/chat/completions", {}, request_body, origin.SETTINGS.cache, mac=MAC).key
    stored = {}
    s3.add_response("put_object", {}, {"Bucket": BUCKET, "Key": f"_cache/{key}", "Body": ANY, "ContentType": "text/event-stream",
                                       "CacheControl": ANY, "Metadata": ANY})
    s3.client.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: stored.update(body=params["Body"]))
    began = time.perf_counter()
    status, headers, chunks = origin.stream(url_event(STREAM), lambda_context)
    took_ms = (time.perf_counter() - began) * 1000
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-inference-cache"] == "MISS" and headers["x-inference-cache-key"] == key
    events = sse_events(chunks)
    assert events[-1] == "[DONE]"
    assert [json.loads(e) for e in events[:-1]] == [json.loads(line) for line in lines[:-1]]
    # What the client got, byte for byte, is what a hit replays.
    assert stored["body"] == b"".join(c for _, c in chunks)
    metrics = wait_for_metrics(capsys, "TimeToFirstToken")
    assert metrics["CacheMiss"] == 1.0 and metrics["CacheStore"] == 1.0 and "StreamCutOff" not in metrics
    assert 0 < metrics["TimeToFirstToken"] <= took_ms and metrics["StoredBytes"] == float(len(stored["body"]))


def test_a_stream_whose_last_event_has_no_newline_is_complete_and_stored_as_relayed(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    add_stream(sagemaker, lmi_chunk(content="4"), lmi_chunk(finish="stop")[:-1])  # the model's last line, unterminated
    stored = {}
    s3.add_response("put_object", {}, None)
    s3.client.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: stored.update(body=params["Body"]))
    _, _, chunks = origin.stream(url_event(STREAM), lambda_context)
    body = b"".join(c for _, c in chunks)
    assert body == b"data: " + lmi_chunk(content="4")[:-1] + b"\n\n" + b"data: " + lmi_chunk(finish="stop")[:-1] + b"\n\n" + (
        b"data: [DONE]\n\n")
    assert wait_for_metrics(capsys, "CacheStore")["CacheStore"] == 1.0 and stored["body"] == body


def test_a_stream_cut_by_a_model_error_ends_with_an_error_event_and_is_not_stored(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    add_stream(sagemaker, lmi_chunk(content="The"), lmi_chunk(content=" ans"),
               error=("ModelStreamError", "Your model primary did not complete sending the inference response."))
    status, _, chunks = origin.stream(url_event(STREAM), lambda_context)
    assert status == 200  # the stream had begun: the error is its last event
    events = sse_events(chunks)
    assert json.loads(events[0])["choices"][0]["delta"] == {"content": "The"}
    error = json.loads(events[-1])["error"]
    assert error["code"] == "model_stream_error" and "ModelStreamError" in error["message"]
    assert "[DONE]" not in events
    metrics = wait_for_metrics(capsys, "StreamCutOff")
    assert metrics["StreamCutOff"] == 1.0 and metrics["ModelError"] == 1.0
    assert "CacheStore" not in metrics and "CacheStoreFailed" not in metrics
    assert s3.calls == []  # no store was even tried


def test_a_client_that_goes_away_mid_stream_ends_it_and_nothing_is_stored(origin, stubs, outcomes, lambda_context, capsys):
    sagemaker, s3 = stubs
    tokens = [lmi_chunk(content=f" t{i}") for i in range(20)] + [lmi_chunk(finish="stop"), b"\n"]
    wire = add_stream(sagemaker, *tokens, gap=0.05)
    method, path, headers, body = web_adapter_request(url_event(STREAM), request_id="r", deadline_ms=0)
    headers.pop("host")
    with httpx2.Client(base_url=origin.url) as client, client.stream(method, path, headers=headers, content=body) as answer:
        first = next(answer.iter_raw())
    assert b"t0" in first  # then the client hangs up, ~1 s before the model would end
    metrics = wait_for_metrics(capsys, "StreamCutOff")
    assert metrics["StreamCutOff"] == 1.0 and "CacheStore" not in metrics and "CacheStoreFailed" not in metrics
    assert wire.closed  # the model's stream was closed, not read to its end
    assert s3.calls == [] and [o.stream_cut_off for o in outcomes] == ["client gone"]


def test_a_stream_that_runs_past_the_adapters_time_ends_with_a_timeout_event(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    assert origin.ADAPTER.stream_seconds == origin.SETTINGS.answer_seconds  # the adapter's timeout less 2 s
    origin.ADAPTER.stream_seconds = 0.3
    add_stream(sagemaker, *[lmi_chunk(content=f" t{i}") for i in range(10)], lmi_chunk(finish="stop"), gap=0.1)
    status, _, chunks = origin.stream(url_event(STREAM), lambda_context)
    assert status == 200 and len(sse_events(chunks)) < 6
    assert b"".join(c for _, c in chunks).endswith(b"data: " + json.dumps({"error": {
        "message": "The answer took longer than the origin may stream.", "type": "server_error", "param": None,
        "code": "model_timeout"}}).encode() + b"\n\n")
    assert wait_for_metrics(capsys, "StreamCutOff")["StreamCutOff"] == 1.0
    assert s3.calls == []


def ended_early(why: str) -> bytes:
    """The adapter's own last event for a stream that ended without a complete answer."""
    error = {"message": f"The model's stream ended early ({why}).", "type": "server_error", "param": None,
             "code": "model_stream_incomplete"}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("lines", "last", "model_error"),
    [
        # vLLM's own mid-stream error chunk (then its normal-looking end): relayed as it came, never stored.
        ([lmi_chunk(content="The"), b'{"error": {"message": "engine died", "code": 500}}\n', b"\n"],
         b'data: {"error": {"message": "engine died", "code": 500}}\n\n', True),
        # The stream ended, but no choice finished: cut short somewhere upstream.
        ([lmi_chunk(content="The"), lmi_chunk(content=" ans")], ended_early("a choice ended without a finish reason"), False),
        # ... its last line without a newline: relayed, then the adapter's error event.
        ([lmi_chunk(content="The"), lmi_chunk(content=" ans")[:-1]],
         b"data: " + lmi_chunk(content=" ans")[:-1] + b"\n\n" + ended_early("a choice ended without a finish reason"), False),
        # A line that is not an event: the model's fault.
        ([lmi_chunk(content="The"), b"<html>502 Bad Gateway</html>\n", lmi_chunk(finish="stop")],
         ended_early("unreadable event in the model's stream"), True),
    ],
    ids=["model-error-event", "no-finish-reason", "no-finish-reason-no-newline", "not-an-event"],
)
def test_an_incomplete_or_failed_stream_reaches_the_client_with_an_error_and_is_not_stored(
    origin, stubs, lambda_context, capsys, lines, last, model_error
):
    sagemaker, s3 = stubs
    add_stream(sagemaker, *lines)
    status, _, chunks = origin.stream(url_event(STREAM), lambda_context)
    assert status == 200 and "[DONE]" not in sse_events(chunks)
    assert b"".join(c for _, c in chunks).endswith(last)
    metrics = wait_for_metrics(capsys, "StreamCutOff")
    assert metrics["StreamCutOff"] == 1.0 and "CacheStore" not in metrics and "CacheStoreFailed" not in metrics
    assert metrics.get("ModelError") == (1.0 if model_error else None)
    assert s3.calls == []


def test_a_stream_too_large_for_the_edge_is_relayed_whole_and_not_stored(origin, stubs, outcomes, lambda_context, capsys):
    sagemaker, s3 = stubs
    big = [lmi_chunk(content="x" * 100_000) for _ in range(11)]  # ~1.1 MB of events: past the servable size
    add_stream(sagemaker, *big, lmi_chunk(finish="stop"))
    status, _, chunks = origin.stream(url_event(STREAM), lambda_context)
    assert status == 200 and sse_events(chunks)[-1] == "[DONE]" and len(sse_events(chunks)) == 13
    metrics = wait_for_metrics(capsys, "CacheMiss")
    assert "StreamCutOff" not in metrics and "CacheStore" not in metrics and s3.calls == []
    assert [(o.too_large_to_store, o.stream_cut_off) for o in outcomes] == [(True, None)]


def test_a_usage_chunk_asked_for_is_relayed_and_required(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    add_stream(sagemaker, lmi_chunk(content="4"), lmi_chunk(finish="stop"), lmi_chunk(usage=usage)[:-1].replace(
        b'"choices": [{"index": 0, "delta": {}, "finish_reason": null}]', b'"choices": []') + b"\n", b"\n")
    s3.add_response("put_object", {}, None)
    _, _, chunks = origin.stream(url_event(asked), lambda_context)
    events = sse_events(chunks)
    assert json.loads(events[-2]) == {**json.loads(lmi_chunk(usage=usage)), "choices": []} and events[-1] == "[DONE]"
    wait_for_metrics(capsys, "CacheStore")
    assert s3.calls == ["put_object"]
    # Without the usage chunk it asked for, the answer is incomplete: not stored.
    add_stream(sagemaker, lmi_chunk(content="4"), lmi_chunk(finish="stop"), b"\n")
    _, _, chunks = origin.stream(url_event(asked), lambda_context)
    assert "usage chunk missing" in json.loads(sse_events(chunks)[-1])["error"]["message"]
    wait_for_metrics(capsys, "StreamCutOff")
    assert s3.calls == ["put_object"]  # still only the first


def test_every_choice_must_finish_before_a_stream_with_n_choices_is_stored(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs  # n: 2, one choice never finishes: nothing stored
    add_stream(sagemaker, lmi_chunk(0, "a"), lmi_chunk(1, "b"), lmi_chunk(0, finish="stop"), b"\n")
    _, _, chunks = origin.stream(url_event({**STREAM, "n": 2}), lambda_context)
    assert "without a finish reason" in json.loads(sse_events(chunks)[-1])["error"]["message"]
    assert wait_for_metrics(capsys, "StreamCutOff")["StreamCutOff"] == 1.0
    assert s3.calls == []


def test_a_container_error_before_the_stream_is_an_http_error_not_an_event(origin, stubs, lambda_context):
    sagemaker, _ = stubs
    sagemaker.add_client_error(
        "invoke_endpoint_with_response_stream", service_error_code="ModelError", http_status_code=424,
        modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": VLLM_400},
    )
    response = origin.call(url_event(STREAM), lambda_context)
    assert response.status == 400 and response.headers["content-type"] == "application/json"
    assert "maximum context length" in json.loads(response.body)["error"]["message"]


def test_invocations_streams_are_relayed_in_the_containers_own_framing(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    tgi = [json.dumps({"token": {"id": 1, "text": "4"}, "generated_text": None, "details": None}).encode() + b"\n",
           json.dumps({"token": {"id": 2, "text": "."}, "generated_text": "4.", "details": {"finish_reason": "eos_token"}}).encode() + b"\n"]
    add_stream(sagemaker, *tgi)
    s3.add_response("put_object", {}, {"Bucket": BUCKET, "Key": ANY, "Body": b"".join(tgi), "ContentType": "application/jsonlines",
                                       "CacheControl": ANY, "Metadata": ANY})
    body = {"inputs": "2+2=", "parameters": {"do_sample": False}, "stream": True}
    status, headers, chunks = origin.stream(url_event(body, path="/invocations"), lambda_context)
    assert status == 200 and headers["content-type"] == "application/jsonlines"
    assert b"".join(c for _, c in chunks) == b"".join(tgi)


def test_embeddings_never_stream_a_stream_field_is_refused_without_a_model_call(origin, stubs, lambda_context):
    """OpenAI's embeddings have no `stream`: the adapter refuses it (400) rather than ignore it.
    The Stubber holds no response: a model call would fail the test."""
    response = origin.call(url_event({"model": "e5", "input": "hello", "stream": True}, path="/v1/embeddings"), lambda_context)
    error = json.loads(response.body)["error"]
    assert response.status == 400 and error["param"] == "stream" and error["code"] == "unknown_parameter"


def test_the_readiness_route_answers_without_the_adapter(origin):
    assert httpx2.get(origin.url + HEALTH_ROUTE).status_code == 200


@pytest.mark.parametrize(
    ("code", "http", "status", "retry_after", "extra", "error_code", "message"),
    [
        ("ModelError", 424, 502, None, {"OriginalStatusCode": 500, "OriginalMessage": "CUDA out of memory"},
         "model_error", "The model failed: CUDA out of memory"),
        ("ValidationError", 400, 400, None, {}, "invalid_request", "The model rejected the request: it failed"),
        ("ThrottlingException", 400, 429, "2", {}, "throttled", "Too many requests to the model; retry shortly."),
        ("ModelNotReadyException", 429, 503, "10", {}, "no_capacity", "The model has no capacity right now; retry shortly."),
        ("ServiceUnavailable", 503, 503, "10", {}, "no_capacity", "The model has no capacity right now; retry shortly."),
        ("InternalFailure", 500, 502, None, {}, "endpoint_error", "The model endpoint failed (InternalFailure)."),
    ],
)
def test_endpoint_errors_map_to_openai_errors(
    origin, stubs, lambda_context, capsys, code, http, status, retry_after, extra, error_code, message
):
    sagemaker, s3 = stubs
    attempts = 1 + (origin.SETTINGS.throttle_retries if code == "ThrottlingException" else 0)
    for _ in range(attempts):
        sagemaker.add_client_error(
            "invoke_endpoint", service_error_code=code, service_message="it failed", http_status_code=http, modeled_fields=extra
        )
    response = origin.call(url_event(), lambda_context)
    assert response.status == status
    assert response.headers.get("retry-after") == retry_after
    assert response.headers["x-inference-cache"] == "BYPASS"
    error = json.loads(response.body)["error"]
    expected_type = {429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    assert error == {"message": message, "type": expected_type, "param": None, "code": error_code}
    # Only throttling is retried (each throttle answered once more, up to the limit); an error is never stored.
    assert sagemaker.calls == ["invoke_endpoint"] * attempts and s3.calls == []
    assert emitted_metrics(capsys).get("ModelError") == (1.0 if code == "ModelError" else None)


def test_throttling_is_retried_then_succeeds(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    sagemaker.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
    payload = endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    response = origin.call(url_event(), lambda_context)
    assert response.status == 200 and response.body == payload


@pytest.mark.parametrize("code", ["ModelError", "InternalFailure", "ModelNotReadyException"])
def test_model_errors_are_not_retried(origin, stubs, lambda_context, code):
    sagemaker, s3 = stubs
    sagemaker.add_client_error("invoke_endpoint", service_error_code=code, http_status_code=424)
    assert origin.call(url_event(), lambda_context).status in (502, 503)
    assert sagemaker.calls == ["invoke_endpoint"] and s3.calls == []  # one model call, nothing stored


def test_unknown_endpoint_is_503(origin, stubs, lambda_context):
    sagemaker, _ = stubs
    sagemaker.add_client_error(
        "invoke_endpoint",
        service_error_code="ValidationError",
        service_message="Endpoint inference-cache-dev of account 111111111111 not found.",
        http_status_code=400,
    )
    response = origin.call(url_event(), lambda_context)
    assert response.status == 503 and response.headers["retry-after"] == "30"


def test_invalid_body_is_refused_without_calling_the_model(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    response = origin.call(url_event(b"{not json"), lambda_context)
    assert response.status == 400
    assert json.loads(response.body)["error"]["type"] == "invalid_request_error"
    assert sagemaker.calls == [] and s3.calls == []


def test_models_route_and_unknown_route(origin, stubs, lambda_context):
    models = origin.call(url_event(path="/v1/models", method="GET", body=b""), lambda_context)
    assert json.loads(models.body)["data"][0]["id"] == STAGES["dev"].model.model_id
    unknown = origin.call(url_event(path="/v1/files", body=b"{}"), lambda_context)
    assert unknown.status == 404


def test_tenant_comes_from_the_edge_header_not_the_signature(origin, stubs, lambda_context, monkeypatch):
    origin.ADAPTER.cache = origin.ADAPTER.cache._replace(tenant_scoped=True)
    sagemaker, s3 = stubs
    endpoint_answer(sagemaker)  # no tenant: not cacheable, not stored
    response = origin.call(url_event(), lambda_context)
    assert response.headers["x-inference-cache"] == "BYPASS"
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    tenant_a = origin.call(url_event(headers={"x-inference-tenant": "a" * 32}), lambda_context)
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    tenant_b = origin.call(url_event(headers={"x-inference-tenant": "b" * 32}), lambda_context)
    assert tenant_a.headers["x-inference-cache"] == "MISS"
    assert tenant_a.headers["x-inference-cache-key"] != tenant_b.headers["x-inference-cache-key"]


VLLM_400 = json.dumps({"object": "error", "message": "This model's maximum context length is 8192 tokens.",
                       "type": "BadRequestError", "param": None, "code": 400})


@pytest.mark.parametrize(
    ("extra", "status", "code", "in_message"),
    [
        # The container's own 4xx (vLLM's error body) stays that 4xx: the openai client does not retry it.
        ({"OriginalStatusCode": 400, "OriginalMessage": VLLM_400}, 400, "model_rejected_request", "maximum context length"),
        ({"OriginalStatusCode": 422, "OriginalMessage": "Input validation error: `top_p` must be > 0.0"}, 422,
         "model_rejected_request", "top_p"),
        # A timeout is 504, however it is reported.
        ({"OriginalStatusCode": 408, "OriginalMessage": "Request timeout"}, 504, "model_timeout", "in time"),
        ({"OriginalMessage": "Your invocation timed out while waiting for a response from container primary."}, 504,
         "model_timeout", "in time"),
        ({"OriginalStatusCode": 503, "OriginalMessage": "engine dead"}, 502, "model_error", "engine dead"),
    ],
)
def test_container_status_passes_through_as_the_same_kind_of_error(
    origin, stubs, lambda_context, capsys, extra, status, code, in_message
):
    sagemaker, _ = stubs
    sagemaker.add_client_error(
        "invoke_endpoint", service_error_code="ModelError", service_message="it failed", http_status_code=424,
        modeled_fields=extra,
    )
    response = origin.call(url_event(), lambda_context)
    assert response.status == status
    error = json.loads(response.body)["error"]
    assert error["code"] == code and in_message in error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert emitted_metrics(capsys).get("ModelError") == (1.0 if code == "model_error" else None)


def answer_of_size(size: int) -> dict:
    """A chat answer whose JSON (as endpoint_answer writes it) is exactly `size` bytes."""
    def sized(content: str) -> dict:
        return {**CHAT_ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                            "finish_reason": "length"}]}
    answer = sized("x" * (size - len(json.dumps(sized("")))))
    assert len(json.dumps(answer).encode()) == size
    return answer


@pytest.mark.parametrize(
    ("size", "stored"),
    [(SERVABLE_BODY_LIMIT_BYTES - 1, True), (SERVABLE_BODY_LIMIT_BYTES, True), (SERVABLE_BODY_LIMIT_BYTES + 1, False)],
    ids=["limit-1", "limit", "limit+1"],
)
def test_an_answer_is_stored_only_up_to_the_size_the_edge_can_serve(origin, stubs, outcomes, lambda_context, capsys, size, stored):
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker, answer=answer_of_size(size))
    if stored:
        s3.add_response("put_object", {}, {"Bucket": BUCKET, "Key": ANY, "Body": payload, "ContentType": "application/json",
                                           "CacheControl": ANY, "Metadata": ANY})
    response = origin.call(url_event(), lambda_context)
    assert response.status == 200 and response.body == payload and len(payload) == size
    assert response.headers["x-inference-cache"] == "MISS"  # answered either way
    assert s3.calls == (["put_object"] if stored else [])
    metrics = emitted_metrics(capsys)
    assert metrics.get("StoredBytes") == (float(size) if stored else None) and "CacheStoreFailed" not in metrics
    assert [(o.too_large_to_store, o.stored_bytes) for o in outcomes] == [(not stored, size if stored else 0)]
    # Server-Timing's model step is the model's own time, the figure the GPU-seconds metric counts.
    assert outcomes[0].timings["model"] == pytest.approx(outcomes[0].inference_seconds * 1000)


def test_the_adapters_own_failure_is_answered_in_the_openai_shape(origin, stubs, lambda_context):
    """Something the adapter did not expect (here a body that fails to read with an error
    no handler knows): a 500 the openai client can read, never Starlette's text/plain page."""

    class Unreadable:
        def read(self, *args):
            raise RuntimeError("nobody expected this")

    sagemaker, _ = stubs
    sagemaker.add_response("invoke_endpoint", {"Body": Unreadable(), "ContentType": "application/json"})
    response = origin.call(url_event(), lambda_context)
    assert response.status == 500 and response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["error"] == {"message": "The origin failed to answer.", "type": "server_error",
                                                 "param": None, "code": "origin_error"}


def test_the_results_buckets_budgets_are_far_below_the_answers(origin):
    """One S3 client for the leases and the store: per call 0.5 s to connect and 2 s to
    read, no retries; the SageMaker client keeps its connections alive too."""
    settings = origin.SETTINGS
    config = origin.ADAPTER.store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (0.5, 2.0) == (
        settings.cache_connect_timeout_seconds, settings.cache_read_timeout_seconds)
    assert config.retries["total_max_attempts"] == 1 and config.tcp_keepalive
    assert origin.ADAPTER.endpoint.client.meta.config.tcp_keepalive
    assert 2 * (config.connect_timeout + config.read_timeout) <= settings.read_timeout_seconds / 4
    with pytest.raises(ValueError, match="below the model read"):
        AdapterSettings(**{**settings.__dict__, "cache_read_timeout_seconds": settings.read_timeout_seconds})
    with pytest.raises(ValueError, match="fit in the 6.0 s"):
        AdapterSettings(**{**settings.__dict__, "cache_connect_timeout_seconds": 1.0, "cache_read_timeout_seconds": 2.5})


# -- embeddings through the adapter --------------------------------------------------------

def test_an_embeddings_miss_is_answered_by_the_embeddings_model_and_stored_under_its_version(
    origin, stubs, lambda_context, monkeypatch
):
    """/v1/embeddings goes to the embeddings endpoint (not the LLM's), comes back in
    OpenAI's shape, and is stored under the embeddings model's id and version: a new
    embeddings model version keys and marks its answers apart from the LLM's."""
    _, s3 = stubs
    service = origin.ADAPTER.embeddings
    monkeypatch.setattr(service, "_load_tokenizer", lambda: (packaged_embedding_model() / "tokenizer.json").read_bytes())
    tei = CountingStubber(service.endpoint.client)
    vector = [0.5] * STAGES["dev"].embeddings.dimensions
    tei.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(json.dumps([vector]).encode()), len(json.dumps([vector]))), "ContentType": "application/json"},
        {"EndpointName": STAGES["dev"].embeddings_endpoint_name, "Body": ANY, "ContentType": "application/json",
         "Accept": "application/json"},
    )
    request = {"model": STAGES["dev"].embeddings.model_id, "input": "hello"}
    key = cache_decision.decide("/v1/embeddings", {}, json.dumps(request).encode(), origin.SETTINGS.cache, mac=MAC).key
    s3.add_response("put_object", {}, {
        "Bucket": BUCKET, "Key": f"_cache/{key}", "Body": ANY, "ContentType": "application/json", "CacheControl": ANY,
        "Metadata": {"model": STAGES["dev"].embeddings.model_id, "model-version": origin.SETTINGS.cache.embeddings_model_version,
                     "created": ANY, "expires": ANY},
    })
    with tei:
        response = origin.call(url_event(request, path="/v1/embeddings"), lambda_context)
        tei.assert_calls_as_queued()
    answer = json.loads(response.body)
    assert (response.status, response.headers["x-inference-cache"], answer["object"]) == (200, "MISS", "list")
    assert answer["data"] == [{"object": "embedding", "index": 0, "embedding": vector}]
    assert origin.SETTINGS.cache.embeddings_model_version != origin.SETTINGS.cache.model_version


def test_an_adapter_without_its_embeddings_model_answers_404_and_calls_no_model(origin, stubs, lambda_context):
    """Settings that name an embeddings model while the adapter has none (a stage half
    deployed): the edge's own 404 in the OpenAI shape, no model call, nothing stored."""
    origin.ADAPTER.embeddings = None
    response = origin.call(url_event({"model": "m", "input": "hello"}, path="/v1/embeddings"), lambda_context)
    assert response.status == 404
    assert json.loads(response.body) == {"error": {
        "message": "This stage serves no embeddings model.", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}}
