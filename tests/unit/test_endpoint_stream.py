"""SageMakerEndpoint.invoke_stream with boto3's real sagemaker-runtime client against the
local model server on 127.0.0.1, which speaks SageMaker's response-stream wire format
(AWS's binary event stream): PayloadParts cut mid-line, ModelStreamError mid-stream, a
container error before the stream, a model that stops sending, and an OpenAI-compatible
server behind it (LOCAL_CHAT_URL) streaming SSE."""

from __future__ import annotations

import asyncio
import json
import time

import boto3
import pytest
from botocore.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from lambdas.origin_adapter.endpoint import EndpointFailure, SageMakerEndpoint
from lambdas.origin_adapter.streaming import SSE_DONE, StreamRelay
from local_run.model_server import ModelServer
from local_run.servers import BackgroundServer


@pytest.fixture(scope="module")
def model_server():
    server = BackgroundServer(ModelServer().app, name="model-under-test").start()
    yield server.url
    server.stop()


def endpoint(url: str, read_timeout: float = 5.0) -> SageMakerEndpoint:
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-west-2",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(read_timeout=read_timeout, connect_timeout=2, retries={"total_max_attempts": 1}),
    )
    return SageMakerEndpoint("e", connect_timeout=2, read_timeout=read_timeout, throttle_retries=0, client=client)


def chat(content: str, **extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0,
                       "stream": True, **extra}).encode()


def test_the_stream_arrives_as_it_is_generated_in_parts_cut_anywhere(model_server):
    stream = endpoint(model_server).invoke_stream(chat("count [[tokens:6]] [[token-ms:40]]"), "application/json")
    started, arrivals, parts = time.perf_counter(), [], []
    for part in stream:
        arrivals.append(time.perf_counter() - started)
        parts.append(part)
    lines = b"".join(parts).split(b"\n")
    assert any(not p.endswith(b"\n") for p in parts)  # boundaries are not line ends
    tokens = [json.loads(line)["choices"][0]["delta"].get("content") for line in lines if line and b'"choices": [{' in line]
    assert "".join(t for t in tokens if t).startswith("[local-test-generator:")
    # Tokens 40 ms apart arrive spread out, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.15 and arrivals[2] < arrivals[-1] - 0.1
    assert stream.content_type == "application/jsonlines"


def test_a_model_error_mid_stream_raises_after_the_parts_before_it(model_server):
    stream = endpoint(model_server).invoke_stream(chat("fail [[stream-error-after:2]]"), "application/json")
    received = []
    with pytest.raises(EndpointFailure) as failure:
        for part in stream:
            received.append(part)
    assert b"".join(received).count(b"\n") == 3  # the role chunk and two tokens
    assert (failure.value.status, failure.value.code, failure.value.model_error) == (502, "model_stream_error", True)


def test_a_container_error_before_the_stream_raises_on_the_call(model_server):
    with pytest.raises(EndpointFailure) as failure:
        endpoint(model_server).invoke_stream(chat("hi", max_tokens=0), "application/json")
    assert failure.value.status == 400 and "max_tokens" in failure.value.message
    with pytest.raises(EndpointFailure) as failure:
        endpoint(model_server).invoke_stream(chat("[[model-error]]"), "application/json")
    assert failure.value.status == 502 and failure.value.model_error


def test_a_model_that_stops_sending_for_longer_than_the_read_timeout_is_a_504(model_server):
    stream = endpoint(model_server, read_timeout=0.3).invoke_stream(chat("slow [[token-ms:900]]"), "application/json")
    with pytest.raises(EndpointFailure) as failure:
        list(stream)
    assert (failure.value.status, failure.value.code) == (504, "model_timeout")


def test_an_openai_compatible_chat_server_is_relayed_as_it_streams():
    """LOCAL_CHAT_URL: a server that streams SSE as vLLM does (data: lines, [DONE]) reaches
    the adapter line by line as it writes them, and the relay turns it into the same
    events, complete."""
    chunks = [{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
              for word in ("one", " two", " three")]
    chunks.append({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    seen: list[dict] = []

    async def completions(request: Request) -> StreamingResponse:
        seen.append(json.loads(await request.body()))

        async def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0.15)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    vllm = BackgroundServer(Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])).start()
    model = BackgroundServer(ModelServer(chat_url=vllm.url).app).start()
    try:
        stream = endpoint(model.url).invoke_stream(chat("hi"), "application/json")
        relay, out, started, arrivals = StreamRelay(sse=True, keep_limit=1 << 20), [], time.perf_counter(), []
        for part in stream:
            for frame in relay.feed(part):
                arrivals.append(time.perf_counter() - started)
                out.append(frame)
        out += relay.finish()
    finally:
        model.stop()
        vllm.stop()
    assert seen[0]["stream"] is True  # the server was asked to stream
    assert relay.complete and [json.loads(f.removeprefix(b"data: ")) for f in out[:-1]] == chunks and out[-1] == SSE_DONE
    assert arrivals[-1] - arrivals[0] > 0.3  # as the server wrote them, 0.15 s apart
