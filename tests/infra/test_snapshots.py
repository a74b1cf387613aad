"""JSON snapshots of every stack of every stage, asset hashes masked.

A change to any synthesized template shows up here as a diff to review; update with
`.venv/bin/python -m pytest tests/infra/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import re

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from tests.conftest import STACK_NAMES, STAGE_NAMES

# Asset hashes (64 hex) and the code hash CDK appends to Lambda version logical ids.
_ASSET_HASH = re.compile(r"[0-9a-f]{64}")
_VERSION_ID = re.compile(r"(CurrentVersion[0-9A-F]{8})[0-9a-f]{32}")


def mask_asset_hashes(value):
    if isinstance(value, dict):
        return {mask_asset_hashes(k): mask_asset_hashes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_asset_hashes(v) for v in value]
    if isinstance(value, str):
        return _VERSION_ID.sub(r"\1<code-hash>", _ASSET_HASH.sub("<asset-hash>", value))
    return value


@pytest.fixture
def json_snapshot(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("stack", STACK_NAMES)
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_template_matches_snapshot(synthesized, json_snapshot, stage, stack):
    assert mask_asset_hashes(synthesized[stage].templates[stack]) == json_snapshot


def test_masking_hides_only_hashes():
    masked = mask_asset_hashes(
        {
            "S3Key": "0ccbad00a0b97f4a52b3e7c2ca4f0c7837980b12ed231bc12eb4b3ff0a7d1a07.zip",
            "FnCurrentVersion4BFEA9E9" + "0123456789abcdef0123456789abcdef": {"Timeout": 5},
            "Name": "inference-cache-dev",
        }
    )
    assert masked == {
        "S3Key": "<asset-hash>.zip",
        "FnCurrentVersion4BFEA9E9<code-hash>": {"Timeout": 5},
        "Name": "inference-cache-dev",
    }
