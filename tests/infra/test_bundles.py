"""What the Lambda assets hold: the runtime package's shared modules, the one component
the function runs, and the stage's edge settings beside them; the origin adapter's also
its entry point and its web app's pure-Python packages; nothing else."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

import lambdas
from config.stages import STAGES
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    EMBEDDINGS_MODEL_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    HEALTH_ROUTE,
    RESULTS_BUCKET_ENV,
    SETTINGS_FILE,
)
from local_run.model_server import ModelServer
from local_run.process import free_port
from local_run.servers import BackgroundServer
from stacks.bundles import (
    EDGE_HANDLER,
    ORIGIN_ADAPTER_ENTRY_POINT,
    ORIGIN_ADAPTER_HANDLER,
    ORIGIN_ADAPTER_PACKAGES,
    lambda_bundle,
    vendored_files,
    vendored_modules,
)
from tests.conftest import STAGE_NAMES

PACKAGE = Path(lambdas.__file__).resolve().parent
SHARED_MODULES = sorted(p.name for p in PACKAGE.glob("*.py"))


def asset_dir(synthesized, stage: str, stack: str, handler: str) -> Path:
    template_file = synthesized[stage].template_files[stack]
    resources = synthesized[stage].templates[stack]["Resources"]
    (function,) = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler]
    # Assets are staged once for the whole app, beside the stage assemblies.
    asset_hash = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    return template_file.parent.parent / f"asset.{asset_hash}"


def _package_files(component: str) -> list[str]:
    component_modules = sorted(p.name for p in (PACKAGE / component).glob("*.py"))
    return [f"lambdas/{m}" for m in SHARED_MODULES] + [f"lambdas/{component}/{m}" for m in component_modules]


def _held(asset: Path) -> list[str]:
    return sorted(str(p.relative_to(asset)) for p in asset.rglob("*") if p.is_file())


def _check_package_and_settings(asset: Path, stage: str, component: str) -> None:
    for relative in _package_files(component):
        assert (asset / relative).read_bytes() == (PACKAGE.parent / relative).read_bytes()
    baked = EdgeCacheSettings.from_json((asset / "lambdas" / SETTINGS_FILE).read_text())
    assert baked == STAGES[stage].edge_cache_settings()


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_bundle_holds_the_package_its_component_and_stage_settings(synthesized, stage):
    asset = asset_dir(synthesized, stage, "Edge", EDGE_HANDLER)
    assert "cache_decision.py" in SHARED_MODULES
    assert _held(asset) == sorted([*_package_files("edge"), f"lambdas/{SETTINGS_FILE}"])
    _check_package_and_settings(asset, stage, "edge")
    # The handler string names a module the bundle holds.
    module, _, function = EDGE_HANDLER.rpartition(".")
    assert (asset / (module.replace(".", "/") + ".py")).is_file() and function == "handler"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_bundle_holds_its_entry_point_and_web_app_packages(synthesized, stage):
    asset = asset_dir(synthesized, stage, "Inference", ORIGIN_ADAPTER_HANDLER)
    vendored = vendored_files(ORIGIN_ADAPTER_PACKAGES)
    assert _held(asset) == sorted(
        [*_package_files("origin_adapter"), f"lambdas/{SETTINGS_FILE}", ORIGIN_ADAPTER_HANDLER, *map(str, vendored)]
    )
    _check_package_and_settings(asset, stage, "origin_adapter")
    # Lambda Web Adapter executes the handler file: it must be there, executable.
    entry_point = asset / ORIGIN_ADAPTER_HANDLER
    assert entry_point.read_bytes() == ORIGIN_ADAPTER_ENTRY_POINT.read_bytes()
    assert entry_point.stat().st_mode & stat.S_IXUSR
    # The web app's packages, as installed from the pinned requirements: the modules and
    # their licences, no bytecode, nothing compiled.
    modules = vendored_modules(ORIGIN_ADAPTER_PACKAGES)
    assert {"uvicorn", "h11", "click", "starlette", "anyio", "idna", "typing_extensions"} <= modules
    assert all((asset / m).is_dir() or (asset / f"{m}.py").is_file() for m in modules)
    assert not [p for p in asset.rglob("*") if p.suffix in (".pyc", ".so") or p.name == "RECORD"]


def test_the_origin_adapter_bundle_serves_a_streamed_answer_as_lambda_runs_it(tmp_path):
    """The bundle as Lambda runs it, minus AWS: its run.sh started the way Lambda Web
    Adapter starts it, by a Python that sees nothing but the bundle, the runtime's
    libraries (boto3, botocore) and the Powertools layer's (no site-packages, no venv),
    answering the readiness check and streaming a chat answer from the local model server.
    A web app package missing from the bundle fails here, not in a deployed stage."""
    bundle = Path(lambda_bundle("origin_adapter", STAGES["dev"]))
    runtime = tmp_path / "runtime"  # what the Lambda runtime and the Powertools layer put on the path
    runtime.mkdir()
    for module in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six", "aws_lambda_powertools"):
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        (runtime / source.name).symlink_to(source)
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec "{sys._base_executable}" -S "$@"\n')  # -S: no site-packages
    (bare / "python").chmod(0o755)
    model = BackgroundServer(ModelServer().app, name="bundle-model").start()
    env = {
        "PATH": f"{bare}:/usr/bin:/bin",
        "LAMBDA_TASK_ROOT": str(bundle),
        "LAMBDA_RUNTIME_DIR": str(runtime),
        ENDPOINT_NAME_ENV: "inference-cache-dev",
        RESULTS_BUCKET_ENV: "results",
        ENDPOINT_READ_TIMEOUT_ENV: "48",
        EMBEDDINGS_MODEL_ENV: STAGES["dev"].adapter_embeddings_model("models").to_json(),
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": model.url,
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    process = None
    try:
        process, port = _ready(bundle, env)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi [[tokens:4]]"}], "temperature": 0, "stream": True}
        answer = httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers={"cache-control": "no-store"},
                             timeout=30)
        assert answer.status_code == 200, _output(process)
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [e.removeprefix("data: ") for e in answer.text.split("\n\n") if e]
        assert events[-1] == "[DONE]" and len(events) == 1 + 4 + 1 + 1  # role, 4 tokens, finish, [DONE]
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        model.stop()


def _ready(bundle: Path, env: dict, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """run.sh started as Lambda starts it (in the task root, /var/task), on AWS_LWA_PORT, once
    it answers Lambda Web Adapter's readiness check. The port is picked before the app binds
    it, as the adapter's is known ahead; another process that takes it in between makes the
    app exit with "address already in use", and it is started again on another port."""
    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        process = subprocess.Popen([str(bundle / ORIGIN_ADAPTER_HANDLER)], cwd=bundle, env={**env, "AWS_LWA_PORT": str(port)},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while process.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}{HEALTH_ROUTE}", timeout=1).status_code == 200:
                    return process, port
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the app never became ready:\n{_output(process)}")
            time.sleep(0.1)
        output = process.stdout.read().decode()
        if "address already in use" not in output or attempt == tries:
            raise AssertionError(output)


def _output(process: subprocess.Popen) -> str:
    process.terminate()
    return process.communicate(timeout=10)[0].decode()


def test_every_bundled_package_is_pinned_at_the_installed_version():
    """The bundle copies what is installed: each package it carries is pinned in
    requirements.txt, at the version installed, so that every machine ships the same."""
    requirements = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text().lower().splitlines()
    for name in ORIGIN_ADAPTER_PACKAGES:
        installed = importlib.metadata.version(name)
        assert f"{name.lower()}=={installed}" in requirements, name
