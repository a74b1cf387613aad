"""The local run (`make serve`) started as a subprocess on a free port, once per
session, and stopped (with everything it started) afterwards."""

from __future__ import annotations

import pytest

from local_run.process import launched


@pytest.fixture(scope="session")
def local_run():
    with launched("--stage", "dev") as started:
        yield started
