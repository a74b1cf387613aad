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
from config.settings import tei_image
from config.stages import DEFAULT_STAGE, stage
from lambdas.contract import (
    ADAPTER_TIMEOUT_ENV,
    COALESCING_ENV,
    EMBEDDINGS_MODEL_ENV,
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
from local_run.embeddings_server import EMBEDDING_MODEL, TeiLimits, packaged_embedding_model
from local_run.front import LAMBDA_CONCURRENCY, LocalFront
from local_run.live_dashboard import EmfTap, LiveDashboard, LiveMetrics
from local_run.model_store import fetch_model, local_s3_client, publish_model
from local_run.s3 import LocalS3Process
from local_run.servers import BackgroundServer
from local_run.service_processes import EmbeddingsServing, model_process, origin_process
from local_run.viewer_request_host import API_KEY_CHECK, CACHE_READ_CHECK, ViewerRequestFunction

RESULTS_BUCKET = "local-results"


def start(
    port: int,
    stage_name: str,
    chat_url: str | None,
    quiet: bool = False,
    key_store_file: Path | None = None,
    model_dir: Path | None = None,
    embeddings: bool = True,
):
    """Start the results bucket, the model servers and the front; returns them running.
    `embeddings=False` serves the stage as if it had no embeddings model."""
    settings = stage(stage_name)
    if not embeddings:
        settings = dataclasses.replace(settings, embeddings=None)
    results = LocalS3Process().start()
    local_s3_client(results.url, settings.home_region).create_bucket(
        Bucket=RESULTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": settings.home_region}
    )
    # Removed when the run stops: the model copy (~90 MB), the settings, torch's compile cache.
    timeouts = settings.endpoint.timeouts
    workdir = Path(tempfile.mkdtemp(prefix="inference-cache-local-"))
    scratch = [workdir]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "torchinductor"))
    embeddings_serving, stand_in_for = None, None
    if settings.embeddings is not None:
        embeddings_serving, version, stand_in_for = _embeddings_model(settings, results.url, model_dir)
        scratch.append(embeddings_serving.model_dir)
        _, base_prefix = stage_target(settings.name, embeddings=True)
        write_serve_state(
            s3_endpoint_url=results.url, model_bucket=settings.model_bucket_name, model_prefix=base_prefix, model_version=version
        )
    # The model servers in a process of their own, as the endpoints are services of their
    # own: one SageMaker runtime URL for both, routed by endpoint name as SageMaker does.
    model = model_server = model_process(
        settings.endpoint_name, settings.model.max_model_len, chat_url, embeddings_serving
    ).start()
    tei = model_server.described.get("embeddings")
    if tei is not None:
        settings = _served_embeddings(settings, version, stand_in_for, tei)
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
        key_check=key_check,
        cache_read_check=cache_read_check,
        origin_read_seconds=settings.endpoint.timeouts.origin_read_seconds,
        quiet=quiet,
    )
    # GET /_local/dashboard: charts of this run's own metrics (local_run/live_dashboard.py).
    live = LiveMetrics(emf_enabled=os.environ.get("POWERTOOLS_METRICS_DISABLED", "false").lower() not in ("1", "true"))
    # The origin adapter's EMF records, as CloudWatch takes them; every other line written
    # whole (log lines of concurrent requests never interleave).
    sys.stdout = EmfTap(sys.stdout, live.observe_emf)
    front_server = BackgroundServer(LiveDashboard(live).around(front.app), port=port, name="local-front")
    front.url = front_server.url

    (workdir / SETTINGS_FILE).write_text(settings.edge_cache_settings().to_json())
    # The adapter's boto3 clients reach the local servers through the standard
    # per-service endpoint variables; its code does not know it runs locally.
    (workdir / "aws_config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    embeddings_model = settings.adapter_embeddings_model(settings.model_bucket_name)
    os.environ.pop(EMBEDDINGS_MODEL_ENV, None)
    os.environ.update(
        {
            SETTINGS_ENV: str(workdir / SETTINGS_FILE),
            LOOKUP_BASE_ENV: front.url,
            ENDPOINT_NAME_ENV: settings.endpoint_name,
            **({EMBEDDINGS_MODEL_ENV: embeddings_model.to_json()} if embeddings_model else {}),
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
    # Started only now: it reads its settings from the environment set above. The origin
    # adapter's web app runs in a process of its own (as Lambda runs apart from
    # CloudFront), served as Lambda Web Adapter serves it in Lambda, with as many
    # execution environments as the front runs requests at once.
    origin_server = origin_process(LAMBDA_CONCURRENCY).start()
    front.attach(importlib.import_module("lambdas.edge.handler"), origin_server.url)
    front_server.start()
    servers = [front_server, origin_server, model_server]
    functions = [f for f in (key_check, cache_read_check) if f is not None]
    run = LocalRun(settings, front, servers, model, model_server.url, stand_in_for, results, key_check, functions, scratch)
    run.embeddings_server_url = tei["container_url"] if tei else None
    return run


def _embeddings_model(settings, s3_url: str, model_dir: Path | None) -> tuple[EmbeddingsServing, str, str | None]:
    """The stage's embeddings model, published by content into the local S3 with
    bin/model-publish's code and fetched back from its version's prefix, as SageMaker loads
    it, for the TEI stand-in with the stage's TEI limits. The packaged all-MiniLM-L6-v2
    serves unless `model_dir` names another; where the stage deploys a model the local run
    cannot hold (staging, prod), MiniLM stands in for it (_served_embeddings says so).
    Returns (what the model process serves, the published version, the stage's model
    MiniLM stands in for or None)."""
    stage_model = settings.embeddings
    print(f"publishing and loading the embeddings model ({model_dir or EMBEDDING_MODEL}, CPU) ...", flush=True)
    _, base_prefix = stage_target(settings.name, embeddings=True)
    version = publish_model(
        s3_url, settings.home_region, settings.model_bucket_name, base_prefix, model_dir or packaged_embedding_model()
    )
    fetched = fetch_model(s3_url, settings.home_region, settings.model_bucket_name, f"{base_prefix}{version}/")
    _, tei_version = tei_image(stage_model.image_uri)
    limits = TeiLimits(
        max_client_batch_size=stage_model.max_client_batch_size,
        max_batch_tokens=stage_model.max_batch_tokens,
        max_concurrent_requests=stage_model.max_concurrent_inputs,
        version=tei_version,
    )
    stand_in_for = None
    if model_dir is None and stage_model.model_id != EMBEDDING_MODEL:
        stand_in_for = stage_model.model_id
    return EmbeddingsServing(fetched, settings.embeddings_endpoint_name, limits), version, stand_in_for


def _served_embeddings(settings, version: str, stand_in_for: str | None, tei: dict):
    """The stage's settings with the embeddings model the local run serves: its version,
    and what the TEI stand-in loaded (its vector size, input length and vocabulary); where
    MiniLM stands in for the stage's model, its id and no Matryoshka."""
    stage_model = settings.embeddings
    _, base_prefix = stage_target(settings.name, embeddings=True)
    model_id, matryoshka = stage_model.model_id, stage_model.matryoshka
    if stand_in_for is not None:
        model_id, matryoshka = EMBEDDING_MODEL, False
    served = dataclasses.replace(
        stage_model,
        model_id=model_id,
        model_version=version,
        s3_prefix=f"{base_prefix}{version}/",
        dimensions=tei["dimensions"],
        max_input_tokens=tei["max_input_length"],
        vocab_size=tei["vocab_size"],
        matryoshka=matryoshka,
    )
    return dataclasses.replace(settings, embeddings=served)


class LocalRun:
    def __init__(self, settings, front, servers, model, model_server_url, stand_in_for, results, key_check, functions,
                 scratch):
        self.settings, self.front, self.model = settings, front, model
        self._servers = servers
        self.model_server_url, self.results, self.key_check = model_server_url, results, key_check
        self.embeddings_stand_in_for = stand_in_for
        self.embeddings_server_url: str | None = None
        self._functions = functions
        self._scratch = scratch
        atexit.register(self._remove_scratch)  # also when the process ends without stop()

    def describe(self) -> dict:
        """Which local stand-in serves which task."""
        served = dict(self.model.describe()["models"])
        if self.settings.embeddings is not None:
            served["embeddings"] = self.settings.embeddings.model_id
        return served

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self.front.close()
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
    parser.add_argument("--no-embeddings", action="store_true",
                        help="serve the stage as if it had no embeddings model (/v1/embeddings: 404 model_not_found)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    run = start(
        args.port, args.stage, args.chat_url, args.quiet, args.key_store_file, args.model_dir, not args.no_embeddings
    )
    settings, front = run.settings, run.front
    served = ", ".join(f"{task}: {who}" for task, who in run.describe().items())
    embeddings = settings.embeddings
    print(
        json.dumps(
            {
                "listening": front.url,
                "stage": settings.name,
                "cache_policy": settings.cache.policy,
                "model_version": settings.model.model_version,
                "model_bucket": settings.model_bucket_name,
                "embeddings_model": embeddings.model_id if embeddings else None,
                "embeddings_model_version": embeddings.model_version if embeddings else None,
                "embeddings_stand_in_for": run.embeddings_stand_in_for,
                # Where make serve published the embeddings model (bin/model-publish --local).
                "model_prefix": embeddings.s3_prefix.removesuffix(f"{embeddings.model_version}/") if embeddings else None,
                "api_keys": str(run.key_check.key_store_file) if run.key_check else None,
                "models": run.describe(),
                "model_server": run.model_server_url,
                # The TEI stand-in's container face (/invocations: TEI's own contract).
                "embeddings_server": run.embeddings_server_url,
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


if __name__ == "__main__":
    sys.exit(main())
