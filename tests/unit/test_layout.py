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
INFRASTRUCTURE = ("config", "stacks", "local_run", "cli", "tests", "bench", "app")
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
        if parts[0] in (".venv", "node_modules", ".tools", "cdk.out", "build", "mutants") or path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        if "sys.path.insert" in text or "sys.path.append" in text or "sys.path[" in text or "syspath_prepend" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# -- no import cycles ------------------------------------------------------------------------
PROJECT_PACKAGES = ("lambdas", "config", "stacks", "cli", "local_run", "bench", "tests")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project by dotted name (packages by their __init__)."""
    modules = {"app": root / "app.py"}
    for package in PROJECT_PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, wherever the import stands (inside a
    function or under TYPE_CHECKING included: a cycle for a type is still a cycle).
    `from a import b` names the module a.b when there is one, else a."""
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_module_imports_in_a_circle():
    graph = import_graph(project_modules())
    assert {"lambdas.edge.handler", "cli.model_publish", "stacks.nag"} <= set(graph)
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_circle_through_a_type_only_import(tmp_path):
    """The check itself: two modules that import each other, one only for a type, inside
    `if TYPE_CHECKING:` and a function, are found; a one-way import is not."""
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stacks.b import B\n"
    )
    (tmp_path / "stacks" / "b.py").write_text("def f():\n    from stacks import a\n")
    (tmp_path / "stacks" / "c.py").write_text("import stacks.a\n")
    (tmp_path / "app.py").write_text("")
    for package in PROJECT_PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    assert import_cycles(import_graph(project_modules(tmp_path))) == [["stacks.a", "stacks.b"]]


def test_the_top_level_is_the_design_cards():
    """The card's six entries, and beside them only the folders docs/layout.md names."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    top_level = {path.split("/")[0] for path in tracked}
    card = {"app.py", "cdk.json", "stacks", "lambdas", "tests", "requirements.txt"}
    beside = {"config", "cli", "bin", "local_run", "bench", "docs"}
    tooling = {".ci", ".gitignore", "Makefile", "README.md", "cdk.context.json", "package.json", "package-lock.json",
               "pytest.ini", "requirements-dev.txt", "ruff.toml", "setup.cfg"}
    assert card <= top_level
    assert top_level - card - beside - tooling == set()
