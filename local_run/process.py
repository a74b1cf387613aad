"""The local run as a child process, for the end-to-end tests and the benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(*args: str, env: dict | None = None, on_line: Callable[[str], None] | None = None) -> Iterator[dict]:
    """`python -m local_run --port 0 --quiet *args`; yields its start-up record
    (where it listens, which model serves what) and stops it, with all it started.
    `env`: more environment for it; `on_line`: called with each line it prints after it
    started (its log lines), from a reader thread."""
    process = subprocess.Popen(
        # Port 0: the front binds a port the system picks and names it in its start-up line
        # (a port picked here first may be taken by another process before the run binds it).
        [sys.executable, "-m", "local_run", "--port", "0", "--quiet", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    try:
        started, printed = None, []
        for line in process.stdout:  # the start-up line says where it listens
            if line.startswith("{") and '"listening"' in line:
                started = json.loads(line)
                break
            printed.append(line)
        if started is None:
            raise RuntimeError("the local run did not start:\n" + "".join(printed)[-6000:] + process.stdout.read())
        # Keep reading what it prints (the edge function logs a line per request): a
        # full pipe would block it.
        threading.Thread(target=lambda: [on_line and on_line(line) for line in process.stdout], daemon=True).start()
        yield started
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def create_api_key(key_store_file: Path, tenant: str) -> dict:
    """{"key_id", "key", "tenant"}: a new key in a local run's key store, as
    `bin/api-keys --local --key-store-file FILE create --tenant T --json` makes it."""
    from cli.api_keys import LocalKeyStore, create_key

    return create_key(LocalKeyStore(key_store_file), tenant)
