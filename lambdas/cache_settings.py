"""The edge settings: what the cache decision, the edge function and the origin adapter
decide with, as one small typed record.

The stage's typed settings (config.settings) write it at synth as cache_settings.json
into each Lambda bundle (Lambda@Edge has no environment variables); the runtime reads
it back with `load()`. Every field is required: defaults live on the infrastructure
side only, and a field that one side knows and the other does not fails loudly.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

from lambdas.contract import SETTINGS_ENV, SETTINGS_FILE

_FIELDS = (
    "stage",  # str
    "routes",  # tuple[str, ...]: routes whose requests are decided (others pass through)
    "results_path",  # str: distribution path of stored answers, e.g. "/_cache/"
    "model_id",  # str
    "model_version",  # str: part of every key, so a new model starts a fresh cache
    "embeddings_model_id",  # str | None: the embeddings model; None: /v1/embeddings is 404 model_not_found
    "embeddings_model_version",  # str | None: part of every /v1/embeddings key
    # The stage's CacheSettings (config.settings), field for field:
    "policy",  # "deterministic" | "all"
    "default_ttl_seconds",  # int
    "max_ttl_seconds",  # int
    "tenant_scoped",  # bool
    "excluded_fields",  # tuple[str, ...]: top-level fields dropped from the canonical body
    "declared_server_defaults",  # dict[str, number]: sent with this value = absent
    "max_body_bytes",  # int
    "max_nesting_depth",  # int
    "lookup_timeout_ms",  # int
)
_TUPLES = ("routes", "excluded_fields")


# A named tuple (cheap to import at cold start), immutable like the stage settings.
class EdgeCacheSettings(namedtuple("EdgeCacheSettings", _FIELDS)):
    __slots__ = ()

    @classmethod
    def from_dict(cls, values: dict) -> EdgeCacheSettings:
        """Exactly the record's fields (TypeError on a missing or unknown one)."""
        values = dict(values)
        for name in _TUPLES:
            if name in values:
                values[name] = tuple(values[name])
        if "declared_server_defaults" in values:
            values["declared_server_defaults"] = dict(values["declared_server_defaults"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> EdgeCacheSettings:
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        values = self._asdict()
        for name in _TUPLES:
            values[name] = list(values[name])
        return json.dumps(values, indent=2, sort_keys=True) + "\n"


def load(path: str | None = None) -> EdgeCacheSettings:
    """`path`, else $INFERENCE_CACHE_SETTINGS, else cache_settings.json beside this module
    (where the bundles put it)."""
    path = path or os.environ.get(SETTINGS_ENV) or os.path.join(os.path.dirname(os.path.abspath(__file__)), SETTINGS_FILE)
    with open(path, "rb") as f:
        return EdgeCacheSettings.from_json(f.read())
