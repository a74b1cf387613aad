"""The origin adapter's embeddings translation (lambdas/origin_adapter/embeddings.py):
OpenAI's request and answer on one side, Text Embeddings Inference's on the other.

Two ways: with botocore's Stubber at the boto3 boundary (what the adapter sends to
InvokeEndpoint, call by call, and what it makes of what comes back), and against the
local TEI stand-in over real HTTP (local_run/embeddings_server.py, the real model),
through the adapter's own boto3 sagemaker-runtime client."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import time

import boto3
import pytest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.stub import Stubber
from tokenizers import Tokenizer

from config.stages import STAGES
from lambdas.origin_adapter.embeddings import EmbeddingsService
from lambdas.origin_adapter.endpoint import EndpointFailure, SageMakerEndpoint
from local_run.embeddings_server import TeiLimits, TeiStandIn, packaged_embedding_model
from local_run.sagemaker_runtime import SageMakerRuntime
from local_run.servers import BackgroundServer

DEV = STAGES["dev"]
ENDPOINT = DEV.embeddings_endpoint_name
MODEL = DEV.adapter_embeddings_model("models-bucket")
TOKENIZER = (packaged_embedding_model() / "tokenizer.json").read_bytes()
READ_SECONDS = DEV.endpoint.timeouts.model_read_seconds


def tokenizer() -> Tokenizer:
    """The model's tokenizer as TEI loads it: tokenizer.json, no padding, no truncation."""
    loaded = Tokenizer.from_str(TOKENIZER.decode())
    loaded.no_padding()
    loaded.no_truncation()
    return loaded


def tokens(text: str) -> int:
    return len(tokenizer().encode(text).ids)


# -- with botocore's Stubber ----------------------------------------------------------------


class Stubbed:
    """The service with its endpoint's boto3 client stubbed; `expect` queues one call."""

    def __init__(self, model=MODEL, tokenizer=lambda: TOKENIZER) -> None:
        client = boto3.client("sagemaker-runtime", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
        self.stubber = Stubber(client)
        endpoint = SageMakerEndpoint(model.endpoint_name, connect_timeout=1, read_timeout=1, throttle_retries=0, client=client)
        self.service = EmbeddingsService(model, DEV.embeddings.model_id, endpoint, tokenizer, read_seconds=READ_SECONDS)

    def expect(self, tei_request: dict, vectors: list) -> None:
        payload = json.dumps(vectors).encode()
        self.stubber.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
            {
                "EndpointName": ENDPOINT,
                "Body": json.dumps(tei_request, separators=(",", ":")).encode(),
                "ContentType": "application/json",
                "Accept": "application/json",
            },
        )

    def fail(self, status: int, body: dict) -> None:
        """The container answered `status`: SageMaker's ModelError, as InvokeEndpoint raises it."""
        self.stubber.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message=f"Received client error ({status}) from primary",
            http_status_code=424,
            response_meta={},
            modeled_fields={"OriginalStatusCode": status, "OriginalMessage": json.dumps(body)},
        )

    def answer(self, body: dict, started: float | None = None) -> dict:
        with self.stubber:
            answer = self.service.answer(json.dumps(body).encode(), time.perf_counter() if started is None else started)
            self.stubber.assert_no_pending_responses()
        assert answer.content_type == "application/json"
        return json.loads(answer.body)

    def refused(self, body: dict) -> EndpointFailure:
        """The request is answered with an error and no model call (the Stubber holds none)."""
        with self.stubber, pytest.raises(EndpointFailure) as raised:
            self.service.answer(json.dumps(body).encode(), time.perf_counter())
        return raised.value


def vec(seed: int, n: int = 384) -> list[float]:
    return [round(math.sin(seed + i), 6) for i in range(n)]


def tei(inputs, **extra) -> dict:
    return {"inputs": inputs, "normalize": True, "truncate": False, **extra}


