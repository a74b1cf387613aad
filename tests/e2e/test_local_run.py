"""End to end on the local run, with the official openai client: edge handler, origin
adapter, results store and model server, all real code, over real sockets."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

from lambdas.contract import COALESCED_HEADER, SERVER_TIMING_HEADER, TimingStep
from tests.conftest import ROOT
from tests.e2e.conftest import wait_stored

pytestmark = pytest.mark.e2e


def cache_status(raw) -> str:
    return raw.headers.get("x-inference-cache")


def test_chat_completion_miss_then_hit_with_identical_answer(client, local_run):
    ask = dict(model="local", messages=[{"role": "user", "content": "What does the edge cache save?"}], temperature=0)
    first = client.chat.completions.with_raw_response.create(**ask)
    wait_stored(local_run, first)
    second = client.chat.completions.with_raw_response.create(**ask)
    assert (cache_status(first), cache_status(second)) == ("MISS", "HIT")
    assert second.parse().model_dump() == first.parse().model_dump()
    assert "not a language model" in first.parse().choices[0].message.content
    assert int(second.headers["age"]) >= 0
    # Served by the edge from the results bucket, not by the origin (whose coalescing can
    # answer a repeat too, from the bucket, when the edge's read of it fails).
    steps = {entry.split(";")[0].strip() for entry in second.headers[SERVER_TIMING_HEADER].split(",")}
    assert TimingStep.LOOKUP in steps and TimingStep.ORIGIN not in steps, steps
    assert COALESCED_HEADER not in second.headers


def test_same_request_serialized_differently_hits(client, local_run):
    ask = dict(model="local", messages=[{"role": "user", "content": "Reserialized?"}], temperature=0, stop=["a", "b"])
    assert cache_status(client.chat.completions.with_raw_response.create(**ask)) == "MISS"
    # Other clothes: key order, spacing, a one-part content list, defaults spelled out, stop repeats.
    body = (
        b'{ "stop": ["a", "b", "a"], "n": 1, "temperature": 0.0, "stream": false,'
        b' "messages": [ {"content": [{"type": "text", "text": "Reserialized?"}], "role": "user"} ], "model": "local" }'
    )
    request = urllib.request.Request(
        local_run["listening"] + "/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", "x-api-key": local_run["api_key"]},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["x-inference-cache"] == "HIT"
    # Stop order is not clothes: the first listed stop that a step completes wins.
    reordered = urllib.request.Request(
        local_run["listening"] + "/v1/chat/completions", data=body.replace(b'["a", "b", "a"]', b'["b", "a"]'),
        headers={"content-type": "application/json", "x-api-key": local_run["api_key"]},
    )
    with urllib.request.urlopen(reordered, timeout=30) as answer:
        assert answer.headers["x-inference-cache"] == "MISS"


def test_embeddings_miss_then_hit_from_the_real_model(client):
    first = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=["edge caches", "GPU time"])
    second = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=["edge caches", "GPU time"])
    assert (cache_status(first), cache_status(second)) == ("MISS", "HIT")
    vectors = [d.embedding for d in first.parse().data]
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3  # normalized sentence embedding
    assert vectors[0] != vectors[1]
    assert [d.embedding for d in second.parse().data] == vectors


def test_no_store_is_a_bypass_every_time(client):
    ask = dict(model="local", messages=[{"role": "user", "content": "Do not keep this."}], temperature=0)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(**ask, extra_headers={"Cache-Control": "no-store"})
        assert cache_status(raw) == "BYPASS"
    assert cache_status(client.chat.completions.with_raw_response.create(**ask)) == "MISS"


def test_malformed_body_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="local", messages="not a list of messages", temperature=0)
    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "invalid_request_error"


def test_model_error_surfaces_as_502(client):
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="local", messages=[{"role": "user", "content": "[[model-error]]"}], temperature=0)
    assert raised.value.status_code == 502
    assert "simulated model failure" in json.dumps(raised.value.body)


def test_sampling_request_is_never_served_from_the_store(client):
    ask = dict(model="local", messages=[{"role": "user", "content": "Tell me something random."}], temperature=0.9)
    answers = [client.chat.completions.with_raw_response.create(**ask) for _ in range(3)]
    assert [cache_status(a) for a in answers] == ["BYPASS"] * 3
    assert len({a.parse().choices[0].message.content for a in answers}) == 3


def test_models_listed_are_exactly_the_stages_models(client, local_run):
    """GET /v1/models is the origin adapter's answer, as on a deployed stage: the stage's
    LLM and embeddings model, each with the version that keys its cache and its route."""
    from config.stages import STAGES

    dev = STAGES["dev"]
    listed = [(m.id, m.model_extra["version"], m.model_extra["task"]) for m in client.models.list().data]
    assert listed == [
        (dev.model.model_id, dev.model.model_version, "chat/completions"),
        (dev.embeddings.model_id, local_run["embeddings_model_version"], "embeddings"),
    ]


def test_a_container_4xx_reaches_the_client_as_that_4xx_and_is_not_retried(local_run):
    retrying = openai.OpenAI(base_url=local_run["listening"] + "/v1", api_key=local_run["api_key"], max_retries=2)
    calls = model_calls(local_run)
    with pytest.raises(openai.BadRequestError) as raised:
        retrying.chat.completions.with_raw_response.create(
            model="local", messages=[{"role": "user", "content": "Too long an answer?"}], temperature=0, max_tokens=0
        )
    assert raised.value.status_code == 400
    assert "max_tokens" in raised.value.body["message"] and raised.value.body["type"] == "invalid_request_error"
    assert model_calls(local_run) == calls + 1  # the model ran once: neither the adapter nor the client retried


def model_calls(local_run) -> int:
    """How many times the local model server ran the model."""
    with urllib.request.urlopen(local_run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def test_the_embedding_model_is_published_by_content_and_served_at_its_version(client, local_run):
    """make serve publishes the model into its S3 with bin/model-publish's code and loads it
    back from the version's prefix: the version is the manifest's digest of the weights."""
    from cli.model_manifest import build_manifest
    from config.stages import STAGES
    from local_run.embeddings_server import packaged_embedding_model

    version = build_manifest(packaged_embedding_model()).version
    # The version dev pins is the one make serve publishes: the same weights, the same keys.
    assert local_run["embeddings_model_version"] == version == STAGES["dev"].embeddings.model_version
    listed = {m.id: m for m in client.models.list().data}
    assert listed["sentence-transformers/all-MiniLM-L6-v2"].model_extra["version"] == version
    # Publishing the same directory again into the running local S3 moves nothing.
    again = subprocess.run(
        [str(ROOT / "bin" / "model-publish"), str(packaged_embedding_model()), "--local", "--json",
         "--endpoint-url", local_run["results_store"], "--bucket", local_run["model_bucket"],
         "--prefix", local_run["model_prefix"]],
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["version"] == version and summary["uploaded_files"] == 0 and summary["uploaded_bytes"] == 0


def test_the_writers_ttl_binds_every_reader(client):
    """Stored with x-inference-cache-ttl: 1, an answer is not served two seconds later,
    not even to a reader that accepts any age up to the stage's default."""
    ask = dict(model="local", messages=[{"role": "user", "content": "Fresh for one second only."}], temperature=0)
    first = client.chat.completions.with_raw_response.create(**ask, extra_headers={"x-inference-cache-ttl": "1"})
    assert cache_status(first) == "MISS"
    time.sleep(2.2)
    assert cache_status(client.chat.completions.with_raw_response.create(**ask)) == "MISS"
    # Stored again by that miss with the default TTL; served once the edge's copy of the
    # expired object has aged out (its max-age, 1 s: CloudFront's copy lives as long).
    time.sleep(1.2)
    assert cache_status(client.chat.completions.with_raw_response.create(**ask)) == "HIT"


