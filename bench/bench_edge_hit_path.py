"""Benchmark: the edge handler's warm hit path, a new connection per lookup (the client
before issue 12) against the kept-alive lookup, at injected round-trip times; and the
handler's cold import before and after.

The /_cache/ store is a local HTTPS server (keep-alive, a certificate of a CA made here,
trusted through LOOKUP_CA_ENV). The round trip is injected by a network namespace of the
benchmark's own with `tc netem` on its loopback where the kernel has netem, else by a
delay proxy on 127.0.0.1 that delays each chunk by RTT/2 each way and each connection's
first client bytes by one more RTT (the TCP handshake a proxy that accepts locally cannot
delay). The table says which one ran. Interleaved (old, new, old, ...), so noise from
other processes hits both alike. Prints figures; asserts nothing.

Run: .venv/bin/python -m bench.bench_edge_hit_path (make bench).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import gc
import importlib.util
import ipaddress
import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lambdas
from bench.bench_cache_decision import import_times
from bench.edge_bundles import best_importtimes, edge_bundle_at, package_dir, package_source
from config.stages import DEFAULT_STAGE, stage
from lambdas.contract import LOOKUP_BASE_ENV, LOOKUP_CA_ENV, SETTINGS_ENV, SETTINGS_FILE, STAGE_SECRET_HEADER
from local_run.events import origin_request_event
from stacks.bundles import EDGE_HANDLER, lambda_bundle

ROOT = Path(lambdas.__file__).resolve().parent.parent
# The commit before issue 12: its lookup.py is "today's way" (Connection: close, a fresh
# TLS session per lookup) and its edge bundle the cold-import baseline.
BASELINE_COMMIT = "efdd8bc"
# The files issue 12 changed, inside the runtime package.
BASELINE_FILES = ("edge/lookup.py", "edge/handler.py", "contract.py")
RTTS_MS = (0, 2, 10)
ITERATIONS = {0: 400, 2: 200, 10: 100}
NETNS = "inference-cache-bench"
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "The answer is 4. " * 40}, "finish_reason": "stop"}]}).encode()
BODY = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0}


# -- the store: HTTPS, keep-alive, a certificate of our own CA --------------------------------

def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject, public_key, *extensions):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])).public_key(public_key)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            b = b.add_extension(extension, critical=critical)
        return b.sign(ca_key, hashes.SHA256())

    ca = cert("bench CA", ca_key.public_key(), (x509.BasicConstraints(ca=True, path_length=0), True),
              (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
              (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False))
    leaf = cert("127.0.0.1", key.public_key(), (x509.BasicConstraints(ca=False, path_length=None), True),
                (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class Store(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, certificate: Path, key: Path):
        super().__init__(("127.0.0.1", 0), _StoreHandler)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(certificate, key)
        self.objects: dict[str, bytes] = {}
        self.accepted = 0

    def get_request(self):
        sock, address = self.socket.accept()
        self.accepted += 1
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        pass


class _StoreHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body in two writes: never wait on a delayed ACK

    def setup(self):
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def do_GET(self):  # noqa: N802
        body = self.server.objects.get(self.path)
        self.send_response(200 if body else 404)
        stored_at = email.utils.formatdate(time.time() - 5, usegmt=True)
        for name, value in (("Content-Type", "application/json"), ("Last-Modified", stored_at),
                            ("Content-Length", str(len(body or b"")))):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


# -- the round trip: netem in a namespace of our own, else a delay proxy ---------------------

class DelayProxy:
    """127.0.0.1 -> upstream, each chunk delivered RTT/2 after it was read, each way; a
    connection's first client bytes one RTT later still (its TCP handshake)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.one_way = upstream, 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server, handshake=True)
            self._pipe(server, client, handshake=False)

    def _pipe(self, source, target, handshake: bool):
        pending: queue.SimpleQueue = queue.SimpleQueue()

        def read():
            first = handshake
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                delay = self.one_way * (3 if first else 1)
                first = False
                pending.put((time.perf_counter() + delay, data))
                if not data:
                    return

        def write():
            while True:
                at, data = pending.get()
                while (wait := at - time.perf_counter()) > 0:
                    time.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    return
                try:
                    target.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def set_rtt(self, rtt_ms: float) -> None:
        self.one_way = rtt_ms / 2000


def netem_available() -> bool:
    """True inside our own namespace when netem works on its loopback."""
    return subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "0ms"],
                          capture_output=True).returncode == 0


def netem_set_rtt(rtt_ms: float) -> None:
    # Loopback: each packet crosses lo once per direction, so RTT/2 per packet is the RTT.
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "netem", "delay", f"{rtt_ms / 2}ms"], check=True)


