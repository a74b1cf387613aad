"""The local run (`make serve`) started as a subprocess on a free port, once per
session, and stopped (with everything it started) afterwards. Each run has its own API
key store; `api_key` is a key created in it, as `bin/api-keys --local create` makes one."""

from __future__ import annotations

import pytest

from local_run.process import create_api_key, launched


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("dev-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "key_store": key_store, "api_key": create_api_key(key_store, "e2e")["key"]}
