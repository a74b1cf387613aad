"""API keys end to end over the local run, with the openai client: the real viewer-request
function (under Node.js) in front of the real edge handler and origin adapter."""

from __future__ import annotations

import openai
import pytest

from cli.api_keys import LocalKeyStore, revoke_key, rotate_key
from local_run.process import create_api_key, launched

pytestmark = pytest.mark.e2e

ASK = dict(model="local", messages=[{"role": "user", "content": "Which tenant am I?"}], temperature=0)


def client(local_run, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_run["listening"] + "/v1", api_key=key, max_retries=0)


def status(raw) -> str:
    return raw.headers.get("x-inference-cache")


def test_no_key_is_refused_before_anything_runs(local_run):
    with pytest.raises(openai.AuthenticationError) as raised:  # no Authorization header at all
        client(local_run, "unused").chat.completions.create(**ASK, extra_headers={"Authorization": openai.Omit()})
    assert raised.value.status_code == 401
    assert raised.value.body["code"] == "invalid_api_key"
    assert raised.value.response.headers["www-authenticate"] == "Bearer"
    assert raised.value.response.headers["x-inference-cache"] == "BYPASS"


def test_unknown_and_revoked_keys_are_401_and_a_new_key_works_without_a_restart(local_run):
    with pytest.raises(openai.AuthenticationError):
        client(local_run, "sk-ic-not-a-key-the-platform-issued").embeddings.create(model="m", input="x")
    created = create_api_key(local_run["key_store"], "acme")
    answered = client(local_run, created["key"]).embeddings.with_raw_response.create(model="m", input="a new key")
    assert answered.http_response.status_code == 200
    revoke_key(LocalKeyStore(local_run["key_store"]), created["key_id"])
    with pytest.raises(openai.AuthenticationError) as raised:
        client(local_run, created["key"]).embeddings.create(model="m", input="a new key")
    assert "revoked" in raised.value.body["message"]


@pytest.fixture(scope="module")
def scoped_run(tmp_path_factory):
    """The staging stage: caches scoped per tenant."""
    key_store = tmp_path_factory.mktemp("staging-keys") / "api-keys.json"
    with launched("--stage", "staging", "--key-store-file", str(key_store)) as started:
        yield {**started, "key_store": key_store}


def test_tenants_never_share_an_answer_and_a_rotated_key_keeps_its_tenants_cache(scoped_run):
    a = create_api_key(scoped_run["key_store"], "tenant-a")
    b = create_api_key(scoped_run["key_store"], "tenant-b")
    assert status(client(scoped_run, a["key"]).chat.completions.with_raw_response.create(**ASK)) == "MISS"
    assert status(client(scoped_run, a["key"]).chat.completions.with_raw_response.create(**ASK)) == "HIT"
    # Tenant B asks the very same question: never served tenant A's stored answer.
    assert status(client(scoped_run, b["key"]).chat.completions.with_raw_response.create(**ASK)) == "MISS"
    # A forged tenant header changes nothing: the function sets the verified tenant.
    forged = client(scoped_run, b["key"]).chat.completions.with_raw_response.create(
        **ASK, extra_headers={"x-inference-tenant": "tenant-a"}
    )
    assert status(forged) == "HIT"  # tenant B's own entry, stored by the request above
    rotated = rotate_key(LocalKeyStore(scoped_run["key_store"]), a["key_id"])
    assert status(client(scoped_run, rotated["key"]).chat.completions.with_raw_response.create(**ASK)) == "HIT"
    with pytest.raises(openai.AuthenticationError):
        client(scoped_run, a["key"]).chat.completions.create(**ASK)
