"""The API key check (lambdas/viewer_request/api_key_check.js) run for real: the
JavaScript file itself under Node.js, through local_run/cloudfront_function_host.mjs,
driven from Python. Nothing is mocked: the key store is a real JSON file behind the
host's cf.kvs() stand-in, written with the same helpers that bin/api-keys uses."""

from __future__ import annotations

import copy
import hashlib
import json
import threading

import pytest

from cli.api_keys import LocalKeyStore, create_key, key_hash, key_record, revoke_key
from lambdas.contract import (
    CACHE_READ_CONTEXT,
    CACHE_READ_HEADER,
    STAGE_SECRET_HEADER,
    STAGE_SECRET_STORE_KEY,
    TENANT_HEADER,
)
from local_run.viewer_request_host import (
    API_KEY_CHECK,
    FunctionExecutionError,
    ViewerRequestFunction,
    find_node,
    is_response,
    viewer_request_event,
)
from tests.stage_secret import STAGE_SECRET

ACME_KEY = "sk-ic-" + "A" * 43
BETA_KEY = "sk-ic-beta_key-0123456789"
REVOKED_KEY = "sk-ic-revoked-0123456789"
DISABLED_KEY = "sk-ic-disabled-0123456789"
UNKNOWN_KEY = "sk-ic-unknown-0123456789"
CHAT = "/v1/chat/completions"


def _write_store(path, entries: dict[str, str]) -> None:
    path.write_text(json.dumps(entries))


@pytest.fixture(scope="module")
def node() -> str:
    found = find_node()
    assert found, "Node.js is needed to run the CloudFront Function (make installs one into .tools/)"
    return found


@pytest.fixture(scope="module")
def check(node, tmp_path_factory):
    store = tmp_path_factory.mktemp("kvs") / "api-keys.json"
    _write_store(store, {
        key_hash(ACME_KEY): key_record("k_acme", "acme"),
        key_hash(BETA_KEY): key_record("k_beta", "beta.team-2"),
        key_hash(REVOKED_KEY): key_record("k_old", "acme", "revoked"),
        key_hash(DISABLED_KEY): key_record("k_off", "acme", "disabled"),
    })
    function = ViewerRequestFunction(API_KEY_CHECK, store, node=node)
    yield function
    function.close()


def _call(check, headers, uri=CHAT) -> dict:
    return check.handle(viewer_request_event("POST", uri, headers))


def _error(result: dict, status: int = 401) -> dict:
    """The OpenAI-shaped error body of a generated response, after checking its envelope."""
    assert is_response(result), result
    assert result["statusCode"] == status
    headers = result["headers"]
    assert headers["content-type"] == {"value": "application/json"}
    assert headers["x-inference-cache"] == {"value": "BYPASS"}
    assert headers["cache-control"] == {"value": "no-store"}
    assert result["body"]["encoding"] == "text"
    body = json.loads(result["body"]["data"])
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] is None
    return body["error"]


def _unauthorized(result: dict) -> str:
    error = _error(result, 401)
    assert result["statusDescription"] == "Unauthorized"
    assert result["headers"]["www-authenticate"] == {"value": "Bearer"}
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    return error["message"]


# --------------------------------------------------------------------------- keys that pass


def test_bearer_key_passes_with_the_verified_tenant_and_nothing_else_changed(check):
    event = viewer_request_event("POST", CHAT, {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json",
                                                "Cache-Control": "no-cache"}, querystring="a=1")
    sent = copy.deepcopy(event["request"])
    result = check.handle(event)
    assert not is_response(result)
    assert result["headers"].pop("x-inference-tenant") == {"value": "acme"}
    assert result == sent  # Authorization, other headers, method, uri, query: untouched


def test_x_api_key_passes(check):
    result = _call(check, {"x-api-key": BETA_KEY})
    assert result["headers"]["x-inference-tenant"] == {"value": "beta.team-2"}
    assert result["headers"]["x-api-key"] == {"value": BETA_KEY}


@pytest.mark.parametrize("authorization", [f"bearer {ACME_KEY}", f"BEARER\t{ACME_KEY}", f"Bearer   {ACME_KEY}  ",
                                           f"  Bearer {ACME_KEY}"])
def test_bearer_scheme_is_case_insensitive_and_surrounding_whitespace_is_ignored(check, authorization):
    assert _call(check, {"authorization": authorization})["headers"]["x-inference-tenant"] == {"value": "acme"}


