"""A local model server.

Two faces on one port:
- the SageMaker container contract, `GET /ping` and `POST /invocations` (a body with
  `"stream": true` is answered token by token, as JSON Lines, the way LMI streams);
- the SageMaker runtime API, `POST /endpoints/{name}/invocations` and
  `POST /endpoints/{name}/invocations-response-stream` (AWS's binary event stream of
  PayloadParts, cut anywhere, and ModelStreamError mid-stream), which the origin
  adapter's own boto3 `sagemaker-runtime` client reaches when only its endpoint URL
  points here. Container failures come back as SageMaker's ModelError, as they do on AWS.

It stands in for the LLM's container (LMI), which reads `prompt`, `inputs` or `messages`
and nothing else: embeddings are the embeddings endpoint's (embeddings_server.py). Chat
and completions come from a small test generator that says what it is, or from an
OpenAI-compatible server named by URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator

import httpx2
from moto.core.eventstream import EventStreamEncoder
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from config.stages import DEFAULT_STAGE, stage
from local_run import lmi_container
from local_run.lmi_container import ContainerError

GENERATOR_MODEL = "local-test-generator"
# A prompt containing this marker makes the container fail, to exercise error paths.
MODEL_ERROR_MARKER = "[[model-error]]"
# For the coalescing tests: the first call with a given body containing this marker fails
# (later identical calls succeed), and "[[slow-ms:N]]" holds a call N ms before answering.
FAIL_ONCE_MARKER = "[[fail-once]]"
_SLOW = re.compile(r"\[\[slow-ms:(\d{1,5})\]\]")
# For the streaming tests and benchmark: "[[tokens:N]]" makes the generator's answer N
# tokens long, "[[token-ms:N]]" makes it generate one token every N ms (streamed or not),
# "[[stream-error-after:N]]" fails a stream after N tokens (ModelStreamError on the runtime
# face, an error line on the container's).
_TOKENS = re.compile(r"\[\[tokens:(\d{1,6})\]\]")
_TOKEN_MS = re.compile(r"\[\[token-ms:(\d{1,4}(?:\.\d{1,3})?)\]\]")
_STREAM_ERROR_AFTER = re.compile(r"\[\[stream-error-after:(\d{1,6})\]\]")


class StreamFailure(Exception):
    """The model failed after its stream began."""


class TestGenerator:
    """Says what it is. Deterministic when decoding is greedy or seeded, as a real model
    is; with sampling and no seed each answer differs, as a real model's would. Its
    tokens are the words of its answer (with their leading space)."""

    def tokens(self, prompt: str, params: dict, length: int | None = None) -> list[str]:
        temperature = params.get("temperature", 1.0)
        greedy = temperature == 0 or params.get("do_sample") is False or params.get("top_k") == 1
        seed = params.get("seed")
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        text = f"[{GENERATOR_MODEL}: not a language model] I read {len(prompt)} characters (sha256 {digest})."
        if not greedy:
            rng = random.Random(f"{seed}:{prompt}") if seed is not None else random.Random()
            text += f" Sample {rng.randrange(10**9):09d}."
        first, *rest = text.split(" ")
        tokens = [first, *(" " + word for word in rest)]
        if length is not None:  # [[tokens:N]]: as long as asked
            tokens = (tokens + [f" t{i}" for i in range(len(tokens), length)])[:length]
        return tokens

    def answer(self, prompt: str, params: dict, length: int | None = None) -> str:
        return "".join(self.tokens(prompt, params, length))


class _Pace:
    """What the markers in a request ask of the generator: its length, its speed, a
    failure mid-stream."""

    def __init__(self, text: str) -> None:
        tokens, token_ms, error_after = _TOKENS.search(text), _TOKEN_MS.search(text), _STREAM_ERROR_AFTER.search(text)
        self.length = int(tokens.group(1)) if tokens else None
        self.token_seconds = float(token_ms.group(1)) / 1000 if token_ms else 0.0
        self.error_after = int(error_after.group(1)) if error_after else None


class ModelServer:
    """The model: the container contract and the SageMaker runtime facade, as one ASGI app."""

    def __init__(self, *, chat_url: str | None = None, max_model_len: int | None = None):
        self.chat_url = chat_url.rstrip("/") if chat_url else None
        # The context the deployed container serves (the stage's OPTION_MAX_MODEL_LEN).
        self.max_model_len = max_model_len or stage(DEFAULT_STAGE).model.max_model_len
        self.generator = TestGenerator()
        self.invocations = 0
        self._count_lock = threading.Lock()
        self._http: httpx2.Client | None = None  # the chat server's client, made at first use
        self._failed_once: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/ping", self._ping, methods=["GET"]),
                Route("/invocations", self._container, methods=["POST"]),
                Route("/endpoints/{name}/invocations", self._runtime, methods=["POST"]),
                Route("/endpoints/{name}/invocations-response-stream", self._runtime_stream, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET"]),
            ]
        )

    def describe(self) -> dict:
        return {"chat/completions": self.chat_url or GENERATOR_MODEL}

    # -- HTTP faces --------------------------------------------------------------------
    async def _ping(self, request: Request) -> Response:
        return Response(b"", media_type="text/plain")

    async def _container(self, request: Request) -> Response:
        body = await request.body()
        try:
            if _streams(body):
                lines = await run_in_threadpool(self.invoke_stream, body)
                return StreamingResponse(iterate_in_threadpool(_with_error_line(lines)), media_type="application/jsonlines")
            answer = await run_in_threadpool(self.invoke, body)
        except ContainerError as exc:  # the container's own error body, as LMI sends it
            return Response(exc.message, status_code=exc.status, media_type="application/json")
        return _json(answer)

    async def _runtime(self, request: Request) -> Response:
        """SageMaker's InvokeEndpoint: a container failure is a ModelError (424), as on AWS."""
        try:
            answer = await run_in_threadpool(self.invoke, await request.body())
        except ContainerError as exc:
            return _model_error(exc)
        return _json(answer, headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"})

    async def _runtime_stream(self, request: Request) -> Response:
        """SageMaker's InvokeEndpointWithResponseStream: what fails before the stream is a
        ModelError (424); then the container's bytes as PayloadPart events of AWS's event
        stream, and a failure mid-stream as a ModelStreamError event, as on AWS."""
        try:
            lines = await run_in_threadpool(self.invoke_stream, await request.body())
        except ContainerError as exc:
            return _model_error(exc)
        headers = {"x-Amzn-Invoked-Production-Variant": "AllTraffic", "X-Amzn-SageMaker-Content-Type": "application/jsonlines"}
        return StreamingResponse(
            iterate_in_threadpool(_event_stream(lines)), media_type="application/vnd.amazon.eventstream", headers=headers
        )

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
        return JSONResponse({"object": "list", "data": data})

    # -- the container: one /invocations contract, the body's shape picks the task --
    def invoke(self, body: bytes) -> dict:
        return self._answer(*self._accept(body))

    def _answer(self, request: dict, pace: _Pace) -> dict:
        schema = self._served_as(request)
        if schema == "chat":
            return self._proxy("/v1/chat/completions", request) if self.chat_url else self._chat(request, pace)
        if schema == "completions":
            return self._proxy("/v1/completions", request) if self.chat_url else self._completion(request, pace)
        params = self._checked_tgi(request)
        tokens = self.generator.tokens(json.dumps(request["inputs"]), params, pace.length)
        time.sleep(pace.token_seconds * len(tokens))
        return {"generated_text": "".join(tokens)}

    def _served_as(self, request: dict) -> str:
        """LMI's schema for the body (prompt, then inputs, then messages), checked as vLLM
        checks it (an embeddings body has none of them: the LLM's container refuses it)."""
        schema = lmi_container.served_schema(request)
        if schema != "tgi":
            parsed = lmi_container.parsed(request, schema)
            if not self.chat_url:  # a proxied server checks its own context
                lmi_container.check_request(schema, parsed, _prompt(request, schema == "chat"), self.max_model_len)
        return schema

    def _checked_tgi(self, request: dict) -> dict:
        """LMI maps a TGI body onto a completion (max_new_tokens, 30 by default, as max_tokens);
        what vLLM refuses of it LMI 18 answers 424, the reason lost (its TGI formatter
        cannot read vLLM's error)."""
        params = request.get("parameters") or {}
        as_completion = {"prompt": request["inputs"], "max_tokens": params.get("max_new_tokens", 30)}
        try:
            completion = lmi_container.parsed(as_completion, "completions")
            lmi_container.check_request("completions", completion, json.dumps(request["inputs"], ensure_ascii=False),
                                        self.max_model_len)
        except ContainerError:
            raise ContainerError(424, json.dumps({"code": 424, "message": "Async Inference Failure service.invoke_handler_async() failure"})) from None
        return params

    def invoke_stream(self, body: bytes) -> Iterator[bytes]:
        """The answer as the container streams it, line by line. What fails before the
        stream (a bad request, the model-error markers) raises ContainerError here; a
        failure later raises StreamFailure from the iteration."""
        request, pace = self._accept(body)
        schema = self._served_as(request)
        if schema in ("chat", "completions"):
            chat = schema == "chat"
            if self.chat_url:
                return self._proxy_stream("/v1/chat/completions" if chat else "/v1/completions", request)
            return self._generation_stream(request, pace, chat=chat)
        if schema == "tgi":
            self._checked_tgi(request)
            return self._tgi_stream(request, pace)
        return iter([json.dumps(self._answer(request, pace), ensure_ascii=False).encode() + b"\n"])

    def _accept(self, body: bytes) -> tuple[dict, _Pace]:
        """Count the call, parse the body, act on the failure and delay markers."""
        with self._count_lock:
            self.invocations += 1
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise lmi_container.input_parsing_failed(f"the body is not JSON ({exc})") from exc
        if not isinstance(request, dict):
            raise lmi_container.input_parsing_failed("the body is not a JSON object")
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
        return request, _Pace(text)

    def _chat(self, request: dict, pace: _Pace) -> dict:
        prompt, tokens = self._generate(request, pace, chat=True)
        text = "".join(tokens)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i in range(_choices(request))
        ]
        return self._completion_envelope("chat.completion", request, choices, prompt, len(tokens) * len(choices))

    def _completion(self, request: dict, pace: _Pace) -> dict:
        prompt, tokens = self._generate(request, pace, chat=False)
        choices = [{"index": 0, "text": "".join(tokens), "finish_reason": "stop"}]
        return self._completion_envelope("text_completion", request, choices, prompt, len(tokens))

    def _generate(self, request: dict, pace: _Pace, *, chat: bool) -> tuple[str, list[str]]:
        """(the prompt, the answer's tokens), after the time the generator takes for them."""
        prompt = _prompt(request, chat)
        tokens = self.generator.tokens(prompt, request, pace.length)
        time.sleep(pace.token_seconds * len(tokens))
        return prompt, tokens

    def _generation_stream(self, request: dict, pace: _Pace, *, chat: bool) -> Iterator[bytes]:
        """LMI's stream of an OpenAI body: one chunk object per line (no `data: `), each
        token as it is generated, a last chunk per choice with its finish reason, the usage
        chunk when asked, and an empty line where vLLM's `[DONE]` was."""
        prompt = _prompt(request, chat)
        tokens = self.generator.tokens(prompt, request, pace.length)
        choices = range(_choices(request) if chat else 1)
        envelope = self._completion_envelope(
            "chat.completion.chunk" if chat else "text_completion", request, [], prompt, len(tokens) * len(choices)
        )
        usage = envelope.pop("usage")

        def chunk(choice: dict) -> bytes:
            return json.dumps({**envelope, "choices": [choice]}, ensure_ascii=False).encode() + b"\n"

        def lines() -> Iterator[bytes]:
            if chat:
                for i in choices:
                    yield chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            for n, token in enumerate(tokens):
                if pace.error_after is not None and n == pace.error_after:
                    raise StreamFailure(f"simulated model failure after {n} tokens")
                time.sleep(pace.token_seconds)
                for i in choices:
                    yield chunk({"index": i, "delta": {"content": token}, "finish_reason": None} if chat
                                else {"index": i, "text": token, "finish_reason": None})
            for i in choices:
                yield chunk({"index": i, "delta": {}, "finish_reason": "stop"} if chat
                            else {"index": i, "text": "", "finish_reason": "stop"})
            options = request.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                yield json.dumps({**envelope, "choices": [], "usage": usage}).encode() + b"\n"
            yield b"\n"

        return lines()

    def _tgi_stream(self, request: dict, pace: _Pace) -> Iterator[bytes]:
        """A TGI-style stream: a token object per line; the last carries the whole
        generated text and the finish reason."""
        params = request.get("parameters") or {}
        tokens = self.generator.tokens(json.dumps(request["inputs"]), params, pace.length)

        def lines() -> Iterator[bytes]:
            for n, token in enumerate(tokens):
                if pace.error_after is not None and n == pace.error_after:
                    raise StreamFailure(f"simulated model failure after {n} tokens")
                time.sleep(pace.token_seconds)
                last = n == len(tokens) - 1
                event = {
                    "index": n + 1,
                    "token": {"id": n, "text": token, "logprob": 0.0, "special": False},
                    "generated_text": "".join(tokens) if last else None,
                    "details": {"finish_reason": "eos_token", "generated_tokens": len(tokens)} if last else None,
                }
                yield json.dumps(event, ensure_ascii=False).encode() + b"\n"

        return lines()

    @staticmethod
    def _completion_envelope(kind: str, request: dict, choices: list, prompt: str, completion_tokens: int) -> dict:
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

    def _chat_client(self) -> httpx2.Client:
        """One client for the chat server, its connections kept alive (as a container keeps
        its engine close): a call pays the server's time, not a new connection's."""
        with self._count_lock:
            if self._http is None:
                self._http = httpx2.Client(timeout=httpx2.Timeout(55.0), limits=httpx2.Limits(max_keepalive_connections=32))
            return self._http

    def _proxied(self, path: str, request: dict) -> httpx2.Response:
        client = self._chat_client()
        headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ.get('LOCAL_CHAT_API_KEY', 'local')}"}
        try:
            answer = client.send(client.build_request("POST", self.chat_url + path, content=json.dumps(request).encode(),
                                                      headers=headers), stream=True)
        except httpx2.HTTPError as exc:
            raise ContainerError(502, f"the chat server at {self.chat_url} failed: {exc}") from exc
        if answer.status_code >= 400:
            text = answer.read().decode("utf-8", "replace")
            answer.close()
            raise _proxied_error(answer.status_code, text)
        return answer

    def _proxy(self, path: str, request: dict) -> dict:
        answer = self._proxied(path, request)
        try:
            return json.loads(answer.read())
        except httpx2.HTTPError as exc:
            raise ContainerError(502, f"the chat server at {self.chat_url} failed: {exc}") from exc
        finally:
            answer.close()

    def _proxy_stream(self, path: str, request: dict) -> Iterator[bytes]:
        """The OpenAI-compatible server's own stream (SSE), line by line as it arrives."""
        answer = self._proxied(path, request)

        def lines() -> Iterator[bytes]:
            try:
                for line in answer.iter_lines():  # each line as soon as it is complete
                    yield line.encode() + b"\n"
            except httpx2.HTTPError as exc:
                raise StreamFailure(f"the chat server's stream broke: {exc}") from exc
            finally:
                answer.close()

        return lines()


