"""The mutation score per scoped module, from the last `mutmut run` (mutants/*.meta), with
the survivors tests/mutation/equivalent.txt lists as equivalent counted apart.

    .venv/bin/python -m tests.mutation.report

`make mutation` runs it after mutmut. It exits 1 when a mutant survived that is not
listed as equivalent (a test to write, or a reason to give), and names stale entries of
the list (mutants that no longer exist or are killed now)."""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MUTANTS = ROOT / "mutants"
# mutmut's exit codes of a mutant's test run (mutmut/stats.py).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}
COLUMNS = ("mutants", "killed", "timeout", "survived", "equivalent", "no tests", "not checked")


def lines(name: str) -> list[str]:
    return [line.strip() for line in (HERE / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


def equivalents() -> dict[str, str]:
    """mutant name -> why no test can tell it from the code (one line each: name, reason)."""
    return dict(line.split(None, 1) for line in lines("equivalent.txt"))


def results() -> dict[str, str]:
    """mutant name -> status, for the mutants in scope."""
    scope = lines("scope.txt")
    out = {}
    for meta in sorted(MUTANTS.glob("lambdas/**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in scope):
                out[name] = STATUS.get(code, "suspicious")
    return out


def module(name: str) -> str:
    return name.split(".x", 1)[0]


def main() -> int:
    if not MUTANTS.is_dir():
        print("no mutants/: run `make mutation` first", file=sys.stderr)
        return 2
    found, equivalent = results(), equivalents()
    table: dict[str, Counter] = {}
    unexplained = []
    for name, status in found.items():
        if status == "survived" and name in equivalent:
            status = "equivalent"
        elif status == "survived":
            unexplained.append(name)
        counts = table.setdefault(module(name), Counter())
        counts["mutants"] += 1
        counts[status] += 1
    total = sum(table.values(), Counter())
    print(f"{'module':40} " + " ".join(f"{c:>11}" for c in COLUMNS) + "       score")
    for name, counts in [*sorted(table.items()), ("total", total)]:
        detected = counts["killed"] + counts["timeout"]  # of those checked, less the equivalent ones
        score = detected / max(1, counts["mutants"] - counts["equivalent"] - counts["not checked"])
        print(f"{name:40} " + " ".join(f"{counts[c]:>11}" for c in COLUMNS) + f"  {score:10.1%}")
    stale = sorted(name for name in equivalent if found.get(name) != "survived")
    if stale:
        print(f"\nlisted as equivalent but not a survivor now ({len(stale)}): " + ", ".join(stale))
    if unexplained:
        print(f"\nsurvived, neither killed nor listed as equivalent ({len(unexplained)}; `mutmut show NAME`):")
        print("\n".join(f"  {name}" for name in sorted(unexplained)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
