"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import lambdas
from config.stages import STAGES
from lambdas.contract import LOOKUP_BASE_ENV, SETTINGS_ENV, SETTINGS_FILE

# Loaded afresh per test (its settings are read at import), from the package's own file.
EDGE_HANDLER = Path(lambdas.__file__).parent / "edge" / "handler.py"


@pytest.fixture
def load_edge_handler(tmp_path, monkeypatch):
    """load(lookup_base, **settings overrides) -> the edge handler module, imported with the
    dev stage's edge settings and its /_cache/ lookups sent to `lookup_base`."""

    def load(lookup_base: str, **overrides):
        config = STAGES["dev"].edge_cache_settings()._replace(**overrides)
        settings = tmp_path / SETTINGS_FILE
        settings.write_text(config.to_json())
        monkeypatch.setenv(SETTINGS_ENV, str(settings))
        monkeypatch.setenv(LOOKUP_BASE_ENV, lookup_base)
        # Under its own name (not in sys.modules): mutmut activates a mutant by module name.
        spec = importlib.util.spec_from_file_location("lambdas.edge.handler", EDGE_HANDLER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
