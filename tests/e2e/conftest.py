"""The local run (`make serve`) started as a subprocess on a free port, once per
session, and stopped (with everything it started) afterwards. Each run has its own API
key store; `api_key` is a key created in it, as `bin/api-keys --local create` makes one."""

from __future__ import annotations

import openai
import pytest

from local_run.process import create_api_key, launched


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("dev-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "key_store": key_store, "api_key": create_api_key(key_store, "e2e")["key"]}


@pytest.fixture
def client(local_run):
    """The official openai client against the local run, with the run's API key; no
    retries, so each call is one request."""
    return openai.OpenAI(base_url=local_run["listening"] + "/v1", api_key=local_run["api_key"], max_retries=0)
