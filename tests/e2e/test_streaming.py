"""Streamed misses end to end on the local run, with the official openai client: tokens
reach the client as the model generates them, the stream is stored only when it ended
normally, and a hit replays it. The local model server paces its test generator with
markers in the prompt ([[tokens:N]], [[token-ms:N]], [[stream-error-after:N]])."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import boto3
import httpx2
import openai
import pytest

pytestmark = pytest.mark.e2e


def model_calls(local_run) -> int:
    with urllib.request.urlopen(local_run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def ask(content: str, **extra) -> dict:
    return dict(model="local", messages=[{"role": "user", "content": content}], temperature=0, **extra)


def streamed(client, request: dict):
    """(x-inference-cache, assembled text, [arrival seconds of each content chunk], total
    seconds, the chunks)."""
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(**request, stream=True)
    text, arrivals, chunks = "", [], []
    for chunk in raw.parse():
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            text += chunk.choices[0].delta.content
    return raw.headers.get("x-inference-cache"), text, arrivals, time.perf_counter() - started, chunks


def test_tokens_reach_the_client_as_the_model_generates_them(client):
    # 40 tokens, one every 25 ms: a second of generation.
    status, text, arrivals, total, _ = streamed(client, ask(f"Stream me {time.time()} [[tokens:40]] [[token-ms:25]]"))
    assert status == "MISS" and len(arrivals) == 40
    # The first token arrives long before the last is generated, and the rest follow it.
    assert arrivals[0] < 0.5 * total, (arrivals[0], total)
    assert arrivals[-1] - arrivals[0] > 0.6, arrivals  # ~0.975 s of generation between them
    assert arrivals[20] - arrivals[0] > 0.25  # not bunched at either end


def test_the_streamed_text_is_the_answer_the_same_request_gets_unstreamed(client):
    request = ask(f"Same answer both ways {time.time()} [[tokens:25]]")
    _, text, _, _, _ = streamed(client, request)
    whole = client.chat.completions.create(**request)
    assert text == whole.choices[0].message.content and len(text.split()) == 25


def test_a_usage_chunk_comes_last_when_asked_for(client):
    request = ask(f"Count my tokens {time.time()} [[tokens:12]]")
    *_, chunks = streamed(client, {**request, "stream_options": {"include_usage": True}})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    *_, chunks = streamed(client, request)
    assert all(c.usage is None for c in chunks)


def test_a_second_identical_stream_is_a_hit_that_replays_it(client):
    request = ask(f"Replay me {time.time()} [[tokens:30]] [[token-ms:20]]")
    first = streamed(client, request)
    second = streamed(client, request)
    assert (first[0], second[0]) == ("MISS", "HIT")
    assert second[1] == first[1]
    assert [c.model_dump() for c in second[4]] == [c.model_dump() for c in first[4]]
    assert second[3] < first[3]  # no generation to wait for: ~0.6 s of it in the miss


def test_a_stream_cut_off_by_the_client_is_not_stored(client, local_run):
    request = {**ask(f"Hang up on me {time.time()} [[tokens:60]] [[token-ms:30]]"), "stream": True}
    calls = model_calls(local_run)
    headers = {"authorization": f"Bearer {local_run['api_key']}"}
    began = time.monotonic()
    with httpx2.Client(base_url=local_run["listening"], timeout=30) as http, http.stream(
        "POST", "/v1/chat/completions", json=request, headers=headers
    ) as answer:
        assert answer.headers["x-inference-cache"] == "MISS"
        key = answer.headers["x-inference-cache-key"]
        next(answer.iter_raw())  # the first events, then the client goes away ~1.7 s early
    # Nothing reaches the results store, not even once the model would have finished (1.8 s).
    s3 = boto3.client("s3", endpoint_url=local_run["results_store"], region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    while time.monotonic() < began + 2.5:
        for bucket in buckets:
            assert s3.list_objects_v2(Bucket=bucket, Prefix=f"_cache/{key}")["KeyCount"] == 0
        time.sleep(0.1)
    status, text, _, _, _ = streamed(client, {k: v for k, v in request.items() if k != "stream"})
    assert status == "MISS" and len(text.split()) == 60  # generated again: nothing was stored
    assert model_calls(local_run) == calls + 2


def test_a_stream_cut_by_a_model_error_raises_in_the_client_and_is_not_stored(client, local_run):
    request = ask(f"Fail me {time.time()} [[tokens:20]] [[stream-error-after:5]]")
    calls = model_calls(local_run)
    for _ in range(2):
        received = []
        with pytest.raises(openai.APIError, match="mid-stream"):
            for chunk in client.chat.completions.create(**request, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        assert len(received) == 5  # what came before the error came through
    assert model_calls(local_run) == calls + 2  # the failed stream was never an answer


def test_identical_streams_at_once_make_one_model_call_and_get_the_same_answer(client, local_run):
    request = ask(f"Burst of streams {time.time()} [[tokens:20]] [[token-ms:20]]")
    calls, results, barrier = model_calls(local_run), [None] * 8, threading.Barrier(8)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = streamed(client, request)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model_calls(local_run) == calls + 1
    assert sorted(r[0] for r in results) == ["HIT"] * 7 + ["MISS"]
    assert len({r[1] for r in results}) == 1 and len(results[0][1].split()) == 20
