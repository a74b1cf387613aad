"""What the Lambda assets hold: the runtime package's shared modules, the one component
the function runs, and the stage's edge settings beside them; nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

import inference_cache
from config.stages import STAGES
from inference_cache.cache_settings import EdgeCacheSettings
from inference_cache.contract import SETTINGS_FILE
from stacks.bundles import EDGE_HANDLER, ORIGIN_ADAPTER_HANDLER
from tests.conftest import STAGE_NAMES

PACKAGE = Path(inference_cache.__file__).resolve().parent
SHARED_MODULES = sorted(p.name for p in PACKAGE.glob("*.py"))


def _asset_dir(synthesized, stage: str, stack: str, handler: str) -> Path:
    template_file = synthesized[stage].template_files[stack]
    resources = synthesized[stage].templates[stack]["Resources"]
    (function,) = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler]
    # Assets are staged once for the whole app, beside the stage assemblies.
    asset_hash = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    return template_file.parent.parent / f"asset.{asset_hash}"


@pytest.mark.parametrize(
    ("stack", "handler", "component"),
    [("Edge", EDGE_HANDLER, "edge"), ("Inference", ORIGIN_ADAPTER_HANDLER, "origin_adapter")],
)
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_bundle_holds_the_package_its_component_and_stage_settings(synthesized, stage, stack, handler, component):
    asset = _asset_dir(synthesized, stage, stack, handler)
    held = sorted(str(p.relative_to(asset)) for p in asset.rglob("*") if p.is_file())
    component_modules = sorted(p.name for p in (PACKAGE / component).glob("*.py"))
    assert "handler.py" in component_modules and "cache_decision.py" in SHARED_MODULES
    expected = [f"inference_cache/{m}" for m in SHARED_MODULES] + [f"inference_cache/{component}/{m}" for m in component_modules]
    assert held == sorted([*expected, f"inference_cache/{SETTINGS_FILE}"])
    for relative in expected:
        assert (asset / relative).read_bytes() == (PACKAGE.parent / relative).read_bytes()
    # The handler string names a module the bundle holds.
    module, _, function = handler.rpartition(".")
    assert (asset / (module.replace(".", "/") + ".py")).is_file() and function == "handler"
    baked = EdgeCacheSettings.from_json((asset / "inference_cache" / SETTINGS_FILE).read_text())
    assert baked == STAGES[stage].edge_cache_settings()