def test_a_string_is_one_input_of_a_batch_and_the_answer_is_openais_shape():
    stub = Stubbed()
    stub.expect(tei(["edge caches save GPU time"]), [vec(1)])
    answer = stub.answer({"model": "all-MiniLM-L6-v2", "input": "edge caches save GPU time"})
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vec(1)}],
        "model": DEV.embeddings.model_id,
        "usage": {"prompt_tokens": tokens("edge caches save GPU time"), "total_tokens": tokens("edge caches save GPU time")},
    }


def test_more_inputs_than_the_containers_batch_go_in_order_one_batch_after_the_other():
    size = MODEL.batch_inputs
    texts = [f"chunk {i}" for i in range(2 * size + 6)]
    stub = Stubbed()
    for first in range(0, len(texts), size):
        stub.expect(tei(texts[first : first + size]), [vec(i) for i in range(first, min(first + size, len(texts)))])
    answer = stub.answer({"model": "m", "input": texts, "encoding_format": "float"})
    assert [d["index"] for d in answer["data"]] == list(range(len(texts)))
    assert [d["embedding"] for d in answer["data"]] == [vec(i) for i in range(len(texts))]
    assert answer["usage"]["prompt_tokens"] == sum(tokens(t) for t in texts)


@pytest.mark.parametrize(
    ("openai_input", "tei_inputs"),
    [
        ([101, 7592, 102], [[101, 7592, 102]]),  # one input of token ids
        ([[7592, 2088], [2088]], [[7592, 2088], [2088]]),  # inputs of token ids
        (["a", "b"], ["a", "b"]),
    ],
)
def test_every_input_form_reaches_tei_as_its_own_input_type(openai_input, tei_inputs):
    stub = Stubbed()
    stub.expect(tei(tei_inputs), [vec(i) for i in range(len(tei_inputs))])
    answer = stub.answer({"model": "m", "input": openai_input})
    assert len(answer["data"]) == len(tei_inputs)
    ids = [i for i in tei_inputs if isinstance(i, list)]
    if ids:  # token ids count as themselves
        assert answer["usage"]["prompt_tokens"] == sum(map(len, ids))


def test_base64_is_the_vectors_float32_little_endian():
    stub = Stubbed()
    stub.expect(tei(["x"]), [vec(3)])
    (item,) = stub.answer({"model": "m", "input": "x", "encoding_format": "base64"})["data"]
    raw = base64.b64decode(item["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(vec(3), abs=1e-7)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": ["x"] * 2049}, "input"),  # more than OpenAI accepts
        ({"model": "m", "input": ["a", [1, 2]]}, "input"),  # mixed strings and token ids
        ({"model": "m", "input": [[1, 2], []]}, "input"),  # an empty list of ids
        ({"model": "m", "input": [1, -2]}, "input"),  # a negative id
        ({"model": "m", "input": [MODEL.vocab_size]}, "input"),  # outside the vocabulary (TEI drops it silently)
        ({"model": "m", "input": [1.5]}, "input"),
        ({"model": "m", "input": ["ok", "half a pair \ud800"]}, "input"),  # no UTF-8 for it
        ({"model": "m", "input": {"text": "x"}}, "input"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "x", "encoding_format": None}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 128}, "dimensions"),  # MiniLM is no Matryoshka model
        ({"model": "m", "input": "x", "truncate": True}, "truncate"),  # not OpenAI's: refused, not ignored
        ({"model": "m", "input": "x", "user": 7}, "user"),
        ({"model": "", "input": "x"}, "model"),
    ],
)
def test_what_the_model_cannot_do_is_a_clear_400_before_any_model_call(body, param):
    failure = Stubbed().refused(body)
    assert (failure.status, failure.param) == (400, param)
    assert failure.message


MATRYOSHKA = MODEL._replace(matryoshka=True)