def test_a_request_longer_than_the_served_context_gets_vllms_400_and_is_not_cached(client, local_run):
    """The stage serves max_model_len tokens (16,384 on dev); prompt + max_tokens beyond it is
    vLLM's 400 (LMI 18 passes it on as a 500, which the adapter reads back), never cached."""
    from config.stages import stage

    limit = stage("dev").model.max_model_len
    ask = dict(model="local", messages=[{"role": "user", "content": "Too long?"}], temperature=0, max_tokens=limit)
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.with_raw_response.create(**ask)
        assert refused.value.status_code == 400
        assert refused.value.response.headers["x-inference-cache"] == "BYPASS"
        assert refused.value.body["message"].startswith(f"'max_tokens' or 'max_completion_tokens' is too large: {limit}.")
        assert f"maximum context length is {limit} tokens" in refused.value.body["message"]
    fits = client.chat.completions.with_raw_response.create(**{**ask, "max_tokens": 64})
    assert cache_status(fits) == "MISS"


@pytest.mark.parametrize("body", [
    b'{"model":"local","messages":[{"role":"user","content":"a\\ud800b"}],"temperature":0}',
    b'{"model":"local","messages":[{"role":"user","content":"hi"}],"temperature":0,"n":"abc"}',
], ids=["lone surrogate", "n not an int"])
def test_a_client_mistake_the_container_refuses_is_a_400_not_a_502(local_run, body):
    """These came back as 502 endpoint_error (a 5xx against the SLO) with a traceback."""
    request = urllib.request.Request(local_run["listening"] + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json", "x-api-key": local_run["api_key"]})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_rejected_request"
