"""The README's examples, run as written: a newcomer copies them, so they must work.

Blocks marked `<!-- README test: offline -->` run from a scratch directory that looks like
the repository's root (its entries linked); blocks marked `<!-- README test: local run -->`
run against a local run of their own (a MISS in the README must be a first request).
Console blocks run line by line in one bash, each `$ ` line's output compared with the
lines printed under it; Python blocks run with the project's `.venv/bin/python`, their
output compared with the `# ` comment lines that end them. In an expected line `…`
matches any text; a line that is only `...` matches any number of lines; in a block marked
`times vary` every decimal number matches any decimal number. The only edits the test
makes to a block: the local run's port for 8080, and the key store of its own local run
(through bin/api-keys' environment variable, not the text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.api_keys import LOCAL_KEY_STORE_ENV
from local_run.process import launched
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
_MARKER = re.compile(r"<!-- README test: (?P<kind>[^>]*?) -->\s*\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
_DECIMAL = re.compile(r"\d+\.\d+")


@dataclass(frozen=True)
class Example:
    line: int  # where the block starts in the README (for messages)
    lang: str  # console | python
    body: str
    local_run: bool
    times_vary: bool


def readme_examples(text: str) -> list[Example]:
    examples = []
    for match in _MARKER.finditer(text):
        kind = match["kind"]
        examples.append(
            Example(
                line=text.count("\n", 0, match.start("body")) + 1,
                lang=match["lang"],
                body=match["body"],
                local_run=kind.startswith("local run"),
                times_vary="times vary" in kind,
            )
        )
    return examples


def console_steps(body: str) -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)] of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def python_expected(body: str) -> list[str]:
    """The `# ` comment lines that end a Python block, without the `# `."""
    lines = body.splitlines()
    expected: list[str] = []
    while lines and lines[-1].startswith("#"):
        expected.insert(0, lines.pop()[2:])
    return expected


def matches(expected: list[str], actual: list[str], *, times_vary: bool) -> bool:
    """Line by line: `…` any text within a line, a `...` line any run of lines."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() in ("...", "…"):
        return any(matches(rest, actual[i:], times_vary=times_vary) for i in range(len(actual) + 1))
    return bool(actual) and _line_matches(head, actual[0], times_vary) and matches(rest, actual[1:], times_vary=times_vary)


def _line_matches(expected: str, actual: str, times_vary: bool) -> bool:
    pattern = "".join(
        ".*" if part == "…" else (r"\d+\.\d+" if times_vary and _DECIMAL.fullmatch(part) else re.escape(part))
        for part in re.split(r"(…|\d+\.\d+)", expected)
        if part
    )
    return re.fullmatch(pattern, actual) is not None


def test_the_matcher_can_fail():
    assert matches(["a …", "...", "z"], ["a b c", "x", "y", "z"], times_vary=False)
    assert not matches(["a …", "z"], ["a b", "y"], times_vary=False)
    assert matches(["0.26 s 'x'"], ["1.30 s 'x'"], times_vary=True)
    assert not matches(["0.26 s 'x'"], ["1.30 s 'x'"], times_vary=False)
    assert not matches(["41.2%"], ["41.3%"], times_vary=False)
    assert not matches(["MISS"], ["MISS", "extra"], times_vary=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch directory that is the repository's root to the examples (every top-level
    entry linked), so that what they write (requests.jsonl, ...) stays out of the clone."""
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "build"):
            (work / entry.name).symlink_to(entry)
    return work


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """A local run of the README's own: its first request must be a MISS."""
    key_store = tmp_path_factory.mktemp("readme-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "key_store": key_store}


def _run_console(example: Example, cwd: Path, env: dict) -> None:
    steps = console_steps(example.body)
    marker = "__README_STEP_DONE__"
    script = "set -o pipefail\n" + "".join(f"{{ {command}\n}} 2>&1\necho {marker} $?\n" for command, _ in steps)
    result = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    outputs = result.stdout.split(f"{marker} ")
    assert len(outputs) == len(steps) + 1, f"README line {example.line}: the block stopped early:\n{result.stdout}{result.stderr}"
    for i, (command, expected) in enumerate(steps):
        status, _, _ = outputs[i + 1].partition("\n")
        output = outputs[i].split("\n", 1)[1] if i else outputs[i]
        actual = output.splitlines()
        assert status.strip() == "0", f"README line {example.line}: `{command}` exited {status}:\n{output}"
        assert matches(expected, actual, times_vary=example.times_vary), (
            f"README line {example.line}: `{command}` printed\n{output}\nwhere the README shows\n" + "\n".join(expected)
        )


def _run_python(example: Example, cwd: Path, env: dict) -> None:
    python = ROOT / ".venv" / "bin" / "python"
    result = subprocess.run(
        [str(python if python.exists() else sys.executable), "-"],
        input=example.body,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"README line {example.line}:\n{result.stderr}"
    expected = python_expected(example.body)
    assert expected, f"README line {example.line}: a Python example shows what it prints"
    assert matches(expected, result.stdout.splitlines(), times_vary=example.times_vary), (
        f"README line {example.line} printed\n{result.stdout}\nwhere the README shows\n" + "\n".join(expected)
    )


def _environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INFERENCE_CACHE_"))}
    env.pop("KEY", None)
    return env


def test_offline_examples_work_as_written(workdir):
    examples = [e for e in readme_examples(README.read_text()) if not e.local_run]
    assert examples, "the README marks its offline examples"
    for example in examples:
        assert example.lang == "console"
        _run_console(example, workdir, _environment())


def test_local_run_examples_work_as_written(workdir, readme_run):
    """In README order, in one environment: the console block exports KEY for the Python
    examples, as a reader's terminal would."""
    examples = [e for e in readme_examples(README.read_text()) if e.local_run]
    assert [e.lang for e in examples] == ["console", "python", "python", "console"]
    port = readme_run["listening"].rsplit(":", 1)[1]
    env = {**_environment(), LOCAL_KEY_STORE_ENV: str(readme_run["key_store"])}
    for example in examples:
        example = Example(example.line, example.lang, example.body.replace("8080", port), True, example.times_vary)
        if example.lang == "console":
            # KEY, exported by the block, reaches the Python examples that follow.
            _run_console(
                Example(example.line, "console", example.body + "\n$ env | grep '^KEY=' > key.env", True, example.times_vary),
                workdir,
                env,
            )
            env["KEY"] = (workdir / "key.env").read_text().strip().removeprefix("KEY=")
        else:
            _run_python(example, workdir, env)