@pytest.mark.parametrize("pad", ["\u00a0", "\u2003", "\u000b", "\u000c", "\ufeff"])
def test_only_space_and_tab_surround_a_key(check, pad):
    """RFC 9110 OWS is SP and HTAB; JavaScript's trim() also drops NBSP, em spaces, VT, FF
    and the BOM. A key padded with them is malformed, never read as the key."""
    for headers in ({"authorization": f"Bearer {ACME_KEY}{pad}"}, {"x-api-key": f"{pad}{ACME_KEY}"}):
        assert "Malformed" in _unauthorized(_call(check, headers))


def test_another_authorization_scheme_falls_back_to_x_api_key(check):
    result = _call(check, {"authorization": "Basic dXNlcjpwYXNz", "x-api-key": ACME_KEY})
    assert result["headers"]["x-inference-tenant"] == {"value": "acme"}
    assert result["headers"]["authorization"] == {"value": "Basic dXNlcjpwYXNz"}


def test_bearer_wins_over_x_api_key(check):
    """The same order as the cache's tenant scope: a wrong Bearer key is not rescued by x-api-key."""
    assert "Incorrect" in _unauthorized(_call(check, {"authorization": f"Bearer {UNKNOWN_KEY}", "x-api-key": ACME_KEY}))
    result = _call(check, {"authorization": f"Bearer {BETA_KEY}", "x-api-key": ACME_KEY})
    assert result["headers"]["x-inference-tenant"] == {"value": "beta.team-2"}


def test_forged_tenant_header_is_replaced_by_the_verified_one(check):
    result = _call(check, {"authorization": f"Bearer {ACME_KEY}", "x-inference-tenant": ["beta.team-2", "root"]})
    assert result["headers"]["x-inference-tenant"] == {"value": "acme"}  # no multiValue left over


def test_header_names_arrive_lowercase_as_cloudfront_presents_them(check):
    event = viewer_request_event("POST", CHAT, {"X-API-Key": ACME_KEY, "X-Inference-Tenant": "root"})
    assert set(event["request"]["headers"]) == {"x-api-key", "x-inference-tenant"}
    assert check.handle(event)["headers"]["x-inference-tenant"] == {"value": "acme"}


def test_store_key_is_the_sha256_hex_of_the_api_key():
    assert key_hash(ACME_KEY) == hashlib.sha256(ACME_KEY.encode()).hexdigest()
    assert len(key_hash(ACME_KEY)) == 64 and key_hash(ACME_KEY) == key_hash(ACME_KEY).lower()


# --------------------------------------------------------------------------- keys that do not


@pytest.mark.parametrize("headers", [{}, {"x-api-key": ""}, {"authorization": ""}, {"authorization": "   "},
                                     {"content-type": "application/json"}])
def test_missing_key_is_401(check, headers):
    assert "Missing API key" in _unauthorized(_call(check, headers))


@pytest.mark.parametrize("headers", [
    {"authorization": "Basic dXNlcjpwYXNz"},
    {"authorization": "Bearer"},
    {"authorization": "Bearer    "},
    {"authorization": f"Bearer {ACME_KEY} extra"},
    {"authorization": f"Bearer {ACME_KEY},{ACME_KEY}"},
    {"authorization": f"Bearer{ACME_KEY}"},
    {"authorization": f"Token {ACME_KEY}"},
    {"authorization": "Bearer sk-ic-ünïcode"},
    {"authorization": "Bearer " + "a" * 257},
    {"x-api-key": f"{ACME_KEY} {ACME_KEY}"},
    {"x-api-key": "sk-ic-\"quoted\""},
], ids=lambda h: repr(h)[:40])
def test_malformed_key_header_is_401(check, headers):
    assert "Malformed" in _unauthorized(_call(check, headers))


@pytest.mark.parametrize("name", ["authorization", "x-api-key"])
def test_repeated_key_header_is_401_even_when_both_copies_are_valid(check, name):
    value = f"Bearer {ACME_KEY}" if name == "authorization" else ACME_KEY
    event = viewer_request_event("POST", CHAT, {name: [value, value]})
    assert event["request"]["headers"][name]["multiValue"] == [{"value": value}, {"value": value}]
    assert "Malformed" in _unauthorized(check.handle(event))


def test_unknown_key_is_401_and_never_echoed(check):
    result = _call(check, {"authorization": f"Bearer {UNKNOWN_KEY}"})
    assert _unauthorized(result) == "Incorrect API key provided."
    assert UNKNOWN_KEY not in json.dumps(result)


def test_revoked_key_is_401(check):
    assert _unauthorized(_call(check, {"authorization": f"Bearer {REVOKED_KEY}"})) == "This API key has been revoked."


def test_key_in_any_status_but_active_is_401(check):
    assert _unauthorized(_call(check, {"x-api-key": DISABLED_KEY})) == "This API key is not active."


