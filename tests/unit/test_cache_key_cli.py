"""bin/cache-key through a real subprocess: the contract users script against."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.stages import DEFAULT_STAGE, STAGES
from lambdas import cache_decision as cd
from lambdas.contract import SETTINGS_ENV

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "bin" / "cache-key"
CHAT = "/v1/chat/completions"
GREEDY = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0}


def cli(*args: str, stdin: bytes = b"", python: str | None = sys.executable) -> subprocess.CompletedProcess:
    command = [python, str(CLI), *args] if python else [str(CLI), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", SETTINGS_ENV)}
    return subprocess.run(command, input=stdin, capture_output=True, cwd=ROOT, env=env, timeout=60)


def decisions(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def expected(body: bytes, path: str = CHAT, headers=None, stage: str = DEFAULT_STAGE, tenant: str | None = None,
             mac: bytes | None = None) -> dict:
    """What the command prints: the decision, and with a key what kind of key it is."""
    decision = cd.decide(path, headers or {}, body, STAGES[stage].edge_cache_settings(), tenant=tenant, mac=mac).as_dict()
    if decision["key"]:
        decision["key_kind"] = "deployed" if mac else "estimate"
    return decision


def test_single_request():
    body = json.dumps(GREEDY).encode()
    [out] = decisions(cli("--path", CHAT, stdin=body))
    assert set(out) == {"cacheable", "key", "reason", "error", "key_kind"}
    assert out == expected(body) and out["key_kind"] == "estimate"
    assert out["cacheable"] is True and len(out["key"]) == 64 and out["error"] is None


def test_single_request_error_object():
    [out] = decisions(cli("--path", CHAT, stdin=b'{"model": "m", "model": "n"}'))
    assert out["cacheable"] is False and out["key"] is None
    assert out["error"]["status"] == 400 and "duplicate" in out["error"]["message"]


def test_headers():
    body = json.dumps(GREEDY).encode()
    [plain] = decisions(cli("--path", CHAT, stdin=body))
    [no_store] = decisions(cli("--path", CHAT, "--header", "Cache-Control: no-store", stdin=body))
    [text] = decisions(cli("--path", CHAT, "--header", "Content-Type: text/plain", stdin=body))
    assert plain["cacheable"] and not no_store["cacheable"] and no_store["reason"] == "client no-store"
    assert text["error"]["status"] == 415


def test_stage_selects_settings():
    body = json.dumps(GREEDY).encode()
    [dev] = decisions(cli("--path", CHAT, "--stage", "dev", stdin=body))
    [staging_no_tenant] = decisions(cli("--path", CHAT, "--stage", "staging", "--header", "Authorization: Bearer sk-a", stdin=body))
    [staging] = decisions(cli("--path", CHAT, "--stage", "staging", "--tenant", "acme", stdin=body))
    assert dev == expected(body, stage="dev")
    # Tenant-scoped: the verified tenant scopes the key; an API key alone never does.
    assert staging_no_tenant["cacheable"] is False and "tenant" in staging_no_tenant["reason"]
    assert staging == expected(body, stage="staging", tenant="acme")
    assert staging["key"] != dev["key"]


def test_without_the_stage_secret_keys_are_estimates_and_with_it_the_deployed_keys(tmp_path):
    """A key is a MAC under the stage secret: nobody can name a stored answer from the request
    alone. Without the secret the command still serves hit-ratio estimates, and says so;
    with the local run's (or, with credentials, a stage's) it prints the keys the edge uses."""
    from cli.api_keys import LocalKeyStore, ensure_stage_secret
    from tests.stage_secret import MAC, STAGE_SECRET

    store = tmp_path / "api-keys.json"
    store.write_text(json.dumps({"stage-secret": STAGE_SECRET}))
    body = json.dumps(GREEDY).encode()
    [estimate] = decisions(cli("--path", CHAT, stdin=body))
    [deployed] = decisions(cli("--path", CHAT, "--local-keys", str(store), stdin=body))
    assert deployed == expected(body, mac=MAC) and deployed["key_kind"] == "deployed"
    assert estimate["key_kind"] == "estimate" and deployed["key"] != estimate["key"]
    payload = cd.canonical_payload(CHAT, {}, body, STAGES["dev"].edge_cache_settings())
    assert deployed["key"] == hmac.new(MAC, payload, "sha256").hexdigest()
    assert estimate["key"] == hashlib.sha256(payload).hexdigest()
    # Another secret (a rotation): every key changes.
    other = tmp_path / "other.json"
    ensure_stage_secret(LocalKeyStore(other))
    [rotated] = decisions(cli("--path", CHAT, "--local-keys", str(other), stdin=body))
    assert rotated["key"] not in (deployed["key"], estimate["key"])
    # No secret in the store: a one-line error, not a traceback.
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    refused = cli("--path", CHAT, "--local-keys", str(empty), stdin=body)
    assert refused.returncode == 2 and b"holds no stage secret" in refused.stderr and b"Traceback" not in refused.stderr


def test_settings_file(tmp_path):
    path = tmp_path / "cache_settings.json"
    path.write_text(STAGES["dev"].edge_cache_settings()._replace(model_version="next").to_json())
    body = json.dumps(GREEDY).encode()
    [out] = decisions(cli("--path", CHAT, "--settings", str(path), stdin=body))
    [dev] = decisions(cli("--path", CHAT, stdin=body))
    assert out["cacheable"] and out["key"] != dev["key"]


def test_canonical_shows_the_hashed_bytes():
    body = json.dumps(GREEDY).encode()
    result = cli("--path", CHAT, "--canonical", stdin=body)
    assert result.returncode == 0
    payload = result.stdout.rstrip(b"\n")
    assert hashlib.sha256(payload).hexdigest() == expected(body)["key"]


def _line(path: str, body: bytes | str, headers=None, b64: bool = False) -> str:
    record = {"path": path, "headers": headers or {}}
    if b64:
        record["body_b64"] = base64.b64encode(body).decode()
    else:
        record["body"] = body if isinstance(body, str) else body.decode()
    return json.dumps(record)


def test_jsonl_in_order_and_bad_lines_do_not_stop_it():
    greedy = json.dumps(GREEDY)
    reordered = json.dumps(dict(reversed(list(GREEDY.items()))), indent=2)
    lines = [
        _line(CHAT, greedy),
        "this is not json",
        _line(CHAT, b"\xff\xfe not utf-8", b64=True),
        json.dumps({"path": CHAT, "headers": {}, "body_b64": "***"}),
        json.dumps({"path": CHAT, "headers": {}}),
        "",
        json.dumps(["a list"]),
        _line("/v1/embeddings", json.dumps({"model": "e", "input": "x"}).encode(), b64=True),
        _line(CHAT, reordered, {"Cache-Control": "no-cache"}),
    ]
    out = decisions(cli("--jsonl", stdin=("\n".join(lines) + "\n").encode()))
    assert len(out) == len(lines)
    assert out[0] == expected(greedy.encode())
    for bad in (1, 3, 4, 5, 6):
        assert out[bad]["cacheable"] is False and out[bad]["reason"] == "bad input line"
        assert out[bad]["error"]["status"] == 400 and out[bad]["error"]["message"].startswith(f"line {bad + 1}:")
    assert out[2]["error"]["status"] == 400 and "UTF-8" in out[2]["error"]["message"]
    assert out[7]["cacheable"] and out[7]["reason"] == "embeddings"
    assert out[8]["key"] == out[0]["key"]


def test_jsonl_crlf_and_no_trailing_newline():
    greedy = json.dumps(GREEDY)
    out = decisions(cli("--jsonl", stdin=f"{_line(CHAT, greedy)}\r\n{_line(CHAT, greedy)}".encode()))
    assert len(out) == 2 and out[0] == out[1] == expected(greedy.encode())


def test_summary_numbers():
    def chat(content, **extra):
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra})

    lines = [
        _line(CHAT, chat("a")),  # new key
        _line(CHAT, chat("a").replace(",", ", ")),  # same key, other bytes: hit; byte-exact miss
        _line(CHAT, chat("a")),  # hit for both
        _line(CHAT, chat("a", n=1)),  # hit; byte-exact miss
        _line(CHAT, chat("b")),  # new key
        _line(CHAT, chat("b"), {"cache-control": "no-cache"}),  # cacheable, not looked up
        _line(CHAT, json.dumps({"model": "m", "messages": [{"role": "user", "content": "a"}]})),  # sampling
        _line(CHAT, "{"),  # invalid
        "garbage",  # bad line
    ]
    result = cli("--jsonl", "--summary", stdin=("\n".join(lines) + "\n").encode())
    assert result.returncode == 0, result.stderr.decode()
    [summary] = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert summary["stage"] == DEFAULT_STAGE
    assert (summary["requests"], summary["invalid"], summary["cacheable"]) == (9, 2, 6)
    assert (summary["distinct_keys"], summary["hits"], summary["hit_ratio"]) == (2, 3, round(3 / 9, 4))
    assert (summary["byte_exact_distinct_keys"], summary["byte_exact_hits"]) == (4, 1)
    assert summary["byte_exact_hit_ratio"] == round(1 / 9, 4)
    assert summary["reasons"]["sampling without seed"] == 1
    assert "hit ratio" in result.stderr.decode() and "byte-exact" in result.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        [],  # no --path
        ["--stage", "nope", "--path", CHAT],
        ["--summary", "--path", CHAT],
        ["--jsonl", "--path", CHAT],
        ["--path", CHAT, "--header", "no colon"],
        ["--path", CHAT, "--stage", "dev", "--settings", "x.json"],
        ["--path", CHAT, "--settings", "/nonexistent/settings.json"],
        ["--bogus"],
    ],
)
def test_misuse_exits_2(args):
    result = cli(*args, stdin=b"{}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == b""


@pytest.mark.skipif(not shutil.which("python3"), reason="no python3 on PATH")
def test_runs_as_an_executable_with_the_system_python():
    assert os.access(CLI, os.X_OK)
    assert CLI.read_text().startswith("#!/usr/bin/env python3\n")
    body = json.dumps(GREEDY).encode()
    [out] = decisions(cli("--path", CHAT, stdin=body, python=None))
    assert out == expected(body)
