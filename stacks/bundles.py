"""Lambda bundles assembled at synth: handler code, the shared cache decision module,
and the stage's cache settings as JSON (Lambda@Edge has no environment variables)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from stacks.settings import StageSettings

LAMBDAS_DIR = Path(__file__).resolve().parent.parent / "lambdas"
SHARED_DIR = LAMBDAS_DIR / "shared"
CACHE_SETTINGS_FILE = "cache_settings.json"


def cache_settings_json(settings: StageSettings) -> str:
    return json.dumps(settings.edge_cache_config(), indent=2, sort_keys=True) + "\n"


def lambda_bundle(function_dir: str, settings: StageSettings) -> str:
    """A directory holding lambdas/<function_dir>/*.py, lambdas/shared/*.py and the
    stage's cache settings. The asset hash is the content's, so it is stable."""
    bundle = Path(tempfile.mkdtemp(prefix=f"{function_dir}-{settings.name}-"))
    atexit.register(shutil.rmtree, bundle, True)
    for source in (LAMBDAS_DIR / function_dir, SHARED_DIR):
        for module in sorted(source.glob("*.py")):
            shutil.copyfile(module, bundle / module.name)
    (bundle / CACHE_SETTINGS_FILE).write_text(cache_settings_json(settings))
    return str(bundle)