def test_401_body_is_the_openai_error_shape(check):
    result = _call(check, {})
    assert json.loads(result["body"]["data"]) == {"error": {
        "message": "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    assert set(result) == {"statusCode", "statusDescription", "headers", "body"}  # a response: nothing forwarded


# --------------------------------------------------------------------------- the key store


@pytest.mark.parametrize("content", ["{not json", '["a list"]', json.dumps({"x": {"not": "a string"}})])
def test_unreadable_key_store_fails_closed_with_503(node, tmp_path, content):
    store = tmp_path / "api-keys.json"
    store.write_text(content)
    with ViewerRequestFunction(API_KEY_CHECK, store, node=node) as check:
        result = _call(check, {"authorization": f"Bearer {ACME_KEY}"})
        error = _error(result, 503)
        assert error == {"message": "The API key could not be checked; retry shortly.", "type": "server_error",
                         "param": None, "code": "api_key_store_unavailable"}
        assert "www-authenticate" not in result["headers"]
        # A request without a key is still refused as such: no store read is needed.
        assert "Missing" in _unauthorized(_call(check, {}))


@pytest.mark.parametrize("value", ["not json", json.dumps({"status": "active"}),
                                   json.dumps({"tenant": "a b", "status": "active"}), json.dumps(["acme"])])
def test_broken_key_record_fails_closed_with_503(node, tmp_path, value):
    store = tmp_path / "api-keys.json"
    _write_store(store, {key_hash(ACME_KEY): value})
    with ViewerRequestFunction(API_KEY_CHECK, store, node=node) as check:
        assert _error(_call(check, {"x-api-key": ACME_KEY}), 503)["code"] == "api_key_store_unavailable"


def test_keys_added_and_revoked_while_the_host_runs_take_effect_without_restart(node, tmp_path):
    path = tmp_path / "local" / "api-keys.json"  # not there yet: a store with no keys
    store = LocalKeyStore(path)
    with ViewerRequestFunction(API_KEY_CHECK, path, node=node) as check:
        assert "Missing" in _unauthorized(_call(check, {}))
        created = create_key(store, "acme")
        headers = {"authorization": f"Bearer {created['key']}"}
        assert _call(check, headers)["headers"]["x-inference-tenant"] == {"value": "acme"}
        revoke_key(store, created["key_id"])
        assert "revoked" in _unauthorized(_call(check, headers))
        path.unlink()
        assert "Incorrect" in _unauthorized(_call(check, headers))


def test_concurrent_callers_each_get_their_own_answer(check):
    outcomes = {ACME_KEY: "acme", BETA_KEY: "beta.team-2", UNKNOWN_KEY: None}
    failures = []

    def caller(key):
        for _ in range(30):
            result = _call(check, {"x-api-key": key})
            got = None if is_response(result) else result["headers"]["x-inference-tenant"]["value"]
            if got != outcomes[key]:
                failures.append((key, got))

    threads = [threading.Thread(target=caller, args=(k,)) for k in outcomes for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


# --------------------------------------------------------------------------- CloudFront Functions limits


def test_function_file_is_within_the_10_kb_function_size_quota():
    assert len(API_KEY_CHECK.read_bytes()) <= 10 * 1024


def test_host_refuses_modules_the_runtime_does_not_offer(node, tmp_path):
    function = tmp_path / "f.js"
    function.write_text("import fs from 'fs';\nasync function handler(event) { return event.request; }\n")
    with ViewerRequestFunction(function, tmp_path / "kvs.json", node=node) as host:
        with pytest.raises(RuntimeError, match="module 'fs' is not offered"):
            host.handle(viewer_request_event("GET", "/"))


def test_node_globals_are_absent_as_at_the_edge_and_errors_surface(node, tmp_path):
    function = tmp_path / "f.js"
    function.write_text("async function handler(event) { return process.env; }\n")
    with ViewerRequestFunction(function, tmp_path / "kvs.json", node=node) as host:
        with pytest.raises(FunctionExecutionError, match="process is not defined"):
            host.handle(viewer_request_event("GET", "/"))
        # The host survives a failing call.
        with pytest.raises(FunctionExecutionError):
            host.handle(viewer_request_event("GET", "/"))


def test_event_builder_shapes_repeats_as_cloudfront_does():
    """The local run turns HTTP requests into events with this: repeats become multiValue."""
    request = viewer_request_event("GET", "/v1/models", {"Accept": "a", "accept": "b"}, querystring="q=1&q=2&r=")["request"]
    assert request["headers"] == {"accept": {"value": "a", "multiValue": [{"value": "a"}, {"value": "b"}]}}
    assert request["querystring"] == {"q": {"value": "1", "multiValue": [{"value": "1"}, {"value": "2"}]},
                                      "r": {"value": ""}}


# -- the local front remembers verdicts (local_run/front.py KeyCheckVerdicts) ---------------

def test_remembered_verdicts_hold_only_for_the_key_store_they_were_given_against(node, tmp_path):
    """The local front asks the real JavaScript once per event and key store version: the
    same event against the same store gets the same verdict; a revoked key is refused at
    once (the file changed: every verdict forgotten); a verdict the function gave while
    the store changed under it is not kept."""
    from local_run.front import KeyCheckVerdicts, viewer_request_identity

    keys = LocalKeyStore(tmp_path / "api-keys.json")
    issued = create_key(keys, "acme")
    verdicts = KeyCheckVerdicts(keys.path)
    with ViewerRequestFunction(API_KEY_CHECK, keys.path, node=node) as function:
        headers = {"authorization": f"Bearer {issued['key']}"}
        event, request = viewer_request_event("POST", CHAT, headers), viewer_request_identity("POST", CHAT, "", headers)
        remembered, version = verdicts.get(request)
        assert remembered is None
        verdict = function.handle(event)
        verdicts.put(request, verdict, version)
        assert verdicts.get(request)[0] == verdict and verdict["headers"]["x-inference-tenant"]["value"] == "acme"
        other_key = viewer_request_identity("POST", CHAT, "", {"authorization": f"Bearer {issued['key']}x"})
        assert verdicts.get(other_key)[0] is None  # another request: the function decides it
        revoke_key(keys, issued["key_id"])
        assert verdicts.get(request)[0] is None  # the store changed: ask the function again
        assert function.handle(event)["statusCode"] == 401
        # A verdict given against the store before a change is never kept under the new one.
        _, before = verdicts.get(request)
        other = create_key(keys, "beta")  # the store changes while the (old) verdict is computed
        verdicts.put(request, verdict, before)
        assert verdicts.get(request)[0] is None
        assert other["tenant"] == "beta"


def test_the_function_is_deterministic_so_its_verdicts_may_be_remembered():
    """What remembering verdicts rests on: the function reads nothing but its event and the
    key store (no clock, no randomness, no state kept between runs)."""
    source = API_KEY_CHECK.read_text()
    for word in ("Date", "Math.random", "crypto.randomBytes", "globalThis", "setTimeout"):
        assert word not in source
    # Module-level bindings are constants: nothing carries over from one request to the next.
    assert not [line for line in source.splitlines() if line.startswith(("let ", "var "))]


# --------------------------------------------------------------------------- the stage secret


@pytest.fixture(scope="module")
def check_with_secret(node, tmp_path_factory):
    store = tmp_path_factory.mktemp("kvs-secret") / "api-keys.json"
    _write_store(store, {key_hash(ACME_KEY): key_record("k_acme", "acme"), "stage-secret": STAGE_SECRET})
    function = ViewerRequestFunction(API_KEY_CHECK, store, node=node)
    yield function
    function.close()


def test_a_request_let_through_carries_the_stage_secret_for_the_edge(check_with_secret):
    result = _call(check_with_secret, {"authorization": f"Bearer {ACME_KEY}"})
    assert result["headers"][STAGE_SECRET_HEADER] == {"value": STAGE_SECRET}


@pytest.mark.parametrize("forged", ["my-own-secret", ["a", "b"]])
def test_a_viewers_own_stage_secret_header_never_reaches_the_edge(check, check_with_secret, forged):
    """Replaced by the store's secret, or removed when the store holds none; a refused
    request is answered before anything else, the forged value never echoed."""
    headers = {"authorization": f"Bearer {ACME_KEY}", STAGE_SECRET_HEADER: forged}
    assert _call(check_with_secret, headers)["headers"][STAGE_SECRET_HEADER] == {"value": STAGE_SECRET}
    assert STAGE_SECRET_HEADER not in _call(check, headers)["headers"]
    refused = _call(check_with_secret, {STAGE_SECRET_HEADER: forged})
    assert is_response(refused) and "my-own-secret" not in json.dumps(refused)


def test_the_functions_names_are_the_contracts():
    """The JavaScript cannot import the contract: its literals are held equal to it here."""
    from local_run.viewer_request_host import CACHE_READ_CHECK

    check_code, read_code = API_KEY_CHECK.read_text(), CACHE_READ_CHECK.read_text()
    assert f"const SECRET_HEADER = '{STAGE_SECRET_HEADER}';" in check_code
    assert f"const TENANT_HEADER = '{TENANT_HEADER}';" in check_code
    for code in (check_code, read_code):
        assert f"const SECRET_KEY = '{STAGE_SECRET_STORE_KEY}';" in code
    assert f"const CREDENTIAL_HEADER = '{CACHE_READ_HEADER}';" in read_code
    assert f"const CONTEXT = '{CACHE_READ_CONTEXT}';" in read_code
