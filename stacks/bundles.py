"""Lambda bundles assembled at synth: the runtime package's shared modules, the one
component the function runs (lambdas/edge or lambdas/origin_adapter),
and the stage's edge settings as JSON beside the package's modules (Lambda@Edge has no
environment variables). Each function imports the package by its path, as the tests
and the local run do.

The origin adapter's bundle also holds its entry point (run.sh, at the bundle's root,
which Lambda Web Adapter runs) and the pure-Python packages of its web app that neither
the Lambda runtime nor the Powertools layer provides, copied from the installed
distributions of the pinned requirements: synth needs no network and no Docker."""

from __future__ import annotations

import atexit
import importlib.metadata
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import lambdas
from config.settings import StageSettings
from lambdas.contract import SETTINGS_FILE

PACKAGE_DIR = Path(lambdas.__file__).resolve().parent
EDGE_HANDLER = "lambdas.edge.handler.handler"
# Lambda Web Adapter's bootstrap executes the handler as a file of the bundle.
ORIGIN_ADAPTER_HANDLER = "run.sh"
ORIGIN_ADAPTER_ENTRY_POINT = PACKAGE_DIR / "origin_adapter" / ORIGIN_ADAPTER_HANDLER
# The web server and framework (uvicorn, Starlette) and what they import on Python 3.14.
ORIGIN_ADAPTER_PACKAGES = ("uvicorn", "h11", "click", "starlette", "anyio", "idna", "typing_extensions")
# Files of an installed distribution that say how it was installed, not what it is: they
# differ between machines and would change the asset hash.
_INSTALL_RECORDS = frozenset(("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"))


def bundle_files(component: str) -> list[Path]:
    """The package's source files a bundle of `component` holds, relative to the package's parent."""
    files = sorted(PACKAGE_DIR.glob("*.py")) + sorted((PACKAGE_DIR / component).rglob("*.py"))
    return [f.relative_to(PACKAGE_DIR.parent) for f in files]


def vendored_files(distributions: tuple[str, ...]) -> dict[PurePosixPath, Path]:
    """{path in the bundle: installed file} for the given distributions: their modules
    and metadata, no bytecode, no console scripts. A compiled extension fails synth: the
    bundle must run on the function's architecture whatever machine synthesizes it."""
    files: dict[PurePosixPath, Path] = {}
    for name in distributions:
        distribution = importlib.metadata.distribution(name)
        for entry in distribution.files or ():
            relative = PurePosixPath(str(entry))
            if relative.parts[0] == ".." or "__pycache__" in relative.parts or relative.suffix == ".pyc":
                continue
            if relative.parent.name.endswith(".dist-info") and relative.name in _INSTALL_RECORDS:
                continue
            if relative.suffix in (".so", ".pyd"):
                raise RuntimeError(f"{name} ships a compiled extension ({relative}); the bundle takes pure Python only")
            files[relative] = Path(distribution.locate_file(entry))
    return files


def vendored_modules(distributions: tuple[str, ...]) -> set[str]:
    """The top-level modules those distributions put in a bundle (what code may import)."""
    return {
        relative.parts[0].removesuffix(".py")
        for relative in vendored_files(distributions)
        if not relative.parts[0].endswith(".dist-info")
    }


def lambda_bundle(component: str, settings: StageSettings) -> str:
    """A directory holding lambdas/*.py, lambdas/<component>/ and the
    stage's edge settings (and, for the origin adapter, its entry point and web app
    packages). The asset hash is the content's, so it is stable."""
    bundle = Path(tempfile.mkdtemp(prefix=f"{component}-{settings.name}-"))
    atexit.register(shutil.rmtree, bundle, True)
    for relative in bundle_files(component):
        (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR.parent / relative, bundle / relative)
    (bundle / PACKAGE_DIR.name / SETTINGS_FILE).write_text(settings.edge_cache_settings().to_json())
    if component == "origin_adapter":
        for relative, source in vendored_files(ORIGIN_ADAPTER_PACKAGES).items():
            (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, bundle / relative)
        entry_point = bundle / ORIGIN_ADAPTER_HANDLER
        shutil.copyfile(ORIGIN_ADAPTER_ENTRY_POINT, entry_point)
        entry_point.chmod(0o755)  # Lambda runs it: the asset zip keeps the mode
    return str(bundle)
