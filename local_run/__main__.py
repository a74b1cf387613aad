"""`make serve`: the whole request path on 127.0.0.1 (PORT, default 8080)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from config.stages import DEFAULT_STAGE, stage
from inference_cache.contract import (
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    LOOKUP_BASE_ENV,
    METRICS_NAMESPACE,
    ORIGIN_ADAPTER_SERVICE,
    RESULTS_BUCKET_ENV,
    SETTINGS_ENV,
    SETTINGS_FILE,
)
from local_run.front import LocalFront
from local_run.model_server import ModelServer
from local_run.results_store import LocalS3

RESULTS_BUCKET = "local-results"


def start(port: int, stage_name: str, chat_url: str | None, quiet: bool = False):
    """Start the results store, the model server and the front; returns them running."""
    settings = stage(stage_name)
    results = LocalS3()
    model = ModelServer(chat_url=chat_url)
    front = LocalFront(port, settings=settings, results_url=results.url, bucket=RESULTS_BUCKET, quiet=quiet)

    workdir = Path(tempfile.mkdtemp(prefix="inference-cache-local-"))
    (workdir / SETTINGS_FILE).write_text(settings.edge_cache_settings().to_json())
    # The adapter's boto3 clients reach the local servers through the standard
    # per-service endpoint variables; its code does not know it runs locally.
    (workdir / "aws_config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    os.environ.update(
        {
            SETTINGS_ENV: str(workdir / SETTINGS_FILE),
            LOOKUP_BASE_ENV: front.url,
            ENDPOINT_NAME_ENV: f"inference-cache-{settings.name}",
            ENDPOINT_READ_TIMEOUT_ENV: str(settings.endpoint.model_read_timeout_seconds),
            RESULTS_BUCKET_ENV: RESULTS_BUCKET,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": model.url,
            "AWS_ENDPOINT_URL_S3": results.url,
            "AWS_CONFIG_FILE": str(workdir / "aws_config"),
            "AWS_DEFAULT_REGION": settings.home_region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "POWERTOOLS_SERVICE_NAME": ORIGIN_ADAPTER_SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    # Imported only now: both read their settings from the environment set above.
    front.attach(
        importlib.import_module("inference_cache.edge.handler"),
        importlib.import_module("inference_cache.origin_adapter.handler"),
    )
    servers = [results, model, front]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return front, model, results, settings


def main() -> int:
    parser = argparse.ArgumentParser(prog="make serve", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--stage", default=os.environ.get("STAGE") or DEFAULT_STAGE)
    parser.add_argument(
        "--chat-url",
        default=os.environ.get("LOCAL_CHAT_URL"),
        help="an OpenAI-compatible server for chat and completions (default: the built-in test generator)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    front, model, results, settings = start(args.port, args.stage, args.chat_url, args.quiet)
    served = ", ".join(f"{task}: {who}" for task, who in model.describe().items())
    print(
        json.dumps(
            {
                "listening": front.url,
                "stage": settings.name,
                "cache_policy": settings.cache.policy,
                "models": model.describe(),
                "model_server": model.url,
                "results_store": results.url,
            }
        ),
        flush=True,
    )
    print(f"inference-cache local run ({settings.name}) on {front.url}/v1 - {served}. Ctrl-C stops.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        for server in (front, model, results):
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
