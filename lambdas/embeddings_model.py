"""What the origin adapter knows of the stage's embeddings model, as one small typed
record: the Inference stack writes it as JSON into the adapter's EMBEDDINGS_MODEL
environment variable; the adapter reads it back (origin_adapter/settings.py). Stdlib
only, beside cache_settings.py: the stage settings (config) build it, as they build the
edge settings record."""

from __future__ import annotations

import json
from collections import namedtuple

_FIELDS = ("endpoint_name", "dimensions", "matryoshka", "vocab_size", "batch_inputs", "batch_read_seconds", "tokenizer_uri")


class EmbeddingsModel(namedtuple("EmbeddingsModel", _FIELDS)):
    """What the origin adapter knows of the stage's embeddings model besides its id and
    version (those key the cache: cache_settings): the endpoint, the vector size, whether
    `dimensions` may shorten it (Matryoshka), the vocabulary token ids must fall in, TEI's
    max client batch size, how long one batch may take (the endpoint client's read
    timeout), and where the tokenizer lies (s3://bucket/key). The stack writes it as JSON
    into EMBEDDINGS_MODEL."""

    __slots__ = ()

    @classmethod
    def from_json(cls, text: str) -> EmbeddingsModel:
        model = cls(**json.loads(text))
        for name in ("dimensions", "vocab_size", "batch_inputs", "batch_read_seconds"):
            value = getattr(model, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"embeddings model {name} must be a positive integer, not {value!r}")
        if type(model.matryoshka) is not bool or not model.endpoint_name or not model.tokenizer_uri.startswith("s3://"):
            raise ValueError("embeddings model: matryoshka must be a bool, endpoint_name set, tokenizer_uri s3://...")
        return model

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)
