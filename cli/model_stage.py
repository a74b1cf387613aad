"""Where a stage's model lives, and pinning a stage to a published model version.

The two places that know how the stage settings are laid out: `stage_target` (imports
them lazily, so `bin/model-publish --bucket ...` never pays for them) and
`STAGES_FILE`, the source file `pin_model_version` edits (the string literals of one
model's settings, found in the file's syntax tree). A stage has an LLM (`model=`) and
may have an embeddings model (`embeddings=`); each is pinned on its own.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES_FILE = ROOT / "config" / "stages.py"


class StageError(Exception):
    """A stage cannot be targeted or pinned (a one-line message for the user)."""


def stage_target(stage_name: str, *, embeddings: bool = False) -> tuple[str, str]:
    """(model bucket, base prefix) of a stage's LLM, or of its embeddings model. The base
    prefix is the model's prefix without its version: versions are published under
    `{base}{version}/`."""
    from config.stages import stage  # lazy: stage settings are only needed with --stage

    try:
        s = stage(stage_name)
    except KeyError as e:
        raise StageError(str(e.args[0])) from None
    if embeddings and s.embeddings is None:
        raise StageError(f"stage {stage_name!r} serves no embeddings model")
    versioned = (s.embeddings if embeddings else s.model).s3_prefix.rstrip("/")
    base = versioned.rsplit("/", 1)[0] + "/" if "/" in versioned else ""
    return s.model_bucket_name, base


def stage_region(stage_name: str) -> str:
    """The stage's home region: where its model bucket is."""
    from config.stages import stage  # lazy, as in stage_target

    try:
        return stage(stage_name).home_region
    except KeyError as e:
        raise StageError(str(e.args[0])) from None


_STAGE_SETTINGS_CALL = "StageSettings"


def _model_call(tree: ast.Module, stage_name: str, field: str) -> ast.Call:
    """The `ModelSettings(...)` (field "model") or `EmbeddingsSettings(...)` (field
    "embeddings") call inside the stage's `StageSettings(name="...", ...)`."""
    stages = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == _STAGE_SETTINGS_CALL
        and any(k.arg == "name" and isinstance(k.value, ast.Constant) and k.value.value == stage_name for k in node.keywords)
    ]
    if len(stages) != 1:
        raise StageError(f"found {len(stages)} stages named {stage_name!r} in the stages file; pin by hand")
    values = [k.value for k in stages[0].keywords if k.arg == field]
    if len(values) != 1 or not isinstance(values[0], ast.Call):
        raise StageError(f"stage {stage_name!r} has no {field}=...Settings(...) written out in the stages file; pin by hand")
    return values[0]


def _literal(call: ast.Call, name: str) -> ast.Constant | None:
    values = [k.value for k in call.keywords if k.arg == name]
    if len(values) == 1 and isinstance(values[0], ast.Constant) and isinstance(values[0].value, str):
        return values[0]
    return None


def pin_model_version(stages_file: Path, stage_name: str, version: str, *, embeddings: bool = False) -> bool:
    """Rewrites the `model_version="..."` of the stage's LLM (or embeddings model) to
    version, and its `s3_prefix` too when that ends in the old version (the endpoint loads
    `{base}{version}/`). Only those string literals change: the rest of the file is kept
    byte for byte. Returns False when the model was already pinned to version."""
    if not re.fullmatch(r"[\w.-]{1,64}", version):
        raise StageError(f"model version {version!r} is not a valid settings value")
    source = stages_file.read_bytes()
    call = _model_call(ast.parse(source), stage_name, "embeddings" if embeddings else "model")
    current = _literal(call, "model_version")
    if current is None:
        raise StageError(f"stage {stage_name!r}: model_version is not a string literal in {stages_file}; pin by hand")
    old = current.value
    if old == version:
        return False
    edits = [(current, version)]
    prefix = _literal(call, "s3_prefix")
    if prefix is not None and prefix.value.endswith(f"/{old}/"):
        edits.append((prefix, prefix.value[: -len(old) - 1] + f"{version}/"))
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    # Right to left, so that earlier offsets stay valid (ast offsets are UTF-8 bytes).
    for node, value in sorted(edits, key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        quote = source[begin : begin + 1].decode()
        source = source[:begin] + f"{quote}{value}{quote}".encode() + source[end:]
    stages_file.write_bytes(source)
    return True
