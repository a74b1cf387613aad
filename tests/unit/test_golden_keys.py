"""Golden keys (tests/unit/golden_keys.py): every pinned request still gets its pinned key
and canonical payload, at the edge handler too; a change of keys needs a new KEY_FORMAT,
its line in docs/cache-key.md, and a deliberate regeneration."""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

import pytest

from lambdas import cache_decision
from local_run.events import origin_request_event
from tests.stage_secret import MAC, WITH_SECRET
from tests.unit import golden_keys

PINNED = json.loads(golden_keys.FIXTURE.read_text(encoding="utf-8"))
REGENERATE = ".venv/bin/python -m tests.unit.golden_keys --write"
DOC = Path(__file__).resolve().parents[2] / "docs" / "cache-key.md"


def test_the_fixture_is_of_the_current_key_format():
    assert PINNED["key_format"] == cache_decision.KEY_FORMAT, (
        f"KEY_FORMAT is now {cache_decision.KEY_FORMAT!r}: regenerate the golden keys with {REGENERATE}"
    )
    assert PINNED["settings"] == golden_keys.PINNED_SETTINGS


def test_the_fixture_holds_every_case_as_sent():
    assert [case["name"] for case in PINNED["cases"]] == list(golden_keys.CASES)
    for case in PINNED["cases"]:
        route, body, headers, tenant = golden_keys.CASES[case["name"]]
        assert (case["route"], case["body"].encode(), case["headers"], case["tenant"]) == (
            route, golden_keys.body_bytes(body), headers, tenant)


def test_the_cases_cover_every_route_scope_stream_and_long_text_kind():
    payloads = [case["canonical_payload"] for case in PINNED["cases"]]
    for route in golden_keys.PINNED_SETTINGS["routes"]:
        cases = [case for case in PINNED["cases"] if case["route"] == route]
        assert {case["tenant"] is not None for case in cases} == {False, True}, route  # scoped and not
        assert {",true,{" in case["canonical_payload"] for case in cases} == {False, True}, route  # stream and not
    assert any("\x00l\x00" in p for p in payloads) and any("\x00u\x00" in p for p in payloads)  # both long-text kinds
    assert {case["body"].split('"', 2)[1] for case in PINNED["cases"] if case["route"] == "/invocations"} >= {
        "inputs", "prompt", "messages"}


@pytest.mark.parametrize("case", PINNED["cases"], ids=[case["name"] for case in PINNED["cases"]])
def test_every_pinned_request_keeps_its_key_and_canonical_payload(case):
    route, body, headers, tenant = golden_keys.CASES[case["name"]]
    settings = golden_keys.settings(tenant_scoped=tenant is not None)
    raw = golden_keys.body_bytes(body)
    cache_decision._KEY_HEADS.clear()  # the key's head written afresh, as on a cold start, then reused
    decision = cache_decision.decide(route, headers, raw, settings, tenant=tenant, mac=MAC)
    assert cache_decision.decide(route, headers, raw, settings, tenant=tenant, mac=MAC).key == decision.key
    payload = cache_decision.canonical_payload(route, headers, raw, settings, tenant=tenant)
    changed = f"the key of {case['name']!r} changed: a new KEY_FORMAT, its line in docs/cache-key.md, then {REGENERATE}"
    assert payload == case["canonical_payload"].encode("latin-1"), changed
    assert (decision.key, decision.reason) == (case["key"], case["reason"]), changed
    assert hmac.digest(MAC, payload, "sha256").hex() == decision.key  # the key is the payload's MAC


@pytest.mark.parametrize("case", PINNED["cases"], ids=[case["name"] for case in PINNED["cases"]])
def test_the_edge_handler_forwards_the_pinned_key(load_edge_handler, case):
    """The key the edge forwards on a miss (its lookup refused: nothing listens on port 9)."""
    tenant = case["tenant"]
    settings = {**golden_keys.settings(tenant_scoped=tenant is not None)._asdict()}
    edge = load_edge_handler("http://127.0.0.1:9", **{k: settings[k] for k in golden_keys.PINNED_SETTINGS},
                             tenant_scoped=tenant is not None)
    headers = {**case["headers"], **WITH_SECRET, **({"x-inference-tenant": tenant} if tenant else {})}
    request = edge.handler(origin_request_event(body=case["body"].encode(), headers=headers, uri=case["route"]), None)
    assert request["headers"]["x-inference-cache-key"][0]["value"] == case["key"]


def test_write_refuses_to_move_pinned_keys_under_the_same_format(tmp_path, monkeypatch, capsys):
    fixture = tmp_path / "golden_keys.json"
    monkeypatch.setattr(golden_keys, "FIXTURE", fixture)
    tampered = json.loads(json.dumps(PINNED))
    tampered["cases"][3]["key"] = "0" * 64
    fixture.write_text(json.dumps(tampered))
    assert golden_keys.main(["--write"]) == 1
    assert "same KEY_FORMAT" in capsys.readouterr().err and json.loads(fixture.read_text()) == tampered
    # A new format may move every key; new cases under the same format may be added.
    tampered["key_format"] = "inference-cache-key/0"
    fixture.write_text(json.dumps(tampered))
    assert golden_keys.main(["--write"]) == 0 and json.loads(fixture.read_text()) == PINNED
    fewer = {**PINNED, "cases": PINNED["cases"][:-1]}
    fixture.write_text(json.dumps(fewer))
    assert golden_keys.main(["--write"]) == 0 and json.loads(fixture.read_text()) == PINNED


def test_every_key_format_has_its_line_in_the_docs():
    section = DOC.read_text().split("## Key formats", 1)[1].split("\n## ", 1)[0]
    formats = re.findall(r"^- `(inference-cache-key/\d+)`: \S", section, flags=re.M)
    assert formats and formats[-1] == cache_decision.KEY_FORMAT
    assert len(formats) == len(set(formats)) == int(cache_decision.KEY_FORMAT.rsplit("/", 1)[1])