def test_dimensions_reach_tei_only_where_the_model_can_shorten_its_vectors():
    stub = Stubbed(MATRYOSHKA)
    stub.expect(tei(["x"], dimensions=64), [vec(1, 64)])
    assert len(stub.answer({"model": "m", "input": "x", "dimensions": 64})["data"][0]["embedding"]) == 64
    stub = Stubbed(MATRYOSHKA)
    stub.expect(tei(["x"]), [vec(1)])  # the whole vector: nothing to ask for
    assert len(stub.answer({"model": "m", "input": "x", "dimensions": MODEL.dimensions})["data"][0]["embedding"]) == 384
    for dimensions in (0, MODEL.dimensions + 1, "64", True, None):
        failure = Stubbed(MATRYOSHKA).refused({"model": "m", "input": "x", "dimensions": dimensions})
        assert (failure.status, failure.param) == (400, "dimensions"), dimensions


@pytest.mark.parametrize(
    ("tei_status", "tei_body", "status", "code"),
    [
        # TEI's own refusals keep their status: the request's fault, not the model's.
        (422, {"error": "Input validation error: `inputs` must have less than 256 tokens. Given: 300", "error_type": "Validation"},
         422, "model_rejected_request"),
        (413, {"error": "batch too large", "error_type": "Validation"}, 413, "model_rejected_request"),
        (429, {"error": "Model is overloaded", "error_type": "Overloaded"}, 429, "throttled"),
        # TEI's 424 is its inference failing: a model error (502).
        (424, {"error": "Inference failed", "error_type": "Backend"}, 502, "model_error"),
        (503, {"error": "unhealthy", "error_type": "Unhealthy"}, 502, "model_error"),
    ],
)
def test_container_errors_keep_their_meaning(tei_status, tei_body, status, code):
    stub = Stubbed()
    stub.fail(tei_status, tei_body)
    with stub.stubber, pytest.raises(EndpointFailure) as raised:
        stub.service.answer(json.dumps({"model": "m", "input": "x"}).encode(), time.perf_counter())
    assert (raised.value.status, raised.value.code) == (status, code)
    if status < 500:
        assert tei_body["error"] in raised.value.message


def test_a_failing_batch_ends_the_request_no_later_batch_is_sent():
    texts = [f"t{i}" for i in range(MODEL.batch_inputs + 1)]
    stub = Stubbed()
    stub.fail(429, {"error": "Model is overloaded", "error_type": "Overloaded"})  # the first batch; nothing after
    with stub.stubber, pytest.raises(EndpointFailure) as raised:
        stub.service.answer(json.dumps({"model": "m", "input": texts}).encode(), time.perf_counter())
    assert raised.value.status == 429


@pytest.mark.parametrize(
    "vectors", [[vec(1)], [vec(1), vec(2), vec(3)], [vec(1, 10), vec(2)], {"error": "x"}], ids=["short", "long", "size", "shape"]
)
def test_an_answer_that_is_not_one_vector_per_input_is_a_502(vectors):
    stub = Stubbed()
    stub.expect(tei(["a", "b"]), vectors)
    with pytest.raises(EndpointFailure) as raised:
        stub.answer({"model": "m", "input": ["a", "b"]})
    assert (raised.value.status, raised.value.code) == (502, "model_answer_unexpected")


def test_no_batch_starts_after_the_start_window_the_answer_is_a_504():
    texts = [f"t{i}" for i in range(MODEL.batch_inputs + 1)]
    stub = Stubbed()
    # The request arrived so long ago that even the first batch may not start.
    long_ago = time.perf_counter() - (READ_SECONDS - MODEL.batch_read_seconds) - 1
    with stub.stubber, pytest.raises(EndpointFailure) as raised:
        stub.service.answer(json.dumps({"model": "m", "input": texts}).encode(), long_ago)
    assert (raised.value.status, raised.value.code) == (504, "model_timeout")
    assert READ_SECONDS - MODEL.batch_read_seconds > 0


