"""Which way imports go (docs/layout.md): the runtime package imports nothing from the
infrastructure side; the edge function imports only the standard library and the
package's stdlib-only modules; nothing edits sys.path outside bin/ entry points."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from stacks.bundles import ORIGIN_ADAPTER_PACKAGES, vendored_modules
from tests.conftest import ROOT

RUNTIME = ROOT / "lambdas"
INFRASTRUCTURE = ("config", "stacks", "local_run", "cli", "tests", "bench", "scripts", "app")
# What the Lambda runtime and the Powertools layer provide besides the standard library
# (origin adapter only; urllib3 comes with botocore), and what its bundle carries itself.
ORIGIN_ADAPTER_LIBRARIES = ("boto3", "botocore", "urllib3", "aws_lambda_powertools")
ORIGIN_ADAPTER_BUNDLED = vendored_modules(ORIGIN_ADAPTER_PACKAGES)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("module", sorted(RUNTIME.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_imports_nothing_from_the_infrastructure(module):
    infrastructure = {name for name in imported_modules(module) if top(name) in INFRASTRUCTURE}
    assert not infrastructure, f"{module.relative_to(ROOT)} imports {sorted(infrastructure)}"


def _edge_closure() -> dict[str, set[str]]:
    """Every package module the edge handler reaches, with what each imports."""
    seen: dict[str, set[str]] = {}
    todo = ["lambdas.edge.handler"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        seen[name] = imported_modules(path)
        todo += [m for m in seen[name] if top(m) == "lambdas"]
        # `from lambdas import cache_decision` names modules inside the package.
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and top(node.module) == "lambdas":
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    if (ROOT / (candidate.replace(".", "/") + ".py")).exists():
                        todo.append(candidate)
    return seen


def test_edge_function_imports_only_the_standard_library_and_the_package():
    closure = _edge_closure()
    assert {"lambdas.edge.handler", "lambdas.cache_decision", "lambdas.contract"} <= set(closure)
    for module, names in closure.items():
        foreign = {n for n in names if top(n) != "lambdas" and top(n) not in sys.stdlib_module_names}
        assert not foreign, f"{module} imports {sorted(foreign)}"
        assert not any(n.startswith("lambdas.origin_adapter") for n in names), module


def test_origin_adapter_imports_only_the_package_the_stdlib_and_the_lambda_libraries():
    for module in sorted((RUNTIME / "origin_adapter").glob("*.py")):
        allowed = {"lambdas", *ORIGIN_ADAPTER_LIBRARIES, *ORIGIN_ADAPTER_BUNDLED}
        foreign = {n for n in imported_modules(module) if top(n) not in allowed and top(n) not in sys.stdlib_module_names}
        assert not foreign, f"{module.relative_to(ROOT)} imports {sorted(foreign)}"


def test_no_python_module_edits_sys_path():
    offenders = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in (".venv", "node_modules", ".tools", "cdk.out", "build") or path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        if "sys.path.insert" in text or "sys.path.append" in text or "sys.path[" in text or "syspath_prepend" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
