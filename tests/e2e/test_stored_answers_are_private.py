"""Only the stage's own edge reads stored answers, tried as an outsider and as a tenant would,
on the local run: the real /_cache/* viewer-request function under Node.js in front of the
local S3, cache keys that are MACs under the local stage secret, its rotation."""

from __future__ import annotations

import hmac
import json
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

from config.stages import STAGES
from lambdas.contract import CACHE_READ_CONTEXT, RESULTS_PREFIX
from local_run.__main__ import RESULTS_BUCKET
from local_run.process import create_api_key, launched
from tests.conftest import ROOT
from tests.e2e.conftest import results_bucket

pytestmark = pytest.mark.e2e


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _secret(key_store) -> str:
    return json.loads(key_store.read_text())["stage-secret"]


def _credential(secret: str) -> str:
    return hmac.digest(secret.encode(), CACHE_READ_CONTEXT.encode(), "sha256").hex()


def _cache_key(*args: str, body: dict) -> str:
    result = subprocess.run([str(ROOT / "bin" / "cache-key"), "--path", "/v1/chat/completions", *args],
                            input=json.dumps(body).encode(), capture_output=True, timeout=60, check=True)
    return json.loads(result.stdout)["key"]


def test_a_stored_answer_is_read_by_the_edge_only(local_run, tmp_path):
    """After a MISS and a HIT, the stored object is in the results bucket; at /_cache/<key> it
    is refused (403) to a request with no credential, with a valid platform API key, with a
    guessed stage secret or read credential; the edge's own credential reads it."""
    client = openai.OpenAI(base_url=local_run["listening"] + "/v1", api_key=local_run["api_key"], max_retries=0)
    ask = dict(model="local", messages=[{"role": "user", "content": f"Private? {time.time()}"}], temperature=0)
    first = client.chat.completions.with_raw_response.create(**ask)
    second = client.chat.completions.with_raw_response.create(**ask)
    assert (first.headers["x-inference-cache"], second.headers["x-inference-cache"]) == ("MISS", "HIT")
    key = first.headers["x-inference-cache-key"]
    stored = results_bucket(local_run).get_object(Bucket=RESULTS_BUCKET, Key=f"{RESULTS_PREFIX}{key}")["Body"].read()
    url = f"{local_run['listening']}/{RESULTS_PREFIX}{key}"
    for headers in (
        {},
        {"authorization": f"Bearer {local_run['api_key']}"},
        {"x-api-key": local_run["api_key"]},
        {"x-inference-stage-secret": "guess", "x-inference-cache-read": "0" * 64},
        {"x-inference-cache-read": _secret(local_run["key_store"])},  # the secret is not the credential
    ):
        status, body = _get(url, headers)
        assert status == 403, headers
        assert stored not in body and json.loads(body)["error"]["code"] == "forbidden"
    assert _get(url, {"x-inference-cache-read": _credential(_secret(local_run["key_store"]))}) == (200, stored)
    # The key cannot be computed from the request alone: bin/cache-key without the secret
    # gives another key (an estimate), with the local run's secret the very key.
    # (The local run keys by the version of the model it published: its settings, not dev's.)
    settings = tmp_path / "cache_settings.json"
    settings.write_text(STAGES["dev"].edge_cache_settings()._replace(model_version=local_run["model_version"]).to_json())
    assert _cache_key("--settings", str(settings), body=ask) != key
    assert _cache_key("--settings", str(settings), "--local-keys", str(local_run["key_store"]), body=ask) == key


def test_a_rotated_secret_starts_a_fresh_cache_and_never_serves_a_stale_key(tmp_path):
    key_store = tmp_path / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        client = openai.OpenAI(base_url=started["listening"] + "/v1", api_key=create_api_key(key_store, "r")["key"],
                               max_retries=0)
        ask = dict(model="local", messages=[{"role": "user", "content": "Rotate me."}], temperature=0)
        before = [client.chat.completions.with_raw_response.create(**ask) for _ in range(2)]
        assert [r.headers["x-inference-cache"] for r in before] == ["MISS", "HIT"]
        old_key, old_secret = before[0].headers["x-inference-cache-key"], _secret(key_store)
        rotated = subprocess.run([str(ROOT / "bin" / "api-keys"), "--local", "--key-store-file", str(key_store),
                                  "rotate-secret"], capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0 and "every cache key changes" in rotated.stdout
        after = [client.chat.completions.with_raw_response.create(**ask) for _ in range(2)]
        assert [r.headers["x-inference-cache"] for r in after] == ["MISS", "HIT"]
        new_key = after[0].headers["x-inference-cache-key"]
        assert new_key != old_key
        # A new generation (its own `created`), the same greedy answer, then replayed whole.
        assert after[0].parse().choices[0].message.content == before[0].parse().choices[0].message.content
        assert after[1].parse().model_dump() == after[0].parse().model_dump()
        # The stale credential reads nothing any more, not even the old answer.
        assert _get(f"{started['listening']}/{RESULTS_PREFIX}{old_key}",
                    {"x-inference-cache-read": _credential(old_secret)})[0] == 403


def test_tenant_b_cannot_tell_whether_tenant_a_asked(tmp_path):
    """On a tenant-scoped stage (staging), B asking what A asked gets what B asking a new
    question gets: a MISS from a model call of its own, the same headers, never A's answer."""
    key_store = tmp_path / "api-keys.json"
    with launched("--stage", "staging", "--key-store-file", str(key_store)) as started:
        base = started["listening"] + "/v1"
        a = openai.OpenAI(base_url=base, api_key=create_api_key(key_store, "tenant-a")["key"], max_retries=0)
        b = openai.OpenAI(base_url=base, api_key=create_api_key(key_store, "tenant-b")["key"], max_retries=0)

        def model_calls() -> int:
            with urllib.request.urlopen(started["model_server"] + "/stats", timeout=5) as answer:
                return json.loads(answer.read())["invocations"]

        asked = dict(model="local", messages=[{"role": "user", "content": "What did A ask?"}], temperature=0)
        fresh = dict(model="local", messages=[{"role": "user", "content": "Nobody asked this."}], temperature=0)
        assert a.chat.completions.with_raw_response.create(**asked).headers["x-inference-cache"] == "MISS"
        assert a.chat.completions.with_raw_response.create(**asked).headers["x-inference-cache"] == "HIT"
        calls = model_calls()
        probe = b.chat.completions.with_raw_response.create(**asked)
        control = b.chat.completions.with_raw_response.create(**fresh)
        assert model_calls() == calls + 2  # both ran on the model: B's probe found nothing of A's
        for answer in (probe, control):
            assert answer.headers["x-inference-cache"] == "MISS" and "age" not in answer.headers
        assert sorted(probe.headers.keys()) == sorted(control.headers.keys())