def _prompt(request: dict, chat: bool) -> str:
    """What the test generator reads: the messages (keys sorted), or the prompt."""
    if chat:
        return json.dumps(request.get("messages"), sort_keys=True, ensure_ascii=False)
    return json.dumps(request.get("prompt"), ensure_ascii=False)


def _choices(request: dict) -> int:
    return int(request.get("n", 1) or 1)


def _streams(body: bytes) -> bool:
    try:
        request = json.loads(body)
    except ValueError:
        return False
    return isinstance(request, dict) and request.get("stream") is True


def _with_error_line(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The container's own stream: a failure mid-stream ends it with an error line (LMI
    writes `{"error": ...}`; vLLM an error chunk), and the HTTP status stays 200."""
    try:
        yield from lines
    except StreamFailure as exc:
        yield json.dumps({"error": {"message": str(exc), "code": 500}}).encode() + b"\n"


def _event_stream(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The container's lines as SageMaker's response stream: PayloadPart events whose
    boundaries are not line ends (each line is cut in two), and a failure mid-stream as a
    ModelStreamError event, encoded with moto's event-stream encoder."""
    encoder = EventStreamEncoder()
    part = {":message-type": "event", ":event-type": "PayloadPart", ":content-type": "application/octet-stream"}
    try:
        for line in lines:
            middle = len(line) // 2
            for piece in (line[:middle], line[middle:]):
                if piece:
                    yield encoder.encode_message(part, piece)
    except StreamFailure as exc:
        error = {":message-type": "exception", ":exception-type": "ModelStreamError", ":content-type": "application/json"}
        payload = {"Message": f"Received server error from primary: {exc}", "ErrorCode": "ModelError"}
        yield encoder.encode_message(error, json.dumps(payload).encode())


def _model_error(exc: ContainerError) -> Response:
    """What SageMaker's runtime answers when the container answered non-2xx."""
    kind = "client" if exc.status < 500 else "server"
    error = {
        "ErrorCode": "ModelError",
        "Message": f"Received {kind} error ({exc.status}) from primary with message \"{exc.message}\".",
        "OriginalStatusCode": exc.status,
        "OriginalMessage": exc.message,
    }
    return JSONResponse(error, status_code=424, headers={"x-amzn-ErrorType": "ModelError"})


def _proxied_error(status: int, text: str) -> ContainerError:
    """An OpenAI-compatible server's refusal as LMI 18 would pass vLLM's on (a 400 becomes
    its 500 with the error's repr); other failures as they came."""
    text = text[:2000]
    if status == 400:
        try:
            error = json.loads(text)
            error = error.get("error", error) if isinstance(error, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
        except ValueError:
            message = None
        return lmi_container.vllm_bad_request(message if isinstance(message, str) else text)
    return ContainerError(status, text)


def _json(answer: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(answer, ensure_ascii=False).encode(), media_type="application/json", headers=headers)
