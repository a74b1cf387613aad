"""The viewer-request CloudFront Function (the API key check), run for real under Node.js.

`ViewerRequestFunction` keeps one `node local_run/cloudfront_function_host.mjs` process
and exchanges one JSON line per request with it: the local run and the tests call the
same JavaScript file that CloudFront runs. The key store is a JSON file
{"<sha256 hex of key>": "<record JSON>"} that the host re-reads when it changes.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_SCRIPT = ROOT / "local_run" / "cloudfront_function_host.mjs"
API_KEY_CHECK = ROOT / "lambdas" / "viewer_request" / "api_key_check.js"
CACHE_READ_CHECK = ROOT / "lambdas" / "viewer_request" / "cache_read_check.js"


class FunctionExecutionError(RuntimeError):
    """The function threw or returned nothing usable (CloudFront would answer 503)."""


def find_node() -> str | None:
    """The Node.js that `make` puts first on PATH (.tools' Node 22) when present, else the
    first `node` on PATH."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine())
    tool = ROOT / ".tools" / "node" / "node_modules" / f"node-linux-{arch}" / "bin" / "node"
    if tool.is_file() and os.access(tool, os.X_OK):
        return str(tool)
    return shutil.which("node")


def viewer_request_event(method: str, uri: str, headers: Mapping[str, str | list[str]] | None = None,
                         querystring: str = "", client_ip: str = "127.0.0.1") -> dict:
    """The event CloudFront Functions hands a viewer-request function: header names
    lowercase, each {"value"}, with "multiValue" when the header came more than once."""
    event_headers: dict = {}
    for name, value in (headers or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        name = name.lower()
        if name in event_headers:  # the same name in another case: one header, repeated
            values = [v["value"] for v in event_headers[name].get("multiValue", [event_headers[name]])] + values
        header = {"value": values[0]}
        if len(values) > 1:
            header["multiValue"] = [{"value": v} for v in values]
        event_headers[name] = header
    query: dict = {}
    for pair in filter(None, querystring.split("&")):  # names and values stay URL-encoded, as CloudFront hands them
        key, _, value = pair.partition("=")
        if key in query:
            query[key].setdefault("multiValue", [{"value": query[key]["value"]}]).append({"value": value})
        else:
            query[key] = {"value": value}
    return {
        "version": "1.0",
        "context": {"eventType": "viewer-request"},
        "viewer": {"ip": client_ip},
        "request": {"method": method, "uri": uri, "querystring": query, "headers": event_headers, "cookies": {}},
    }


def is_response(result: dict) -> bool:
    """A generated response (the request stops here), as opposed to the request going on."""
    return "statusCode" in result


class ViewerRequestFunction:
    """One Node.js host running `function_file` (e.g. API_KEY_CHECK) with `key_store_file`
    behind cf.kvs() (a missing file is a store with no keys).

    `handle(event)` returns the function's result: the (modified) request, or a response
    object. Thread-safe: one request/response line exchange at a time."""

    def __init__(self, function_file: str | os.PathLike, key_store_file: str | os.PathLike,
                 node: str | None = None) -> None:
        node = node or find_node()
        if not node:
            raise RuntimeError("Node.js not found: run `make` (installs Node 22 into .tools/) or put node on PATH")
        self.key_store_file = Path(key_store_file)
        self._lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._process = subprocess.Popen(
            [node, str(HOST_SCRIPT), "--function", str(function_file), "--key-store-file", str(key_store_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        # The function's console.log lines (and host failures) arrive on stderr: pass them
        # on, and keep the last few to explain a host that died.
        threading.Thread(target=self._relay_stderr, daemon=True).start()

    def _relay_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr_tail.append(line)
            sys.stderr.write(line)

    def handle(self, event: dict) -> dict:
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
                answer = self._process.stdout.readline()
            except (BrokenPipeError, ValueError):
                answer = ""
        if not answer:
            self._process.wait(timeout=5)
            raise RuntimeError(f"the CloudFront Function host exited ({self._process.returncode}): "
                               + "".join(self._stderr_tail).strip()[-2000:])
        result = json.loads(answer)
        if set(result) == {"error"}:  # the host's own answer: requests and responses have other keys
            raise FunctionExecutionError(f"{result['error']['type']}: {result['error']['message']}")
        return result

    def close(self) -> None:
        with self._lock:
            if self._process.poll() is None:
                try:
                    self._process.stdin.close()  # end of input: the host exits
                    self._process.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    self._process.kill()
                    self._process.wait(timeout=5)
            for stream in (self._process.stdout, self._process.stdin):
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> ViewerRequestFunction:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
