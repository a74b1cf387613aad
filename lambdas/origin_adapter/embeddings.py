"""OpenAI embeddings from a Text Embeddings Inference (TEI) container: the one place that
translates between the two.

OpenAI's request (`input` as a string, strings, token ids or lists of token ids;
`encoding_format` float or base64; `dimensions`; `user`) is checked here and answered
400 in the OpenAI shape when it asks for what the model cannot do. It goes to the
container as TEI's own embed request on /invocations (`inputs`, `normalize`, `truncate`,
`dimensions`), at most `batch_inputs` inputs per call (TEI's max client batch size), one
call after the other: a request of 2048 inputs never holds the model longer than one
batch at a time, and other requests' inputs enter TEI's queue between its calls. TEI
answers a JSON array of vectors; the answer goes back in the OpenAI shape, with `usage`
counted by the model's own tokenizer (wordpiece.py). A container error keeps its status
(a 4xx stays a 4xx) except TEI's 424, which is its own inference failure (a 502).
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections import namedtuple
from collections.abc import Callable

from lambdas.contract import EMBEDDINGS_MAX_INPUTS
from lambdas.embeddings_model import EmbeddingsModel
from lambdas.origin_adapter.endpoint import EndpointAnswer, EndpointFailure, SageMakerEndpoint
from lambdas.origin_adapter.wordpiece import WordPieceCounter

# What an OpenAI embeddings request may carry. Anything else is refused, as OpenAI refuses
# an unrecognized argument, rather than silently ignored.
_FIELDS = frozenset(("model", "input", "encoding_format", "dimensions", "user"))
_ENCODINGS = ("float", "base64")
# TEI's 424 (error_type Backend) is its own inference failure, not the request's fault.
_TEI_BACKEND_ERROR = 424


class EmbeddingsRequest(namedtuple("EmbeddingsRequest", "inputs encoding dimensions")):
    """A checked OpenAI request: inputs (each a string or a list of token ids), the
    encoding of the answer ("float" | "base64"), the dimensions asked for (None: the
    model's own)."""

    __slots__ = ()


def parse_request(body: bytes, model: EmbeddingsModel) -> EmbeddingsRequest:
    """The request, checked; EndpointFailure(400, ...) names what is wrong."""
    try:
        request = json.loads(body)
    except ValueError:
        raise _invalid("The request body is not JSON.", None) from None
    if not isinstance(request, dict):
        raise _invalid("The request body must be a JSON object.", None)
    unknown = sorted(set(request) - _FIELDS)
    if unknown:
        raise _invalid(f"Unrecognized request argument supplied: {unknown[0]}.", unknown[0], "unknown_parameter")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise _invalid("'model' must be a non-empty string.", "model")
    if "user" in request and not isinstance(request["user"], str):
        raise _invalid("'user' must be a string.", "user")
    encoding = request.get("encoding_format", "float")
    if encoding not in _ENCODINGS:
        raise _invalid(f"'encoding_format' must be 'float' or 'base64', not {json.dumps(encoding)[:40]}.", "encoding_format")
    dimensions = None
    if "dimensions" in request:
        dimensions = request["dimensions"]
        if not model.matryoshka:
            raise _invalid("This model does not support 'dimensions': its vectors cannot be shortened.", "dimensions")
        if type(dimensions) is not int or not 1 <= dimensions <= model.dimensions:
            raise _invalid(f"'dimensions' must be an integer from 1 to {model.dimensions}.", "dimensions")
        if dimensions == model.dimensions:
            dimensions = None  # the whole vector: nothing to shorten
    return EmbeddingsRequest(_inputs(request.get("input"), model.vocab_size), encoding, dimensions)


def _inputs(value, vocab_size: int) -> list:
    """`input` as a list of inputs: a string, a list of strings, a list of token ids (one
    input), or a list of lists of token ids. Mixed lists are refused (OpenAI's schema has
    none), as are ids outside the model's vocabulary (TEI would drop them silently)."""
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(_is_token(v) for v in value):
        inputs = [value]
    elif isinstance(value, list) and value and (all(isinstance(v, str) for v in value) or all(isinstance(v, list) for v in value)):
        inputs = value
    elif value is None:
        raise _invalid("'input' is required.", "input", "missing_field")
    else:
        raise _invalid(
            "'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids.", "input"
        )
    if len(inputs) > EMBEDDINGS_MAX_INPUTS:
        raise _invalid(f"'input' holds {len(inputs)} inputs; at most {EMBEDDINGS_MAX_INPUTS} are accepted.", "input")
    for item in inputs:
        if isinstance(item, str):
            if not item:
                raise _invalid("'input' must not contain an empty string.", "input")
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate (a "\ud800" escape): no text to embed
                    raise _invalid("'input' holds a lone surrogate, which is not Unicode text.", "input") from None
        elif not item or not all(_is_token(t) for t in item):
            raise _invalid("Each list of token ids in 'input' must be a non-empty list of integers.", "input")
        elif max(item) >= vocab_size:
            raise _invalid(f"Token id {max(item)} is outside the model's vocabulary (0..{vocab_size - 1}).", "input")
    return inputs


def _is_token(value) -> bool:
    return type(value) is int and value >= 0


def container_request(inputs: list, dimensions: int | None) -> bytes:
    """TEI's embed request for one batch: always a list (a batch), unit-length vectors,
    and no silent truncation (a too-long input is TEI's 422, as OpenAI refuses it)."""
    body = {"inputs": inputs, "normalize": True, "truncate": False}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def openai_answer(request: EmbeddingsRequest, vectors: list, prompt_tokens: int, model_id: str) -> bytes:
    """The OpenAI response object; base64 is the vector's float32 values, little-endian
    (what the openai client decodes)."""
    data = []
    for index, vector in enumerate(vectors):
        if request.encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer = {
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json.dumps(answer, separators=(",", ":")).encode()


class EmbeddingsService:
    """The stage's embeddings model behind its own SageMaker endpoint."""

    def __init__(
        self,
        model: EmbeddingsModel,
        model_id: str,
        endpoint: SageMakerEndpoint,
        tokenizer: Callable[[], bytes],
        read_seconds: float,
    ) -> None:
        self.model, self.model_id, self.endpoint = model, model_id, endpoint
        self._load_tokenizer = tokenizer  # tokenizer.json's bytes, read on first use
        self._counter: WordPieceCounter | None = None
        self._lock = threading.Lock()
        # The whole answer's model time (the stage's model read timeout): the last batch
        # starts early enough that its own read timeout ends within it.
        self.start_window_seconds = read_seconds - model.batch_read_seconds

    def answer(self, body: bytes, started: float) -> EndpointAnswer:
        """The OpenAI answer to `body`, or EndpointFailure (what the client gets). Batches
        go one after the other; none starts later than the start window after `started`
        (perf_counter, the request's arrival): past it the answer is a 504."""
        request = parse_request(body, self.model)
        counter = self._tokenizer()
        called = time.perf_counter()
        start_by = started + self.start_window_seconds
        vectors: list = []
        size = self.model.batch_inputs
        expected = request.dimensions or self.model.dimensions
        for first in range(0, len(request.inputs), size):
            if time.perf_counter() > start_by:
                raise EndpointFailure(
                    504, "model_timeout", f"The embeddings took longer than the origin may wait ({len(vectors)} of "
                    f"{len(request.inputs)} inputs done); send fewer inputs per request."
                )
            batch = request.inputs[first : first + size]
            try:
                answer = self.endpoint.invoke(container_request(batch, request.dimensions), "application/json")
            except EndpointFailure as failure:
                raise _container_failure(failure) from None
            vectors.extend(_vectors(answer.body, len(batch), expected))
        prompt_tokens = sum(counter.count(i) if isinstance(i, str) else len(i) for i in request.inputs)
        body = openai_answer(request, vectors, prompt_tokens, self.model_id)
        return EndpointAnswer(body, "application/json", time.perf_counter() - called)

    def _tokenizer(self) -> WordPieceCounter:
        with self._lock:
            if self._counter is None:
                try:
                    self._counter = WordPieceCounter.from_json(self._load_tokenizer())
                except Exception as exc:  # noqa: BLE001 - unreadable now; the next request tries again
                    raise EndpointFailure(
                        503, "tokenizer_unavailable", f"The embeddings model's tokenizer cannot be read ({type(exc).__name__}).", 5
                    ) from exc
            return self._counter


def _vectors(body: bytes, count: int, dimensions: int) -> list:
    """TEI's answer: a JSON array of `count` vectors of `dimensions` numbers each."""
    try:
        vectors = json.loads(body)
    except ValueError:
        vectors = None
    if (
        not isinstance(vectors, list)
        or len(vectors) != count
        or not all(isinstance(v, list) and len(v) == dimensions for v in vectors)
    ):
        raise EndpointFailure(502, "model_answer_unexpected", f"The embeddings model did not answer {count} vectors of {dimensions}.")
    return vectors


def _container_failure(failure: EndpointFailure) -> EndpointFailure:
    if failure.status == _TEI_BACKEND_ERROR:
        return EndpointFailure(502, "model_error", f"The embeddings model failed: {failure.message}", model_error=True)
    return failure


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> EndpointFailure:
    return EndpointFailure(400, code, message, param=param)
