"""Only the stage's own edge function reads stored answers: the /_cache/* viewer-request
function (lambdas/viewer_request/cache_read_check.js) run for real under Node.js, with a
real key store file behind cf.kvs(), written with bin/api-keys' own helpers."""

from __future__ import annotations

import hmac
import json

import pytest

from cli.api_keys import LocalKeyStore, ensure_stage_secret, key_hash, key_record, rotate_stage_secret
from lambdas.contract import CACHE_READ_CONTEXT, CACHE_READ_HEADER
from local_run.viewer_request_host import (
    CACHE_READ_CHECK,
    ViewerRequestFunction,
    find_node,
    is_response,
    viewer_request_event,
)

API_KEY = "sk-ic-" + "A" * 43
PATH = "/_cache/" + "0" * 64


def credential(secret: str) -> str:
    return hmac.digest(secret.encode(), CACHE_READ_CONTEXT.encode(), "sha256").hex()


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps({key_hash(API_KEY): key_record("k_acme", "acme")}))
    return path


@pytest.fixture
def check(store):
    node = find_node()
    assert node, "Node.js is needed to run the CloudFront Function (make installs one into .tools/)"
    function = ViewerRequestFunction(CACHE_READ_CHECK, store, node=node)
    yield function
    function.close()


def _get(check, headers: dict) -> dict:
    return check.handle(viewer_request_event("GET", PATH, headers))


def _forbidden(result: dict) -> None:
    assert is_response(result) and result["statusCode"] == 403, result
    error = json.loads(result["body"]["data"])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "forbidden"
    assert result["headers"]["cache-control"] == {"value": "no-store"}


def test_the_edges_lookup_passes_without_its_credential_going_further(check, store):
    secret = ensure_stage_secret(LocalKeyStore(store))
    result = _get(check, {CACHE_READ_HEADER: credential(secret), "user-agent": "inference-cache-edge/1"})
    assert not is_response(result) and result["uri"] == PATH
    assert CACHE_READ_HEADER not in result["headers"]  # not on to S3, not in any log


@pytest.mark.parametrize("headers", [
    {},
    {CACHE_READ_HEADER: "0" * 64},
    {CACHE_READ_HEADER: ""},
    {"authorization": f"Bearer {API_KEY}"},  # a valid platform API key reads nothing here
    {"x-api-key": API_KEY},
], ids=["none", "wrong", "empty", "bearer API key", "x-api-key"])
def test_anyone_but_the_edge_gets_403(check, store, headers):
    ensure_stage_secret(LocalKeyStore(store))
    _forbidden(_get(check, headers))


def test_the_secret_itself_or_a_repeated_credential_is_not_the_credential(check, store):
    secret = ensure_stage_secret(LocalKeyStore(store))
    _forbidden(_get(check, {CACHE_READ_HEADER: secret}))
    _forbidden(_get(check, {CACHE_READ_HEADER: [credential(secret), credential(secret)]}))


def test_after_a_rotation_the_old_credential_is_refused(check, store):
    keys = LocalKeyStore(store)
    old = ensure_stage_secret(keys)
    assert not is_response(_get(check, {CACHE_READ_HEADER: credential(old)}))
    rotate_stage_secret(keys)
    new = ensure_stage_secret(keys)
    assert new != old
    _forbidden(_get(check, {CACHE_READ_HEADER: credential(old)}))
    assert not is_response(_get(check, {CACHE_READ_HEADER: credential(new)}))


def test_a_store_without_a_secret_lets_nobody_read(check, store):
    _forbidden(_get(check, {CACHE_READ_HEADER: credential("")}))
    _forbidden(_get(check, {CACHE_READ_HEADER: "0" * 64}))
