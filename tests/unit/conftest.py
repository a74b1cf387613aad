"""Fixtures shared by the unit tests."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

import lambdas
from config.stages import STAGES
from lambdas.contract import LOOKUP_BASE_ENV, SETTINGS_ENV, SETTINGS_FILE
from local_run import cloudfront_rules
from local_run.s3 import LocalS3

# Loaded afresh per test (its settings are read at import), from the package's own file.
EDGE_HANDLER = Path(lambdas.__file__).parent / "edge" / "handler.py"


@pytest.fixture
def local_s3_environment(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 (LocalS3), reached by boto3 clients through the
    environment (endpoint, path-style addressing, local credentials), as the local run
    points the origin adapter at it."""
    (tmp_path / "aws_config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    with LocalS3() as s3:
        for name, value in {"AWS_ENDPOINT_URL_S3": s3.url, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "aws_config")}.items():
            monkeypatch.setenv(name, value)
        yield s3


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
        module.handler = held_to_cloudfronts_rules(module.handler)
        return module

    return load


def held_to_cloudfronts_rules(handler):
    """The edge handler, every result of it checked as CloudFront checks a Lambda@Edge
    result (local_run/cloudfront_rules.py): a test whose handler output CloudFront would
    refuse (502) fails, whatever else it asserts. The event must be one CloudFront sends."""

    def checked(event, context):
        before = copy.deepcopy(event)
        assert cloudfront_rules.check_event(before) == [], "CloudFront never sends such an event"
        result = handler(event, context)
        problems = cloudfront_rules.violations(before, result)
        assert problems == [], f"CloudFront would refuse this result (502): {problems}"
        return result

    return checked