def test_an_unreadable_tokenizer_is_a_503_and_is_read_again_next_time():
    reads = []

    def flaky() -> bytes:
        reads.append(1)
        if len(reads) == 1:
            raise OSError("S3 is not there")
        return TOKENIZER

    stub = Stubbed(tokenizer=flaky)
    failure = stub.refused({"model": "m", "input": "x"})
    assert (failure.status, failure.code, failure.retry_after) == (503, "tokenizer_unavailable", 5)
    stub.expect(tei(["x"]), [vec(1)])
    assert stub.answer({"model": "m", "input": "x"})["usage"]["prompt_tokens"] == tokens("x")
    assert len(reads) == 2


# -- against the local TEI stand-in, over HTTP ----------------------------------------------


@pytest.fixture(scope="module")
def tei_stand_in():
    """The stand-in with the dev stage's limits, small enough to reach in a test, behind the
    local SageMaker runtime URL; (stand-in, runtime URL, container URL)."""
    limits = TeiLimits(max_client_batch_size=4, max_batch_tokens=512, max_concurrent_requests=8, version=(1, 8, 2))
    stand_in = TeiStandIn(packaged_embedding_model(), limits, endpoint_name=ENDPOINT)
    runtime = BackgroundServer(SageMakerRuntime(stand_in.app, {ENDPOINT: stand_in.app}), name="tei-runtime").start()
    yield stand_in, runtime.url
    runtime.stop()


SMALL_BATCHES = MODEL._replace(batch_inputs=4)  # the stand-in's MAX_CLIENT_BATCH_SIZE below


def over_http(url: str, model=SMALL_BATCHES) -> EmbeddingsService:
    client = boto3.client(
        "sagemaker-runtime", endpoint_url=url, region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}),
    )
    endpoint = SageMakerEndpoint(model.endpoint_name, connect_timeout=2, read_timeout=30, throttle_retries=0, client=client)
    return EmbeddingsService(model, DEV.embeddings.model_id, endpoint, lambda: TOKENIZER, read_seconds=READ_SECONDS)


def call(service: EmbeddingsService, body: dict) -> dict:
    return json.loads(service.answer(json.dumps(body).encode(), time.perf_counter()).body)


@pytest.fixture(scope="module")
def reference_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(packaged_embedding_model()), device="cpu")


def test_strings_through_tei_are_the_models_own_normalized_vectors(tei_stand_in, reference_model):
    stand_in, url = tei_stand_in
    texts = ["edge caches save GPU time", "re-indexing unchanged chunks", "ünïcödé", "a", "b", "c", "d"]
    before = stand_in.invocations
    answer = call(over_http(url), {"model": "m", "input": texts, "encoding_format": "float"})
    assert stand_in.invocations - before == 2  # 7 inputs in batches of 4
    expected = reference_model.encode(texts, normalize_embeddings=True)
    for item, want in zip(answer["data"], expected, strict=True):
        assert item["embedding"] == pytest.approx(want.tolist(), abs=2e-5)
        assert sum(x * x for x in item["embedding"]) == pytest.approx(1, abs=1e-5)
    # usage: what TEI itself counts (tokenizers, special tokens included)
    assert answer["usage"]["prompt_tokens"] == sum(tokens(t) for t in texts)


def test_token_ids_embed_the_text_they_encode(tei_stand_in):
    _, url = tei_stand_in
    ids = tokenizer().encode("edge caches save GPU time").ids  # with [CLS] and [SEP]
    service = over_http(url)
    from_ids = call(service, {"model": "m", "input": ids, "encoding_format": "float"})["data"][0]["embedding"]
    from_text = call(service, {"model": "m", "input": "edge caches save GPU time", "encoding_format": "float"})["data"][0]
    assert from_ids == pytest.approx(from_text["embedding"], abs=2e-5)


