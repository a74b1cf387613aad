"""`make serve`: the whole request path on 127.0.0.1 (PORT, default 8080)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from local_run.front import LAMBDAS, LocalFront, load_lambda  # noqa: E402
from local_run.model_server import ModelServer  # noqa: E402
from local_run.results_store import LocalS3  # noqa: E402
from stacks.bundles import cache_settings_json  # noqa: E402
from stacks.stages import DEFAULT_STAGE, stage  # noqa: E402

RESULTS_BUCKET = "local-results"


def start(port: int, stage_name: str, chat_url: str | None, quiet: bool = False):
    """Start the results store, the model server and the front; returns them running."""
    settings = stage(stage_name)
    results = LocalS3()
    model = ModelServer(chat_url=chat_url)
    front = LocalFront(port, settings=settings, results_url=results.url, bucket=RESULTS_BUCKET, quiet=quiet)

    workdir = Path(tempfile.mkdtemp(prefix="inference-cache-local-"))
    (workdir / "cache_settings.json").write_text(cache_settings_json(settings))
    # The adapter's boto3 clients reach the local servers through the standard
    # per-service endpoint variables; its code does not know it runs locally.
    (workdir / "aws_config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    os.environ.update(
        {
            "INFERENCE_CACHE_SETTINGS": str(workdir / "cache_settings.json"),
            "INFERENCE_CACHE_LOOKUP_BASE": front.url,
            "ENDPOINT_NAME": f"inference-cache-{settings.name}",
            "RESULTS_BUCKET": RESULTS_BUCKET,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": model.url,
            "AWS_ENDPOINT_URL_S3": results.url,
            "AWS_CONFIG_FILE": str(workdir / "aws_config"),
            "AWS_DEFAULT_REGION": settings.home_region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "POWERTOOLS_SERVICE_NAME": "origin-adapter",
            "POWERTOOLS_METRICS_NAMESPACE": "InferenceCache",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    front.attach(load_lambda("edge_handler", LAMBDAS / "edge"), load_lambda("origin_adapter_handler", LAMBDAS / "origin_adapter"))
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
