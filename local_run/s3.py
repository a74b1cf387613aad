"""An S3-compatible server on 127.0.0.1 for the tests and the benchmark: moto's S3, plus
what moto leaves out and this project relies on.

moto 5.2 stores the `x-amz-checksum-*` and `Content-MD5` a client sends but never checks
them against the body; S3 does, and refuses a mismatch with 400 BadDigest. The wrapper
here checks them the way S3 does (plain-header form, which is what botocore sends over
http://), so that "a corrupted part is refused" is something a test can see. It also
counts the request body bytes that reach the server (the benchmark's "bytes sent", the
same measure for every client) and the time moto itself takes per method (what the
benchmark separates from what a deployed stage pays), and can hold writes after the Nth
object, so that a test can interrupt a publish at a known point. Conditional writes
(If-None-Match, If-Match) are decided one at a time, atomically, as S3 decides them (moto
checks, then writes).

A fault hook makes a bucket slow or failing, as a results bucket can be: every request to
it waits `delay_seconds` before it is served, and with `status` is then answered that
error (S3's XML error, e.g. 503 SlowDown or 500 InternalError) without reaching moto.

  python -m local_run.s3 [--port N]   # prints the URL on the first line, serves until killed

Control routes (never reach moto): GET /_local_s3/stats, POST /_local_s3/reset,
POST /_local_s3/faults {"bucket": B, "delay_seconds": S, "status": N} (one fault at a
time; {} clears it, and wakes every request it holds).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import parse_qs

CONTROL_PREFIX = "/_local_s3/"
_WORKERS = 128


def _crc32(body: bytes) -> bytes:
    return zlib.crc32(body).to_bytes(4, "big")


# Checksums S3 verifies on a request body, by header suffix -> (S3's name, digest).
# CRC32C and CRC64NVME need native code (awscrt) and are not checked here.
_CHECKSUMS = {
    "sha256": ("SHA256", lambda b: hashlib.sha256(b).digest()),
    "sha1": ("SHA1", lambda b: hashlib.sha1(b).digest()),  # noqa: S324 - S3's algorithm, not ours
    "crc32": ("CRC32", _crc32),
}


class S3RequestChecks:
    """WSGI middleware in front of moto's app: checksum verification, body byte counts,
    and an optional hold on writes."""

    def __init__(self, app) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._conditional_writes = threading.Lock()
        self.body_bytes = 0
        self.requests: dict[str, int] = {}
        self.refused_checksums = 0
        self.moto_seconds: dict[str, float] = {}  # time moto spent serving, per method
        self._fault: dict = {}
        self._fault_cleared = threading.Event()
        # Hold: once this many objects were written, every later write waits for release()
        # and is then answered 503 without reaching moto (as if the connection had died).
        self._hold_after: int | None = None
        self._objects_written = 0
        self._released = threading.Event()
        self.held = threading.Event()  # set when the first write is held

    # ------------------------------------------------------------------ control (tests)

    def reset(self) -> None:
        with self._lock:
            self.body_bytes, self.requests, self.refused_checksums, self.moto_seconds = 0, {}, 0, {}

    def set_fault(self, bucket: str | None = None, delay_seconds: float = 0.0, status: int | None = None) -> None:
        """Every request to `bucket` (None: no fault) waits `delay_seconds`, then gets
        `status` (an S3 error) if given, else is served."""
        with self._lock:
            previous = self._fault_cleared
            self._fault = {"bucket": bucket, "delay": float(delay_seconds), "status": status} if bucket else {}
            self._fault_cleared = threading.Event()
        previous.set()  # requests held by the previous fault go on now

    def hold_writes_after(self, objects: int) -> None:
        with self._lock:
            self._hold_after, self._objects_written = objects, 0
            self._released.clear()
            self.held.clear()

    def release(self) -> None:
        with self._lock:
            self._hold_after = None
        self._released.set()

    def stats(self) -> dict:
        with self._lock:
            return {
                "body_bytes": self.body_bytes,
                "requests": dict(self.requests),
                "refused_checksums": self.refused_checksums,
                "moto_seconds": dict(self.moto_seconds),
                "fault": {k: v for k, v in self._fault.items()},
            }

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(path[len(CONTROL_PREFIX) :], environ, start_response)
        method = environ["REQUEST_METHOD"]
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        body = stream.read(int(length)) if length else stream.read()  # the server decoded a chunked body
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        with self._lock:
            self.body_bytes += len(body)
            self.requests[method] = self.requests.get(method, 0) + 1

        fault = self._fault_for(path)
        if fault:
            fault["cleared"].wait(fault["delay"])
            if fault["status"]:
                code = "SlowDown" if fault["status"] == 503 else "InternalError"
                return _error(start_response, f"{fault['status']} Fault", code, "made to fail by the local run's fault hook")

        if method in ("PUT", "POST") and self._hold_this_write(environ):
            self.held.set()
            self._released.wait()
            return _error(start_response, "503 Service Unavailable", "SlowDown", "held by the test, then dropped")

        if method == "PUT":
            refusal = self._verify_checksums(environ, body)
            if refusal:
                with self._lock:
                    self.refused_checksums += 1
                return _error(start_response, "400 Bad Request", "BadDigest", refusal)
        started = time.perf_counter()
        try:
            if method in ("PUT", "DELETE") and ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ):
                # moto checks a write's condition and then writes, unlocked: two racing
                # If-None-Match: * writes can both succeed. S3 decides them atomically.
                with self._conditional_writes:
                    return list(self.app(environ, start_response))
            return list(self.app(environ, start_response))
        finally:
            with self._lock:
                self.moto_seconds[method] = self.moto_seconds.get(method, 0.0) + time.perf_counter() - started

    def _fault_for(self, path: str) -> dict | None:
        with self._lock:
            fault, cleared = self._fault, self._fault_cleared
        if fault and path.strip("/").split("/", 1)[0] == fault["bucket"]:
            return {**fault, "cleared": cleared}
        return None

    def _hold_this_write(self, environ) -> bool:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        path = environ.get("PATH_INFO", "").strip("/")
        if "/" not in path:  # bucket-level request (path style): not an object write
            return False
        with self._lock:
            if self._hold_after is None:
                return False
            if self._objects_written >= self._hold_after:
                return True
            # An object comes into being with PutObject/CopyObject, or CompleteMultipartUpload.
            finishes_object = (environ["REQUEST_METHOD"] == "PUT" and "uploadId" not in query) or (
                environ["REQUEST_METHOD"] == "POST" and "uploadId" in query
            )
            if finishes_object:
                self._objects_written += 1
            return False

    @staticmethod
    def _verify_checksums(environ, body: bytes) -> str | None:
        if "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", ""):
            return None  # trailer form (botocore uses it over https only); not checked here
        md5 = environ.get("HTTP_CONTENT_MD5")
        if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5.strip():  # noqa: S324
            return "The Content-MD5 you specified did not match what we received."
        for suffix, (name, digest) in _CHECKSUMS.items():
            sent = environ.get(f"HTTP_X_AMZ_CHECKSUM_{suffix.upper()}")
            if sent and base64.b64encode(digest(body)).decode() != sent.strip():
                return f"The {name} you specified did not match the calculated checksum."
        return None

    def _control(self, route: str, environ, start_response):
        if route == "reset" and environ["REQUEST_METHOD"] == "POST":
            self.reset()
        elif route == "faults" and environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            fault = json.loads(environ["wsgi.input"].read(length) or b"{}")
            self.set_fault(fault.get("bucket"), fault.get("delay_seconds", 0.0), fault.get("status"))
        elif route != "stats":
            return _error(start_response, "404 Not Found", "NoSuchRoute", route)
        payload = json.dumps(self.stats()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def _error(start_response, status: str, code: str, message: str):
    payload = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))])
    return [payload]


class LocalS3:
    """moto's S3 behind S3RequestChecks, served from a thread on 127.0.0.1 by uvicorn (the
    WSGI app on a pool of threads, a2wsgi): kept-alive connections and `Expect:
    100-continue` answered as S3 answers them. werkzeug's development server closes every
    connection after one request, so each S3 call here paid a TCP handshake and a new
    thread, which S3 never charges."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server = None
        self._thread: threading.Thread | None = None
        self.checks: S3RequestChecks | None = None

    def start(self) -> LocalS3:
        from a2wsgi import WSGIMiddleware
        from moto.moto_server.werkzeug_app import create_backend_app

        from local_run.servers import BackgroundServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        # S3's app itself, as `moto_server s3` serves it: moto's dispatcher would match every
        # request's host against every service's URL patterns, under one lock.
        self.checks = S3RequestChecks(create_backend_app("s3"))
        # Threads enough for the requests a fault or a hold keeps waiting, and the rest.
        self._server = BackgroundServer(WSGIMiddleware(self.checks, workers=_WORKERS), port=self._port, name="local-s3")
        self._server.start()
        return self

    @property
    def url(self) -> str:
        return self._server.url

    def stop(self) -> None:
        if self._server is not None:
            if self.checks is not None:
                self.checks.release()
                self.checks.set_fault(None)
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalS3Process:
    """The same server in a process of its own (`python -m local_run.s3`), as S3 is a
    service of its own: its request handling never shares an interpreter lock with the
    code it serves. Stopped with the process that started it (and on stop())."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> LocalS3Process:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local_run.s3", "--port", str(self._port), "--exit-with-parent"],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
        )
        self.url = (self._process.stdout.readline() or "").strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError("the local S3 server did not start")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()  # end of input: it stops
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_run.s3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop at the end of standard input")
    args = parser.parse_args(argv)
    server = LocalS3(args.port).start()
    print(server.url, flush=True)
    try:
        if args.exit_with_parent:
            sys.stdin.read()  # returns when the parent closes it, or dies
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