def test_base64_through_tei_decodes_to_the_float_answer(tei_stand_in):
    _, url = tei_stand_in
    service = over_http(url)
    floats = call(service, {"model": "m", "input": ["x", "y"], "encoding_format": "float"})["data"]
    encoded = call(service, {"model": "m", "input": ["x", "y"], "encoding_format": "base64"})["data"]
    for f, b in zip(floats, encoded, strict=True):
        raw = base64.b64decode(b["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(f["embedding"], abs=1e-7)


def test_dimensions_through_tei_are_the_shortened_vector_normalized_again(tei_stand_in):
    _, url = tei_stand_in
    service = over_http(url, MATRYOSHKA._replace(batch_inputs=4))
    full = call(service, {"model": "m", "input": "x", "encoding_format": "float"})["data"][0]["embedding"]
    short = call(service, {"model": "m", "input": "x", "encoding_format": "float", "dimensions": 32})["data"][0]["embedding"]
    norm = math.sqrt(sum(v * v for v in full[:32]))
    assert short == pytest.approx([v / norm for v in full[:32]], abs=2e-5)


def test_an_input_longer_than_the_model_reads_is_teis_422_never_truncated(tei_stand_in):
    stand_in, url = tei_stand_in
    with pytest.raises(EndpointFailure) as raised:
        call(over_http(url), {"model": "m", "input": ["short", "word " * 300]})
    assert raised.value.status == 422
    assert f"must have less than {stand_in.max_input_length} tokens" in raised.value.message


def test_the_stand_in_holds_teis_own_limits(tei_stand_in):
    """Direct calls, as SageMaker makes them of the container (the adapter never sends these)."""
    import httpx2

    stand_in, url = tei_stand_in

    def embed(body, content_type="application/json"):
        return httpx2.post(f"{url}/invocations", content=json.dumps(body), headers={"content-type": content_type}, timeout=30)

    too_many = embed({"inputs": ["x"] * 5})
    assert too_many.status_code == 422
    assert too_many.json() == {"error": "batch size 5 > maximum allowed batch size 4", "error_type": "Validation"}
    assert embed({"inputs": ""}).json()["error"] == "Input validation error: `inputs` cannot be empty"
    assert embed({"inputs": "x", "dimensions": 0}).json()["error_type"] == "Validation"
    not_a_request = embed({"input": "x"})  # OpenAI's field name is not TEI's: axum's plain-text 422
    assert not_a_request.status_code == 422 and "missing field `inputs`" in not_a_request.text
    assert embed({"inputs": "x"}, content_type="text/plain").status_code == 415
    vectors = embed({"inputs": "x", "normalize": False}).json()
    assert len(vectors) == 1 and len(vectors[0]) == stand_in.dimensions
    assert abs(sum(v * v for v in vectors[0]) - 1) > 1e-3  # raw pooled vector
    # The runtime face: a container error is SageMaker's ModelError with TEI's status and body.
    model_error = httpx2.post(f"{url}/endpoints/{ENDPOINT}/invocations", json={"inputs": ["x"] * 5}, timeout=30)
    assert model_error.status_code == 424 and model_error.json()["OriginalStatusCode"] == 422
    unknown = httpx2.post(f"{url}/endpoints/no-such-endpoint/invocations", json={"inputs": "x"}, timeout=30)
    assert unknown.status_code == 400 and unknown.headers["x-amzn-errortype"] == "ValidationError"


def test_more_inputs_in_flight_than_tei_admits_is_its_429(tei_stand_in):
    """TEI takes a permit per input (MAX_CONCURRENT_REQUESTS): with all of them held, the
    next input is refused at once, not queued."""
    stand_in, url = tei_stand_in
    held = [stand_in._permits.acquire(blocking=False) for _ in range(stand_in.limits.max_concurrent_requests)]
    try:
        assert all(held)
        with pytest.raises(EndpointFailure) as raised:
            call(over_http(url), {"model": "m", "input": "x"})
        assert (raised.value.status, raised.value.code) == (429, "throttled")
    finally:
        for _ in held:
            stand_in._permits.release()
    assert call(over_http(url), {"model": "m", "input": "x"})["data"]
