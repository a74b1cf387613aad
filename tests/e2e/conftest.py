"""The local run (`make serve`) started as a subprocess on a free port, once per
session, and stopped (with everything it started) afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_run():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "local_run", "--port", str(port), "--stage", "dev", "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    started = None
    for line in process.stdout:  # the start-up line says where it listens
        if line.startswith("{") and '"listening"' in line:
            started = json.loads(line)
            break
    if started is None:
        process.kill()
        pytest.fail("the local run did not start:\n" + (process.stdout.read() or ""))
    # Keep reading what it prints (the edge function logs a line per request): a full
    # pipe would block it.
    drain = threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True)
    drain.start()
    yield started
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    drain.join(5)
