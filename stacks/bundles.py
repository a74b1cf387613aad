"""Lambda bundles assembled at synth: the runtime package's shared modules, the one
component the function runs (inference_cache/edge or inference_cache/origin_adapter),
and the stage's edge settings as JSON beside the package's modules (Lambda@Edge has no
environment variables). Each function imports the package by its path, as the tests
and the local run do."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import inference_cache
from config.settings import StageSettings
from inference_cache.contract import SETTINGS_FILE

PACKAGE_DIR = Path(inference_cache.__file__).resolve().parent
EDGE_HANDLER = "inference_cache.edge.handler.handler"
ORIGIN_ADAPTER_HANDLER = "inference_cache.origin_adapter.handler.handler"


def bundle_files(component: str) -> list[Path]:
    """The package's source files a bundle of `component` holds, relative to the package's parent."""
    files = sorted(PACKAGE_DIR.glob("*.py")) + sorted((PACKAGE_DIR / component).rglob("*.py"))
    return [f.relative_to(PACKAGE_DIR.parent) for f in files]


def lambda_bundle(component: str, settings: StageSettings) -> str:
    """A directory holding inference_cache/*.py, inference_cache/<component>/ and the
    stage's edge settings. The asset hash is the content's, so it is stable."""
    bundle = Path(tempfile.mkdtemp(prefix=f"{component}-{settings.name}-"))
    atexit.register(shutil.rmtree, bundle, True)
    for relative in bundle_files(component):
        (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR.parent / relative, bundle / relative)
    (bundle / PACKAGE_DIR.name / SETTINGS_FILE).write_text(settings.edge_cache_settings().to_json())
    return str(bundle)
