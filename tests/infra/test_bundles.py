"""What the Lambda assets hold: the handler, the one shared cache decision module, and
the stage's cache settings; nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.stages import STAGES
from tests.conftest import STAGE_NAMES

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"
SHARED_MODULE = LAMBDAS / "shared" / "cache_decision.py"


def _asset_dir(synthesized, stage: str, stack: str, handler_function) -> Path:
    template_file = synthesized[stage].template_files[stack]
    resources = synthesized[stage].templates[stack]["Resources"]
    (function,) = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function" and handler_function(r["Properties"])]
    # Assets are staged once for the whole app, beside the stage assemblies.
    asset_hash = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    return template_file.parent.parent / f"asset.{asset_hash}"


@pytest.mark.parametrize(
    ("stack", "is_function", "code_dir"),
    [
        ("Edge", lambda p: str(p.get("FunctionName", "")).endswith("-cache-key"), "edge"),
        ("Inference", lambda p: p.get("Handler") == "handler.handler", "origin_adapter"),
    ],
)
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_bundle_holds_handler_shared_module_and_stage_settings(synthesized, stage, stack, is_function, code_dir):
    asset = _asset_dir(synthesized, stage, stack, is_function)
    handler_files = sorted(p.name for p in (LAMBDAS / code_dir).glob("*.py"))
    assert "handler.py" in handler_files
    assert sorted(p.name for p in asset.iterdir()) == sorted([*handler_files, "cache_decision.py", "cache_settings.json"])
    for name in handler_files:
        assert (asset / name).read_bytes() == (LAMBDAS / code_dir / name).read_bytes()
    assert (asset / "cache_decision.py").read_bytes() == SHARED_MODULE.read_bytes()
    assert json.loads((asset / "cache_settings.json").read_text()) == STAGES[stage].edge_cache_config()
