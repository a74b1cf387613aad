"""The edge function's bundle as an earlier commit shipped it, and cold imports of bundles
measured side by side: the benchmarks compare today's edge function with a baseline.

A baseline bundle is built by the baseline commit's own code (`stacks.bundles.lambda_bundle`
run in an archive of that commit), so it holds exactly what synth shipped then, under the
runtime package's name of the day (`inference_cache/` before the layout of issue 19,
`lambdas/` since). Needs the git history; without it (an archive) there is no baseline.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lambdas.contract import SETTINGS_ENV

ROOT = Path(__file__).resolve().parent.parent
# The runtime package's name now, and before issue 19.
PACKAGE_NAMES = ("lambdas", "inference_cache")
# The last commit before the runtime moved to lambdas/ (issue 19).
LAYOUT_BASELINE_COMMIT = "54f2d71"


def package_source(commit: str, relative: str) -> str | None:
    """A runtime package file (path inside the package, e.g. "edge/lookup.py") at `commit`."""
    for package in PACKAGE_NAMES:
        result = subprocess.run(["git", "show", f"{commit}:{package}/{relative}"], cwd=ROOT, capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout
    return None


def edge_bundle_at(commit: str, stage_name: str) -> tuple[Path, str] | None:
    """(the edge bundle `commit` synthesized for the stage, its handler's module), or None
    without history. The caller removes the directory."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        return None
    out = Path(tempfile.mkdtemp(prefix=f"edge-{commit}-"))
    with tempfile.TemporaryDirectory() as tree:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        code = (
            "import shutil, sys; from config.stages import stage; from stacks import bundles; "
            f"shutil.copytree(bundles.lambda_bundle('edge', stage({stage_name!r})), sys.argv[1], dirs_exist_ok=True); "
            "print(bundles.EDGE_HANDLER.rsplit('.', 1)[0])"
        )
        env = {**os.environ, "PYTHONPATH": tree, "PYTHONDONTWRITEBYTECODE": "1"}
        result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f"building the edge bundle of {commit} failed:\n{result.stderr}")
    return out, result.stdout.strip()


def package_dir(bundle: Path) -> Path:
    """The runtime package inside a bundle, whatever its name."""
    return next(bundle / name for name in PACKAGE_NAMES if (bundle / name).is_dir())


def best_importtimes(bundles: dict[str, tuple[Path, str]], runs: int = 15, then: str = "") -> dict[str, tuple[float, float]]:
    """For each bundle (label -> (directory, module)), from source (no bytecode), best of
    `runs`: the -X importtime cumulative ms of the module (or of `then`, imported after
    it), and the CPU ms (user + sys) of an interpreter importing it minus one running
    `pass` (less sensitive than wall time to other processes on a busy machine). Runs
    alternate between the bundles, so noise hits them alike."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop(SETTINGS_ENV, None)  # each bundle's own cache_settings.json
    best = {label: [float("inf"), float("inf")] for label in bundles}
    bare = float("inf")

    def run(arguments: list[str], cwd: Path) -> tuple[str, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        err = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=cwd, env=env,
                             check=True).stderr
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return err, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000

    with tempfile.TemporaryDirectory() as tmp:
        copies = {label: (shutil.copytree(bundle, Path(tmp) / label), module) for label, (bundle, module) in bundles.items()}
        for _ in range(runs):
            bare = min(bare, run(["-c", "pass"], Path(tmp))[1])
            for label, (copy, module) in copies.items():
                code = f"import {module}" + (f"; import {then}" if then else "")
                measured = then or module
                err, _ = run(["-X", "importtime", "-c", code], copy)
                us = sum(int(line.split("|")[1]) for line in err.splitlines()
                         if line.count("|") == 2 and line.split("|")[2].strip() == measured)
                best[label][0] = min(best[label][0], us / 1000)
                best[label][1] = min(best[label][1], run(["-c", code], copy)[1])
    return {label: (importtime, cpu - bare) for label, (importtime, cpu) in best.items()}
