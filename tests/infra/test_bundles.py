"""What the Lambda assets hold: the runtime package's shared modules, the one component
the function runs, and the stage's edge settings beside them; the origin adapter's also
its entry point and its web app's pure-Python packages; nothing else."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import inference_cache
from config.stages import STAGES
from inference_cache.cache_settings import EdgeCacheSettings
from inference_cache.contract import SETTINGS_FILE
from stacks.bundles import (
    EDGE_HANDLER,
    ORIGIN_ADAPTER_ENTRY_POINT,
    ORIGIN_ADAPTER_HANDLER,
    ORIGIN_ADAPTER_PACKAGES,
    vendored_files,
    vendored_modules,
)
from tests.conftest import STAGE_NAMES

PACKAGE = Path(inference_cache.__file__).resolve().parent
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
    return [f"inference_cache/{m}" for m in SHARED_MODULES] + [f"inference_cache/{component}/{m}" for m in component_modules]


def _held(asset: Path) -> list[str]:
    return sorted(str(p.relative_to(asset)) for p in asset.rglob("*") if p.is_file())


def _check_package_and_settings(asset: Path, stage: str, component: str) -> None:
    for relative in _package_files(component):
        assert (asset / relative).read_bytes() == (PACKAGE.parent / relative).read_bytes()
    baked = EdgeCacheSettings.from_json((asset / "inference_cache" / SETTINGS_FILE).read_text())
    assert baked == STAGES[stage].edge_cache_settings()


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_bundle_holds_the_package_its_component_and_stage_settings(synthesized, stage):
    asset = asset_dir(synthesized, stage, "Edge", EDGE_HANDLER)
    assert "cache_decision.py" in SHARED_MODULES
    assert _held(asset) == sorted([*_package_files("edge"), f"inference_cache/{SETTINGS_FILE}"])
    _check_package_and_settings(asset, stage, "edge")
    # The handler string names a module the bundle holds.
    module, _, function = EDGE_HANDLER.rpartition(".")
    assert (asset / (module.replace(".", "/") + ".py")).is_file() and function == "handler"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_bundle_holds_its_entry_point_and_web_app_packages(synthesized, stage):
    asset = asset_dir(synthesized, stage, "Inference", ORIGIN_ADAPTER_HANDLER)
    vendored = vendored_files(ORIGIN_ADAPTER_PACKAGES)
    assert _held(asset) == sorted(
        [*_package_files("origin_adapter"), f"inference_cache/{SETTINGS_FILE}", ORIGIN_ADAPTER_HANDLER, *map(str, vendored)]
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
