"""docs/cache-key.md states the field table of cache_decision row for row: a reviewer reads
the policy there, so a change to one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lambdas import cache_decision as cd

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache-key.md"
DEFAULTS = {"—": cd.NO, "false": False, "0": 0, "1": 1}
NULL = {"yes": True, "no": False}


def _tables() -> dict[str, list[list[tuple]]]:
    """{section name: [table rows]} for the '### <name>: ...' sections of the field tables."""
    out: dict[str, list[list[tuple]]] = {}
    section, rows = None, None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### (\w+):", line)
        if heading:
            section, rows = heading.group(1), None
            out[section] = []
        elif line.startswith("## "):
            section = None
        elif section and line.startswith("| `"):
            if rows is None:
                rows = []
                out[section].append(rows)
            name, kind, default, null = (cell.strip() for cell in line.strip("|").split("|")[:4])
            rows.append((name.strip("`"), kind, DEFAULTS[default], NULL[null]))
        elif section and not line.startswith("|"):
            rows = None
    return out


@pytest.mark.parametrize(
    "section, index, table",
    [("chat", 0, cd.CHAT_FIELDS), ("completions", 0, cd.COMPLETION_FIELDS), ("embeddings", 0, cd.EMBEDDING_FIELDS),
     ("tgi", 0, cd.TGI_FIELDS), ("tgi", 1, cd.TGI_PARAMETERS)],
)
def test_docs_state_the_field_table(section, index, table):
    rows = _tables()[section][index]
    assert len(rows) == len({name for name, *_ in rows}), "a field listed twice"
    documented = {name: (kind, default, null) for name, kind, default, null in rows}
    actual = {name: spec for name, spec in table.items()}
    assert documented == actual
    # Same types too (0 is not False): the defaults are compared by type and value.
    for name, (_, default, _) in actual.items():
        assert type(documented[name][1]) is type(default), name


def test_every_schema_has_its_section():
    assert set(_tables()) == {"chat", "completions", "embeddings", "tgi"}