def reexec_in_namespace() -> bool:
    """Run this benchmark again inside a network namespace of its own; False when that
    cannot be done here (no root, no iproute2, no netem)."""
    if os.environ.get("BENCH_IN_NETNS") or not (shutil.which("ip") and shutil.which("tc")):
        return False
    if subprocess.run(["ip", "netns", "add", NETNS], capture_output=True).returncode != 0:
        return False
    try:
        ready = subprocess.run(["ip", "netns", "exec", NETNS, "sh", "-c",
                                "ip link set lo up && tc qdisc add dev lo root netem delay 0ms"],
                               capture_output=True).returncode == 0
        if not ready:
            return False
        run = subprocess.run(["ip", "netns", "exec", NETNS, sys.executable, "-m", "bench.bench_edge_hit_path"],
                             cwd=ROOT, env={**os.environ, "BENCH_IN_NETNS": "1"})
        if run.returncode:
            print(f"the run in network namespace {NETNS} failed ({run.returncode}); again with the delay proxy")
        return run.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


# -- the two ways --------------------------------------------------------------------------

def load_edge(settings_file: Path):
    os.environ[SETTINGS_ENV] = str(settings_file)
    spec = importlib.util.spec_from_file_location("edge_handler_bench", ROOT / "lambdas/edge/handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_lookup(ca: Path):
    """The client before issue 12 (its source at BASELINE_COMMIT), trusting our CA."""
    source = package_source(BASELINE_COMMIT, "edge/lookup.py")
    if source is None:  # no history (an archive): the new client with its connection dropped each time
        from lambdas.edge import lookup

        def get(*args):
            lookup.reset()
            return lookup.get(*args)

        return types.SimpleNamespace(get=get, last_connection="new", label="new client, reset per lookup")
    module = types.ModuleType("edge_lookup_before")
    # Its one project import, under the runtime package's name of today (issue 19 renamed it).
    source = source.replace("from inference_cache.", "from lambdas.")
    exec(compile(source, "lookup.py@" + BASELINE_COMMIT, "exec"), module.__dict__)
    module._TLS = ssl.create_default_context(cafile=str(ca))
    module.last_connection, module.label = "new", f"lookup.py at {BASELINE_COMMIT}"
    old_get = module.get
    # It predates the /_cache/ read credential (issue 21): it sends none; the store here checks none.
    module.get = lambda base, path, timeout, credential=None: old_get(base, path, timeout)
    return module


def timed(handler, event_for, old, new, iterations: int, store: Store) -> tuple[list[float], list[float], dict]:
    """Handler durations (ms), old and new interleaved, each a hit; and the TCP
    connections the store accepted for each way while timed."""
    edge_lookup = handler.lookup
    samples, connections = {"old": [], "new": []}, {"old": 0, "new": 0}
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for i in range(iterations + 10):
            for label, client in (("old", old), ("new", new)):
                handler.lookup = client
                event = event_for()
                accepted = store.accepted
                gc.disable()
                t0 = time.perf_counter()
                result = handler.handler(event, None)
                elapsed = time.perf_counter() - t0
                gc.enable()
                if result.get("status") != "200":
                    raise RuntimeError(f"{label}: not a hit: {result}")
                if i >= 10:  # warm
                    samples[label].append(elapsed * 1000)
                    connections[label] += store.accepted - accepted
    handler.lookup = edge_lookup
    return samples["old"], samples["new"], connections


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def hit_path(delay: str) -> list[tuple]:
    from lambdas.edge import lookup

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ca, certificate, key = make_certificates(Path(tmp))
        store = Store(certificate, key)
        threading.Thread(target=store.serve_forever, daemon=True).start()
        if delay == "netem":
            port, set_rtt = store.server_address[1], netem_set_rtt
        else:
            proxy = DelayProxy(store.server_address)
            port, set_rtt = proxy.port, proxy.set_rtt
        settings = stage(DEFAULT_STAGE).edge_cache_settings()._replace(lookup_timeout_ms=1000)
        (Path(tmp) / SETTINGS_FILE).write_text(settings.to_json())
        os.environ[LOOKUP_BASE_ENV] = f"https://127.0.0.1:{port}"
        os.environ[LOOKUP_CA_ENV] = str(ca)
        lookup.reset()
        handler = load_edge(Path(tmp) / SETTINGS_FILE)
        raw = json.dumps(BODY).encode()

        def event_for():
            # With the stage secret, as the viewer-request function hands it to the edge.
            headers = {"content-type": "application/json", STAGE_SECRET_HEADER: "bench-stage-secret"}
            return origin_request_event(body=raw, headers=headers, uri="/v1/chat/completions")

        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            forwarded = handler.handler(event_for(), None)
        key_value = forwarded["headers"]["x-inference-cache-key"][0]["value"]
        store.objects[f"{settings.results_path}{key_value}"] = ANSWER
        old = old_lookup(ca)
        for rtt in RTTS_MS:
            set_rtt(rtt)
            old_ms, new_ms, connections = timed(handler, event_for, old, lookup, ITERATIONS[rtt], store)
            rows.append((rtt, len(old_ms), pct(old_ms, .5), pct(old_ms, .99), pct(new_ms, .5), pct(new_ms, .99),
                         connections["old"], connections["new"]))
        set_rtt(0)
        lookup.reset()
        store.shutdown()
    return rows, old.label


# -- cold import ---------------------------------------------------------------------------

def compile_ms(source: str, runs: int = 200) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        compile(source, "module.py", "exec")
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def cold_imports() -> list[str]:
    after = Path(lambda_bundle("edge", stage(DEFAULT_STAGE)))
    handler = EDGE_HANDLER.rsplit(".", 1)[0]
    bundles = {"after": (after, handler)}
    before = edge_bundle_at(BASELINE_COMMIT, DEFAULT_STAGE)
    if before is not None:
        bundles = {"before": before, **bundles}
    best = best_importtimes(bundles)
    lines = [f"cold import of the edge handler, from source, best of 15 (runs alternating; before = {BASELINE_COMMIT}): "
             + "; ".join(f"{label} {ms:.1f} ms -X importtime, {cpu:.1f} ms CPU" for label, (ms, cpu) in best.items())]
    if "before" in best:
        lines.append(f"  after - before: {best['after'][0] - best['before'][0]:+.1f} ms importtime, "
                     f"{best['after'][1] - best['before'][1]:+.1f} ms CPU")
        # The changed files' share of a cold start from source, measured where other
        # processes cannot blur it: compiling them (executing them costs microseconds).
        compiled = {label: sum(compile_ms((package_dir(bundle) / relative).read_text()) for relative in BASELINE_FILES)
                    for label, (bundle, _) in bundles.items()}
        lines.append(f"  compiling {', '.join(Path(r).name for r in BASELINE_FILES)} (best of 200, in process): "
                     f"before {compiled['before']:.2f} ms, after {compiled['after']:.2f} ms "
                     f"({compiled['after'] - compiled['before']:+.2f} ms)")
    for label, (bundle, module) in bundles.items():
        t = import_times(bundle, module)
        lines.append(f"  bench_cache_decision.import_times(), {label:>6}: source {t['source importtime']:.1f} ms importtime "
                     f"(one run) / {t['source wall']:.1f} ms wall (median of 15); .pyc {t['pyc importtime']:.1f} ms / "
                     f"{t['pyc wall']:.1f} ms wall")
    for extra in ("http.client", "ssl"):
        ms = best_importtimes({"after": (after, handler)}, then=extra)["after"][0]
        lines.append(f"  {extra} on top of the handler, best of 15 from source: {ms:.1f} ms"
                     + (" (not used: the reason for the hand-written client)" if extra == "http.client"
                        else " (imported at the first HTTPS lookup, before and after)"))
    if before is not None:
        shutil.rmtree(before[0], ignore_errors=True)
    return lines


def main() -> None:
    if not os.environ.get("BENCH_IN_NETNS") and reexec_in_namespace():
        return
    delay = "netem" if os.environ.get("BENCH_IN_NETNS") and netem_available() else "proxy"
    rows, old_label = hit_path(delay)
    how = ("tc netem on the loopback of a network namespace of its own" if delay == "netem"
           else "delay proxy on 127.0.0.1 (RTT/2 each way per chunk, +1 RTT on a connection's first bytes)")
    print(f"edge hit path, python {sys.version.split()[0]}, handler duration (ms), HTTPS store, round trip: {how}")
    print(f"old = {old_label} (a new TCP connection and TLS session per lookup); new = kept-alive connection")
    print(f"{'RTT':>5} {'n':>4} | {'old p50':>8} {'old p99':>8} | {'new p50':>8} {'new p99':>8} | "
          f"{'old/new p50':>11} {'old/new p99':>11} | {'conns old':>9} {'conns new':>9}")
    for rtt, n, op50, op99, np50, np99, old_connections, new_connections in rows:
        print(f"{rtt:>3}ms {n:>4} | {op50:>8.2f} {op99:>8.2f} | {np50:>8.2f} {np99:>8.2f} | "
              f"{op50 / np50:>11.2f} {op99 / np99:>11.2f} | {old_connections:>9} {new_connections:>9}")
    print("conns = TCP connections the store accepted during the timed hits of each way")
    for line in cold_imports():
        print(line)


if __name__ == "__main__":
    main()
