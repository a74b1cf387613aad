"""Parts of the local run that are services of their own on AWS, each in a process of its
own here: the origin adapter's web app (Lambda runs apart from CloudFront) and the model
server (SageMaker's endpoint). Their Python never waits for the front's interpreter lock,
nor the front for theirs. Each reads its settings from the environment the local run set
(as a function's or a container's environment), is reached over HTTP as on AWS, and its
log lines and EMF records come out on the local run's stdout, where the live dashboard
takes them. Each stops when the local run closes its standard input (or ends).

  python -m local_run.service_processes origin --environments N
  python -m local_run.service_processes model --endpoint NAME --max-model-len N [--chat-url URL]
      [--embeddings-dir DIR --embeddings-endpoint NAME --tei-limits JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

from local_run.embeddings_server import TeiLimits

_READY = "serving "


class ServerProcess:
    """`python -m local_run.service_processes <args>`: its URL (and what it says it serves)
    once it listens; everything it prints after that goes on to this process's stdout."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.url = ""
        self.described: dict = {}
        self._process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local_run.service_processes", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=Path(__file__).resolve().parent.parent,
        )
        early = []
        for line in self._process.stdout:
            if line.startswith(_READY):
                url, _, described = line[len(_READY):].strip().partition(" ")
                self.url, self.described = url, json.loads(described or "{}")
                break
            early.append(line)
        if not self.url:
            self.stop()
            raise RuntimeError(f"{' '.join(self.args[:1])} did not start:\n" + "".join(early)[-4000:])
        for line in early:
            sys.stdout.write(line)
        # Its log lines and EMF records, on as they come (a full pipe would stall it).
        threading.Thread(target=self._relay, name=f"{self.args[0]}-output", daemon=True).start()
        return self

    def describe(self) -> dict:
        return self.described

    def _relay(self) -> None:
        for line in self._process.stdout:
            sys.stdout.write(line)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.stdin.close()  # end of input: it stops
                self._process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


class LineAtomicWriter:
    """stdout for a process whose threads print: each thread's text is written out a whole
    line at a time, under one lock, so lines never interleave. `passed_on` sees each
    thread's whole lines first (a subclass may keep some)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._pending, "text", "") + text
        complete, newline, rest = pending.rpartition("\n")
        self._pending.text = rest
        if newline and (lines := self.passed_on(complete + newline)):
            with self._lock:
                self._stream.write(lines)
                self._stream.flush()
        return len(text)

    def passed_on(self, lines: str) -> str:
        """Of one thread's whole lines (each ending in a newline), those written out."""
        return lines

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def origin_process(environments: int) -> ServerProcess:
    """The origin adapter's web app, served as Lambda Web Adapter serves it, with as many
    execution environments as requests the front runs at once."""
    return ServerProcess("origin", "--environments", str(environments))


class EmbeddingsServing(NamedTuple):
    """What the TEI stand-in serves: the model's fetched copy, its endpoint, TEI's limits."""

    model_dir: Path
    endpoint_name: str
    limits: TeiLimits


def model_process(
    endpoint_name: str, max_model_len: int, chat_url: str | None, embeddings: EmbeddingsServing | None
) -> ServerProcess:
    """The model servers behind one SageMaker runtime facade, routed by endpoint name: the
    LLM stand-in (the LMI container contract) and, where the stage embeds, the TEI
    stand-in. It describes what it serves: {"models": ..., "embeddings": {the TEI
    stand-in's container URL, vector size, input length, vocabulary} or null}."""
    args = ["model", "--endpoint", endpoint_name, "--max-model-len", str(max_model_len)]
    if chat_url:
        args += ["--chat-url", chat_url]
    if embeddings is not None:
        args += [
            "--embeddings-dir", str(embeddings.model_dir),
            "--embeddings-endpoint", embeddings.endpoint_name,
            "--tei-limits", json.dumps(dataclasses.asdict(embeddings.limits)),
        ]
    return ServerProcess(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_run.service_processes", description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    origin_args = kinds.add_parser("origin")
    origin_args.add_argument("--environments", type=int, required=True)
    model_args = kinds.add_parser("model")
    model_args.add_argument("--endpoint", required=True)
    model_args.add_argument("--max-model-len", type=int, required=True)
    model_args.add_argument("--chat-url")
    model_args.add_argument("--embeddings-dir", type=Path)
    model_args.add_argument("--embeddings-endpoint")
    model_args.add_argument("--tei-limits")
    args = parser.parse_args(argv)
    # Its threads (the origin's execution environments) print log lines and EMF records at
    # once; print writes a line and its newline apart, and a line cut in two is an EMF
    # record lost (each is a log event of its own on AWS).
    sys.stdout = LineAtomicWriter(sys.stdout)
    from local_run.servers import BackgroundServer

    also: list = []  # the TEI stand-in's own container face, stopped with the process
    if args.kind == "origin":
        from lambdas.origin_adapter import app as origin

        origin.the_adapter()  # built once, before requests arrive (as Lambda's init phase)
        app, described, name = origin.create_app(origin.the_adapter, environments=args.environments), {}, "local-origin-adapter"
    else:
        from local_run.model_server import ModelServer
        from local_run.sagemaker_runtime import SageMakerRuntime

        model = ModelServer(chat_url=args.chat_url, max_model_len=args.max_model_len)
        endpoints, described = {args.endpoint: model.app}, {"models": model.describe(), "embeddings": None}
        if args.embeddings_dir is not None:
            from local_run.embeddings_server import TeiStandIn

            limits = json.loads(args.tei_limits)
            tei = TeiStandIn(args.embeddings_dir, TeiLimits(**{**limits, "version": tuple(limits["version"])}),
                             endpoint_name=args.embeddings_endpoint)
            endpoints[args.embeddings_endpoint] = tei.app
            container = BackgroundServer(tei.app, name="local-embeddings-server").start()
            also.append(container)
            described["embeddings"] = {
                "container_url": container.url, "dimensions": tei.dimensions,
                "max_input_length": tei.max_input_length, "vocab_size": tei.vocab_size,
            }
        app, name = SageMakerRuntime(model.app, endpoints), "local-model-server"
    server = BackgroundServer(app, name=name).start()
    print(f"{_READY}{server.url} {json.dumps(described)}", flush=True)
    try:
        sys.stdin.read()  # until the local run closes it, or ends
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for other in also:
            other.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
