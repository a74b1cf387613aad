"""`make serve`: the whole request path on 127.0.0.1 (PORT, default 8080)."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from cli.api_keys import (
    DEFAULT_LOCAL_KEY_STORE,
    LOCAL_KEY_STORE_ENV,
    ROOT,
    LocalKeyStore,
    ensure_stage_secret,
    local_key_store_path,
)
from cli.model_stage import stage_target
from cli.serve_state import write_serve_state
from config.stages import DEFAULT_STAGE, stage
from lambdas.contract import (
    ADAPTER_TIMEOUT_ENV,
    COALESCING_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    LOOKUP_BASE_ENV,
    METRICS_NAMESPACE,
    ORIGIN_ADAPTER_SERVICE,
    RESULTS_BUCKET_ENV,
    SETTINGS_ENV,
    SETTINGS_FILE,
    STREAM_BUDGET_ENV,
)
from local_run.front import LAMBDA_CONCURRENCY, LocalFront
from local_run.live_dashboard import EmfTap, LiveDashboard, LiveMetrics
from local_run.model_server import EMBEDDING_MODEL, Embedder, ModelServer, packaged_embedding_model
from local_run.model_store import fetch_model, local_s3_client, publish_model
from local_run.s3 import LocalS3
from local_run.servers import BackgroundServer
from local_run.viewer_request_host import API_KEY_CHECK, CACHE_READ_CHECK, ViewerRequestFunction

RESULTS_BUCKET = "local-results"


def start(
    port: int,
    stage_name: str,
    chat_url: str | None,
    quiet: bool = False,
    key_store_file: Path | None = None,
    model_dir: Path | None = None,
):
    """Start the results bucket, the model server and the front; returns them running."""
    settings = stage(stage_name)
    model_dir = model_dir or packaged_embedding_model()
    results = LocalS3().start()
    local_s3_client(results.url, settings.home_region).create_bucket(
        Bucket=RESULTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": settings.home_region}
    )
    # The embedding model is published by content into the local S3 and loaded back from
    # its version's prefix, as SageMaker loads a model; the version keys the cache.
    print(f"publishing and loading the embedding model ({EMBEDDING_MODEL}, CPU) ...", flush=True)
    _, base_prefix = stage_target(settings.name)
    version = publish_model(results.url, settings.home_region, settings.model_bucket_name, base_prefix, model_dir)
    settings = dataclasses.replace(
        settings, model=dataclasses.replace(settings.model, model_version=version, s3_prefix=f"{base_prefix}{version}/")
    )
    fetched = fetch_model(results.url, settings.home_region, settings.model_bucket_name, settings.model.s3_prefix)
    # Removed when the run stops: the model copy (~90 MB), the settings, torch's compile cache.
    timeouts = settings.endpoint.timeouts
    workdir = Path(tempfile.mkdtemp(prefix="inference-cache-local-"))
    scratch = [fetched, workdir]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "torchinductor"))
    model = ModelServer(chat_url=chat_url, embedder=Embedder(fetched, version), max_model_len=settings.model.max_model_len)
    write_serve_state(
        s3_endpoint_url=results.url, model_bucket=settings.model_bucket_name, model_prefix=base_prefix, model_version=version
    )
    model_server = BackgroundServer(model.app, name="local-model-server").start()
    # bin/api-keys --local writes this file; the running functions re-read it on change. It
    # holds the stage secret too, made here on the first start (as `bin/api-keys
    # rotate-secret` makes it before a stage's first deploy).
    key_store_file = local_key_store_path(key_store_file)
    key_store_file.parent.mkdir(parents=True, exist_ok=True)
    ensure_stage_secret(LocalKeyStore(key_store_file))
    key_check = ViewerRequestFunction(API_KEY_CHECK, key_store_file) if settings.require_api_keys else None
    cache_read_check = ViewerRequestFunction(CACHE_READ_CHECK, key_store_file)
    front = LocalFront(
        settings=settings,
        results_url=results.url,
        bucket=RESULTS_BUCKET,
        models_url=model_server.url,
        key_check=key_check,
        cache_read_check=cache_read_check,
        origin_read_seconds=settings.endpoint.timeouts.origin_read_seconds,
        quiet=quiet,
    )
    # GET /_local/dashboard: charts of this run's own metrics (local_run/live_dashboard.py).
    live = LiveMetrics(emf_enabled=os.environ.get("POWERTOOLS_METRICS_DISABLED", "false").lower() not in ("1", "true"))
    sys.stdout = EmfTap(sys.stdout, live.observe_emf)  # the origin adapter's EMF records, as CloudWatch takes them
    front_server = BackgroundServer(LiveDashboard(live).around(front.app), port=port, name="local-front")
    front.url = front_server.url

    (workdir / SETTINGS_FILE).write_text(settings.edge_cache_settings().to_json())
    # The adapter's boto3 clients reach the local servers through the standard
    # per-service endpoint variables; its code does not know it runs locally.
    (workdir / "aws_config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    os.environ.update(
        {
            SETTINGS_ENV: str(workdir / SETTINGS_FILE),
            LOOKUP_BASE_ENV: front.url,
            ENDPOINT_NAME_ENV: f"inference-cache-{settings.name}",
            # The stage's time budget; set in the environment, shorter ones (tests try a stream
            # longer than a whole answer's budget without waiting minutes).
            ENDPOINT_READ_TIMEOUT_ENV: os.environ.get(ENDPOINT_READ_TIMEOUT_ENV) or str(timeouts.model_read_seconds),
            ADAPTER_TIMEOUT_ENV: os.environ.get(ADAPTER_TIMEOUT_ENV) or str(timeouts.adapter_seconds),
            STREAM_BUDGET_ENV: os.environ.get(STREAM_BUDGET_ENV) or str(timeouts.stream_seconds),
            # On, as every deployed stage runs it; COALESCE_IDENTICAL_MISSES=false turns it off.
            COALESCING_ENV: os.environ.get(COALESCING_ENV, "true"),
            RESULTS_BUCKET_ENV: RESULTS_BUCKET,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": model_server.url,
            "AWS_ENDPOINT_URL_S3": results.url,
            "AWS_CONFIG_FILE": str(workdir / "aws_config"),
            "AWS_DEFAULT_REGION": settings.home_region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "POWERTOOLS_SERVICE_NAME": ORIGIN_ADAPTER_SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            # On: the EMF records feed the live dashboard (EmfTap keeps them off the console).
            "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "false"),
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    # Imported only now: both read their settings from the environment set above. The
    # origin adapter's web app is served as Lambda Web Adapter serves it in Lambda, with
    # as many worker threads as execution environments the front runs at once.
    origin = importlib.import_module("lambdas.origin_adapter.app")
    origin.the_adapter()  # built once, before requests arrive (as Lambda's init phase)
    origin_server = BackgroundServer(
        origin.create_app(origin.the_adapter, environments=LAMBDA_CONCURRENCY), name="local-origin-adapter"
    ).start()
    front.attach(importlib.import_module("lambdas.edge.handler"), origin_server.url)
    front_server.start()
    functions = [f for f in (key_check, cache_read_check) if f is not None]
    return LocalRun(settings, front, front_server, model, model_server, origin_server, results, key_check, functions, scratch)


class LocalRun:
    def __init__(self, settings, front, front_server, model, model_server, origin_server, results, key_check, functions, scratch):
        self.settings, self.front, self.model = settings, front, model
        self._servers = [front_server, origin_server, model_server]
        self.model_server_url, self.results, self.key_check = model_server.url, results, key_check
        self._functions = functions
        self._scratch = scratch
        atexit.register(self._remove_scratch)  # also when the process ends without stop()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self.results.stop()
        for function in self._functions:
            function.close()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        while self._scratch:
            shutil.rmtree(self._scratch.pop(), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make serve", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--stage", default=os.environ.get("STAGE") or DEFAULT_STAGE)
    parser.add_argument(
        "--chat-url",
        default=os.environ.get("LOCAL_CHAT_URL"),
        help="an OpenAI-compatible server for chat and completions (default: the built-in test generator)",
    )
    parser.add_argument("--key-store-file", type=Path, help=f"API keys of the local run (default: ${LOCAL_KEY_STORE_ENV} "
                        f"or {DEFAULT_LOCAL_KEY_STORE.relative_to(ROOT)})")
    parser.add_argument("--model-dir", type=Path, help="a sentence-transformers model directory to publish and serve "
                        "for embeddings (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    # One write per line: log lines of concurrent requests never interleave.
    sys.stdout = LineAtomicWriter(sys.stdout)
    run = start(args.port, args.stage, args.chat_url, args.quiet, args.key_store_file, args.model_dir)
    settings, front, model = run.settings, run.front, run.model
    served = ", ".join(f"{task}: {who}" for task, who in model.describe().items())
    print(
        json.dumps(
            {
                "listening": front.url,
                "stage": settings.name,
                "cache_policy": settings.cache.policy,
                "model_version": settings.model.model_version,
                "model_bucket": settings.model_bucket_name,
                "model_prefix": settings.model.s3_prefix.removesuffix(f"{settings.model.model_version}/"),
                "api_keys": str(run.key_check.key_store_file) if run.key_check else None,
                "models": model.describe(),
                "model_server": run.model_server_url,
                "results_store": run.results.url,
            }
        ),
        flush=True,
    )
    print(f"inference-cache local run ({settings.name}) on {front.url}/v1 - {served}. Ctrl-C stops.", flush=True)
    if run.key_check:
        print(
            "Requests need an API key: bin/api-keys --local create --tenant <you> (keys live in "
            f"{run.key_check.key_store_file}; new and revoked keys apply at once).",
            flush=True,
        )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        run.stop()
    return 0


class LineAtomicWriter:
    """stdout for a process whose threads print: each thread's text is written out a whole
    line at a time, under one lock, so lines never interleave."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._pending, "text", "") + text
        complete, newline, rest = pending.rpartition("\n")
        self._pending.text = rest
        if newline:
            with self._lock:
                self._stream.write(complete + newline)
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


if __name__ == "__main__":
    sys.exit(main())
