"""bin/smoke's own edges, without a local run: one-line errors when it cannot run (never a
traceback), the stage's domain as its target, and the Server-Timing table and check for
whatever step names the answers carry. Its steps against a running stage:
tests/e2e/test_smoke.py."""

from __future__ import annotations

import argparse
import os
import subprocess

import httpx2
import pytest

from cli.smoke import API_KEY_ENV, FAIL, OK, Answer, Smoke, _target, run_steps, step_server_timing, timing_table
from config.stages import STAGES
from local_run.process import free_port
from tests.conftest import ROOT


def smoke(*args: str, key: str | None = "k_test") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if key is not None:
        env[API_KEY_ENV] = key
    return subprocess.run([str(ROOT / "bin" / "smoke"), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("args", "key", "error"),
    [
        (lambda: ["--url", f"http://127.0.0.1:{free_port()}"], "k_test",
         "cannot reach http://127.0.0.1:{port}: connection refused (nothing listens there)"),
        (lambda: ["--url", "https://no-such-host.invalid"], "k_test",
         "cannot reach https://no-such-host.invalid: DNS cannot resolve the name"),
        (lambda: ["--stage", "dev"], None,
         f"no API key: set {API_KEY_ENV} (or pass --key); bin/api-keys --stage dev create --tenant smoke makes one"),
        (lambda: ["--url", "http://127.0.0.1:1"], None,
         f"no API key: set {API_KEY_ENV} (or pass --key); bin/api-keys --local create --tenant smoke makes one"),
        (lambda: ["--stage", "nope"], "k_test", "unknown stage 'nope'"),
        (lambda: ["--url", "127.0.0.1:8080"], "k_test", "--url must start with http:// or https://"),
    ],
    ids=["connection refused", "dns", "no key for a stage", "no key for a url", "unknown stage", "url without scheme"],
)
def test_when_smoke_cannot_run_it_says_why_in_one_line(args, key, error):
    argv = args()
    result = smoke(*argv, key=key)
    port = argv[1].rsplit(":", 1)[-1]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("smoke: error: " + error.format(port=port)), result.stderr


def test_a_stage_is_smoked_at_its_domain():
    for name, settings in STAGES.items():
        url, hint = _target(argparse.Namespace(url=None, stage=name))
        assert url == f"https://{settings.domain.name}"
        assert hint == f"bin/api-keys --stage {name} create --tenant smoke"


def _answer(kind: str, cache: str, timing: str | None, ms: float, status: int = 200) -> Answer:
    headers = {"x-inference-cache": cache, **({"server-timing": timing} if timing is not None else {})}
    return Answer(kind, status, httpx2.Headers(headers), b"{}", ms)


def test_the_table_shows_whatever_steps_come_back_in_the_order_they_came():
    """Issue 25's steps on a miss (names smoke has never heard of), the edge's on a hit, a
    step without a duration, an error answer."""
    answers = [
        _answer("chat", "MISS", "key-check;dur=0.4, lease;dur=5.5, model;dur=812.25, store, origin;dur=830", 845.0),
        _answer("chat", "HIT", 'decision;dur=0.12, lookup;dur=3.2;desc="kept-alive, reused"', 4.0),
        _answer("stream", "BYPASS", "origin;dur=20", 30.0, status=502),
    ]
    assert timing_table(answers) == [
        "Server-Timing, ms  key-check  lease  model  store  origin  decision  lookup  client",
        "  chat MISS              0.4    5.5  812.2    set   830.0         -       -   845.0",
        "  chat HIT                 -      -      -      -       -       0.1     3.2     4.0",
        "  stream 502               -      -      -      -    20.0         -       -    30.0",
    ]


def test_an_answer_without_server_timing_fails_the_step_and_errors_do_not_count():
    smoke_run = Smoke("http://127.0.0.1:1", "k_test")
    smoke_run.answers = [_answer("chat", "MISS", "origin;dur=3", 5.0), _answer("chat", "HIT", None, 1.0),
                         _answer("stream", "BYPASS", None, 1.0, status=502)]
    findings, stopped = run_steps(smoke_run, (("server-timing", step_server_timing),))
    assert stopped is None
    assert [(f.status, f.detail) for f in findings] == [(FAIL, "no Server-Timing on chat HIT")]
    smoke_run.answers[1] = _answer("chat", "HIT", "decision;dur=0.1, lookup;dur=2", 1.0)
    findings, _ = run_steps(smoke_run, (("server-timing", step_server_timing),))
    assert [(f.status, f.detail) for f in findings] == [
        (OK, "on every answer (2): origin, decision, lookup (table below)")
    ]
