"""Where a stage's model lives, and pinning a stage to a published model version.

The two places that know how the stage settings are laid out: `stage_target` (imports
them lazily, so `bin/model-publish --bucket ...` never pays for them) and
`STAGES_FILE`, the source file `pin_model_version` edits.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES_FILE = ROOT / "config" / "stages.py"


class StageError(Exception):
    """A stage cannot be targeted or pinned (a one-line message for the user)."""


def stage_target(stage_name: str) -> tuple[str, str]:
    """(model bucket, base prefix) of a stage. The base prefix is the stage's model
    prefix without its version: versions are published under `{base}{version}/`."""
    from config.stages import stage  # lazy: stage settings are only needed with --stage

    try:
        s = stage(stage_name)
    except KeyError as e:
        raise StageError(str(e.args[0])) from None
    versioned = s.model.s3_prefix.rstrip("/")
    base = versioned.rsplit("/", 1)[0] + "/" if "/" in versioned else ""
    return s.model_bucket_name, base


def stage_region(stage_name: str) -> str:
    """The stage's home region: where its model bucket is."""
    from config.stages import stage  # lazy, as in stage_target

    try:
        return stage(stage_name).home_region
    except KeyError as e:
        raise StageError(str(e.args[0])) from None


_STAGE_START = re.compile(r"""\bname\s*=\s*["']([\w-]+)["']""")
_MODEL_VERSION = re.compile(r"""(\bmodel_version\s*=\s*)(["'])([^"']*)\2""")
_S3_PREFIX = re.compile(r"""(\bs3_prefix\s*=\s*)(["'])([^"']*)\2""")
_STAGE_SETTINGS_CALL = "StageSettings("


def _stage_block(text: str, stage_name: str) -> tuple[int, int]:
    """Span of the stage's settings: from its `name="..."` to the next stage's
    `StageSettings(` (or the end of the file)."""
    starts = [m for m in _STAGE_START.finditer(text) if m.group(1) == stage_name]
    # Only the name= that opens a StageSettings(...) counts (not a domain's name=...).
    owned = []
    for m in starts:
        opener = text.rfind(_STAGE_SETTINGS_CALL, 0, m.start())
        between = text[opener + len(_STAGE_SETTINGS_CALL) : m.start()]
        if opener >= 0 and between.strip() in ("", ","):
            owned.append(m)
    if len(owned) != 1:
        raise StageError(f"found {len(owned)} stages named {stage_name!r} in the stages file; pin by hand")
    start = owned[0].start()
    end = text.find(_STAGE_SETTINGS_CALL, start)
    return start, len(text) if end < 0 else end


def pin_model_version(stages_file: Path, stage_name: str, version: str) -> bool:
    """Rewrites the stage's `model_version="..."` to version, and its `s3_prefix` too when
    that ends in the old version (the endpoint loads `{base}{version}/`). A text edit
    limited to the stage's block: the rest of the file is kept byte for byte. Returns
    False when the stage was already pinned to version."""
    if not re.fullmatch(r"[\w.-]{1,64}", version):
        raise StageError(f"model version {version!r} is not a valid settings value")
    text = stages_file.read_text()
    start, end = _stage_block(text, stage_name)
    block = text[start:end]
    versions = list(_MODEL_VERSION.finditer(block))
    if len(versions) != 1:
        raise StageError(
            f"stage {stage_name!r} has {len(versions)} model_version settings in {stages_file}; pin by hand"
        )
    old = versions[0].group(3)
    if old == version:
        return False
    block = _MODEL_VERSION.sub(lambda m: f"{m.group(1)}{m.group(2)}{version}{m.group(2)}", block)

    def new_prefix(m: re.Match) -> str:
        prefix = m.group(3)
        if prefix.endswith(f"/{old}/"):
            prefix = prefix[: -len(old) - 1] + f"{version}/"
        return f"{m.group(1)}{m.group(2)}{prefix}{m.group(2)}"

    block = _S3_PREFIX.sub(new_prefix, block)
    stages_file.write_text(text[:start] + block + text[end:])
    return True
