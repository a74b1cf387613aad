"""What the README and docs state that the code decides: the stage table matches the
stage settings, and every link stays inside the repository (a clone has nothing else)."""

from __future__ import annotations

import re

import pytest

from config.stages import STAGES
from tests.conftest import ROOT

_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _readme_table(header: str) -> dict[str, list[str]]:
    """The README's table under `header`: its first cell -> the other cells, row by row."""
    text = (ROOT / "README.md").read_text()
    assert header in text
    rows = {}
    for line in text.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _stage_table() -> dict[str, list[str]]:
    return _readme_table("| stage | home region | GPU instance | instances | cache policy | caches scoped per tenant |")


def test_the_readme_stage_table_is_the_settings():
    table = _stage_table()
    assert sorted(table) == sorted(STAGES)
    for name, s in STAGES.items():
        region, instance, instances, policy, per_tenant = table[name]
        assert (region, instance, policy) == (s.home_region, s.endpoint.instance_type, s.cache.policy), name
        assert instances == f"{s.endpoint.min_instances}–{s.endpoint.max_instances}", name
        assert per_tenant.startswith("yes" if s.cache.tenant_scoped else "no"), name


def test_the_readme_embeddings_table_is_the_settings():
    rows = _readme_table(
        "| stage | embeddings model | instance | instances | on-demand price per instance-hour | per hour at the minimum |"
    )
    assert sorted(rows) == sorted(STAGES)
    prices = {}
    for name, s in STAGES.items():
        model, instance, instances, price, at_minimum = rows[name]
        endpoint = s.embeddings.endpoint
        assert (model, instance) == (s.embeddings.model_id, endpoint.instance_type), name
        assert instances == f"{endpoint.min_instances}–{endpoint.max_instances}", name
        # One price per instance type, and the minimum fleet's cost is that many of it.
        assert prices.setdefault(instance, price) == price, name
        assert float(at_minimum.lstrip("$")) == pytest.approx(endpoint.min_instances * float(price.lstrip("$"))), name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(doc):
    for target in _LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web page (a source), or an anchor
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"
