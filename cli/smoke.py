"""bin/smoke: after a deploy, does the stage serve? A dozen requests against the stage's
domain (or any URL), each step printed ok or FAIL with what was seen, in seconds.

  bin/smoke --stage dev                          # https://<the stage's domain>, the key from $INFERENCE_CACHE_API_KEY
  bin/smoke --url http://127.0.0.1:8080 --key K  # make serve, or a distribution by any name
  exit status: 0 every step passed, 1 a step failed, 2 smoke could not run (no key, unreachable, bad stage)

The steps, in order: a request without a key gets 401; a new deterministic chat request
(new content each run) is a MISS, and again a HIT with the very body and an Age; a
streamed miss's first token comes before its last (TTFT printed), and it replays as a
HIT; embeddings MISS then HIT where the stage serves them ("n/a" on 404 model_not_found);
the stored answer is not readable at /_cache/<key> without the edge's credential (403,
an API key included); every answer carries Server-Timing, printed as a table of
whatever steps come back. A step the stage's key refusal makes pointless is skipped.
What each step proves and what it does not: docs/decisions.md, "Smoke".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from cli.server_timing import parse_server_timing
from lambdas.contract import (
    CHAT_ROUTE,
    EMBEDDINGS_ROUTE,
    KEY_HEADER,
    MODELS_ROUTE,
    ORIGIN_READ_TIMEOUT_SECONDS,
    RESULTS_PATH,
    SERVER_TIMING_HEADER,
    STATUS_HEADER,
)

API_KEY_ENV = "INFERENCE_CACHE_API_KEY"
OK, FAIL, NOT_SERVED, SKIP = "ok", "FAIL", "n/a", "skip"
# A whole answer comes within the stage's minute (CloudFront's origin read timeout); a
# little more here, so the stage's own 504 is what smoke reports.
TIMEOUT = httpx2.Timeout(connect=10, read=ORIGIN_READ_TIMEOUT_SECONDS + 5, write=10, pool=10)
STREAM_TOKENS = 24
# The local run's test generator reads these markers (tokens, one every 15 ms), so its
# stream has a first and a last token apart in time as a real model's has; a real model
# reads them as text.
LOCAL_GENERATOR_PACING = f"[[tokens:{STREAM_TOKENS}]] [[token-ms:15]]"
# A stream whose first and last tokens arrive closer than this came in one burst: the
# answer was buffered somewhere, not streamed.
STREAM_SPREAD_MIN_MS = 10.0
# A repeat that is still a MISS is tried once more after this pause (an answer may be
# stored just after it reached the client); a second MISS fails.
REPEAT_PAUSE_SECONDS = 1.0


class SmokeError(Exception):
    """Smoke cannot run at all (one line for the user, exit status 2)."""


class StepFailed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


class KeyRefused(StepFailed):
    """401 with the key: every later step would fail the same way."""


class NotServed(Exception):
    """The stage does not serve this (404 model_not_found): not a failure."""


class Skipped(Exception):
    """An earlier step's failure left nothing for this one to check."""


@dataclass(frozen=True)
class Finding:
    status: str  # OK | FAIL | NOT_SERVED | SKIP
    step: str
    detail: str
    fix: str = ""


@dataclass
class Answer:
    kind: str  # "chat", "stream", "embeddings"
    status: int
    headers: httpx2.Headers
    body: bytes
    client_ms: float  # request sent to last byte, as smoke saw it
    token_ms: list[float] = field(default_factory=list)  # a stream's content tokens, when each arrived
    stream_done: bool = False  # `data: [DONE]` came
    stream_error: str | None = None  # an error event in the stream

    @property
    def cache(self) -> str:
        return self.headers.get(STATUS_HEADER, "")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.cache or '-'}" if self.status < 400 else f"{self.kind} {self.status}"

    def json(self) -> dict:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            raise StepFailed(f"{self.kind}: the answer is not JSON: {_excerpt(self.body)}") from None
        if not isinstance(parsed, dict):
            raise StepFailed(f"{self.kind}: the answer is not a JSON object: {_excerpt(self.body)}")
        return parsed


class Smoke:
    """One run against one distribution: its requests, and what the steps collected."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        chat_model: str | None = None,
        embeddings_model: str | None = None,
        key_hint: str = "bin/api-keys create",
        client: httpx2.Client | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.api_key = api_key
        self.key_hint = key_hint  # the command that makes a key for this target
        self.run_id = uuid.uuid4().hex[:12]  # new content each run: its first request is a MISS
        self.http = client or httpx2.Client(timeout=TIMEOUT, headers={"user-agent": "inference-cache-smoke/1"})
        self.answers: list[Answer] = []  # every inference answer, for the Server-Timing table
        self.stored: list[tuple[str, bytes]] = []  # (cache key, body) of each MISS answered 2xx
        self._chat_model, self._embeddings_model = chat_model, embeddings_model
        self._listed: list[dict] | None = None

    # -- requests ----------------------------------------------------------------------
    def _headers(self, keyed: bool, body: bool, extra: dict | None = None) -> dict:
        headers = {"authorization": f"Bearer {self.api_key}"} if keyed else {}
        if body:
            headers["content-type"] = "application/json"
        return {**headers, **(extra or {})}

    def request(self, method: str, path: str, *, body: dict | None = None, keyed: bool = True,
                headers: dict | None = None, kind: str | None = None) -> Answer:
        """One whole answer. `kind` set: an inference answer, kept for the Server-Timing table."""
        content = json.dumps(body).encode() if body is not None else None
        started = time.perf_counter()
        try:
            response = self.http.request(method, self.base + path, content=content,
                                         headers=self._headers(keyed, body is not None, headers))
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc, f"{method} {path}") from None
        answer = Answer(kind or path, response.status_code, response.headers, response.content,
                        (time.perf_counter() - started) * 1000)
        if kind:
            self.answers.append(answer)
        return answer

    def stream(self, body: dict, kind: str = "stream") -> Answer:
        """A streamed chat answer, read as it comes: when each content token arrived."""
        started = time.perf_counter()
        raw, pending = bytearray(), b""
        tokens: list[float] = []
        done, error = False, None
        try:
            with self.http.stream("POST", self.base + CHAT_ROUTE, content=json.dumps(body).encode(),
                                  headers=self._headers(True, True)) as response:
                for chunk in response.iter_bytes():
                    now = (time.perf_counter() - started) * 1000
                    raw += chunk
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        event = _sse_data(line)
                        if event is None:
                            continue
                        if event == "[DONE]":
                            done = True
                        elif isinstance(event, dict) and "error" in event:
                            error = _excerpt(json.dumps(event["error"]).encode())
                        elif isinstance(event, dict) and _delta_content(event):
                            tokens.append(now)
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc, f"POST {CHAT_ROUTE} (stream)") from None
        answer = Answer(kind, response.status_code, response.headers, bytes(raw), (time.perf_counter() - started) * 1000,
                        tokens, done, error)
        self.answers.append(answer)
        return answer

    def _transport_error(self, exc: httpx2.HTTPError, what: str) -> Exception:
        """Cannot connect (refused, DNS, TLS): smoke stops, one line. A timeout or a
        dropped connection: that step fails."""
        if isinstance(exc, httpx2.ConnectTimeout):
            return SmokeError(f"cannot reach {self.base}: no connection within {TIMEOUT.connect:g} s")
        if isinstance(exc, httpx2.ConnectError):
            return SmokeError(f"cannot reach {self.base}: {_connect_reason(exc)}")
        if isinstance(exc, httpx2.TimeoutException):
            return StepFailed(f"{what}: no answer within {TIMEOUT.read:g} s", "the stage answers a whole request "
                              f"within {ORIGIN_READ_TIMEOUT_SECONDS} s; look at the origin adapter's logs")
        return StepFailed(f"{what}: the connection failed: {exc or type(exc).__name__}")

    # -- what the stage serves -----------------------------------------------------------
    def listed_models(self) -> list[dict]:
        if self._listed is None:
            answer = self.request("GET", MODELS_ROUTE)
            self.expect_2xx(answer, f"GET {MODELS_ROUTE}")
            data = answer.json().get("data")
            if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
                raise StepFailed(f"GET {MODELS_ROUTE}: no list of models: {_excerpt(answer.body)}")
            self._listed = data
        return self._listed

    def chat_model(self) -> str:
        if self._chat_model is None:
            chat = [m["id"] for m in self.listed_models() if m.get("task", "chat/completions") != "embeddings"]
            if not chat:
                raise StepFailed(f"GET {MODELS_ROUTE} lists no chat model", "name one with --model")
            self._chat_model = chat[0]
        return self._chat_model

    def embeddings_model(self) -> str:
        """The listed model whose task is embeddings; else the first listed (a stage without
        an embeddings model answers 404 model_not_found whatever the name)."""
        if self._embeddings_model is None:
            listed = self.listed_models()
            tagged = [m["id"] for m in listed if m.get("task") == "embeddings"]
            if not tagged and not listed:
                raise StepFailed(f"GET {MODELS_ROUTE} lists no model", "name one with --embeddings-model")
            self._embeddings_model = (tagged or [listed[0]["id"]])[0]
        return self._embeddings_model

    # -- shared checks ------------------------------------------------------------------
    def miss_then_hit(self, kind: str, route: str, body: dict, *, not_served_ok: bool = False) -> tuple[Answer, Answer, str]:
        """A new request is a MISS; the same again a HIT with the very body and an Age."""
        first = self.request("POST", route, body=body, kind=kind)
        if not_served_ok and first.status == 404 and _error_code(first) == "model_not_found":
            raise NotServed(f"not served by this stage (POST {route}: 404 model_not_found)")
        self.expect_2xx(first, f"POST {route}")
        expect_miss(first, route)
        self.keep_stored(first)
        second, note = self.repeat(lambda: self.request("POST", route, body=body, kind=kind), route)
        if second.body != first.body:
            raise StepFailed(f"the HIT's body differs from the MISS's ({len(second.body)} and {len(first.body)} bytes): "
                             "a hit must be the very answer stored")
        age = second.headers.get("age", "")
        if not age.isdigit():
            raise StepFailed(f"the HIT carries no Age header (age: {age!r})")
        return first, second, note

    def repeat(self, send: Callable[[], Answer], route: str) -> tuple[Answer, str]:
        answer = send()
        self.expect_2xx(answer, f"POST {route} again")
        note = ""
        if answer.cache == "MISS":
            time.sleep(REPEAT_PAUSE_SECONDS)
            answer = send()
            self.expect_2xx(answer, f"POST {route} a third time")
            note = f" (the first repeat was a MISS; HIT {REPEAT_PAUSE_SECONDS:g} s later)"
        if answer.cache != "HIT":
            raise StepFailed(
                f"the same request again is {answer.cache or 'without x-inference-cache'}, not HIT: nothing was stored "
                "or found",
                "look at the origin adapter's logs for the store, and at the edge function's for the lookup",
            )
        return answer, note

    def expect_2xx(self, answer: Answer, what: str) -> None:
        if answer.status == 401:
            raise KeyRefused(f"the stage refused the API key: 401 {_error_code(answer) or '(no error code)'} on {what}",
                             f"{self.key_hint} makes one; pass it in {API_KEY_ENV} (or --key)")
        if not 200 <= answer.status < 300:
            raise StepFailed(f"{what}: {answer.status} {_error_summary(answer)}")

    def keep_stored(self, answer: Answer) -> None:
        key = answer.headers.get(KEY_HEADER)
        if key:
            self.stored.append((key, answer.body))


# --------------------------------------------------------------------------- checks


def expect_miss(answer: Answer, route: str) -> None:
    if answer.cache != "MISS":
        why = {
            "HIT": "a request never sent before was answered from the cache",
            "BYPASS": "the stage does not cache this request (no stage secret yet? bin/api-keys rotate-secret)",
        }.get(answer.cache, "no x-inference-cache header")
        raise StepFailed(f"POST {route}: a new request is {answer.cache or '-'}, not MISS: {why}")


def step_no_key(smoke: Smoke) -> str:
    body = _chat_body("smoke", f"inference-cache smoke {smoke.run_id}: no key")
    answer = smoke.request("POST", CHAT_ROUTE, body=body, keyed=False)
    if answer.status != 401:
        raise StepFailed(
            f"POST {CHAT_ROUTE} without a key answered {answer.status} {answer.cache}, not 401",
            "the stage's API key check (CloudFront Function on viewer request) must run on /v1/*: docs/api-keys.md",
        )
    return f"POST {CHAT_ROUTE} without a key: 401 {_error_code(answer) or '(no error code)'}"


def step_chat(smoke: Smoke) -> str:
    model = smoke.chat_model()
    body = _chat_body(model, f"inference-cache smoke {smoke.run_id}: answer in one short sentence.")
    first, second, note = smoke.miss_then_hit("chat", CHAT_ROUTE, body)
    return (f"{model}: MISS in {first.client_ms:.0f} ms, then HIT in {second.client_ms:.0f} ms{note}, Age "
            f"{second.headers['age']}, the same {len(first.body)} bytes")


def step_stream(smoke: Smoke) -> str:
    model = smoke.chat_model()
    content = f"inference-cache smoke {smoke.run_id}, streamed: count from one upwards. {LOCAL_GENERATOR_PACING}"
    body = {**_chat_body(model, content), "stream": True, "max_tokens": STREAM_TOKENS}
    miss = smoke.stream(body)
    smoke.expect_2xx(miss, f"POST {CHAT_ROUTE} (stream)")
    expect_miss(miss, f"{CHAT_ROUTE} (stream)")
    _expect_whole_stream(miss)
    if len(miss.token_ms) < 2:
        raise StepFailed(f"the stream carried {len(miss.token_ms)} content token(s); smoke needs two to time it")
    first, last = miss.token_ms[0], miss.token_ms[-1]
    timing = f"first token after {first:.0f} ms (TTFT), last after {last:.0f} ms, {len(miss.token_ms)} tokens"
    if last - first < STREAM_SPREAD_MIN_MS:
        raise StepFailed(
            f"{timing}: the tokens came in one burst, so the answer was buffered, not streamed",
            "the origin adapter's function URL must be in RESPONSE_STREAM mode, and nothing in between may buffer",
        )
    smoke.keep_stored(miss)
    hit, note = smoke.repeat(lambda: smoke.stream(body), f"{CHAT_ROUTE} (stream)")
    _expect_whole_stream(hit)
    if hit.body != miss.body:
        raise StepFailed(f"{timing}; the replay's bytes differ from the stream's ({len(hit.body)} and "
                         f"{len(miss.body)} bytes): a hit must replay the very stream stored")
    return f"MISS: {timing}; then HIT{note}: the same {len(miss.body)} bytes in {hit.client_ms:.0f} ms"


def step_embeddings(smoke: Smoke) -> str:
    model = smoke.embeddings_model()
    body = {"model": model, "input": f"inference-cache smoke {smoke.run_id}"}
    first, second, note = smoke.miss_then_hit("embeddings", EMBEDDINGS_ROUTE, body, not_served_ok=True)
    data = first.json().get("data")
    vector = data[0].get("embedding") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    if not vector:
        raise StepFailed(f"POST {EMBEDDINGS_ROUTE}: no embedding in the answer: {_excerpt(first.body)}")
    size = f"{len(vector)} dimensions" if isinstance(vector, list) else "base64"
    return (f"{model}: MISS in {first.client_ms:.0f} ms, then HIT in {second.client_ms:.0f} ms{note}, Age "
            f"{second.headers['age']}, the same {len(first.body)} bytes ({size})")


def step_stored_answers_private(smoke: Smoke) -> str:
    if not smoke.stored:
        raise Skipped("nothing was stored to probe (no MISS answered 2xx)")
    key, stored = smoke.stored[0]
    probes = {
        "no credential": {},
        "the API key as Bearer": {"authorization": f"Bearer {smoke.api_key}"},
        "the API key as x-api-key": {"x-api-key": smoke.api_key},
    }
    seen, open_ = [], []
    for name, headers in probes.items():
        answer = smoke.request("GET", f"{RESULTS_PATH}{key}", keyed=False, headers=headers)
        seen.append(f"{answer.status} with {name}")
        if answer.status != 403:
            open_.append(f"{answer.status} with {name}" + (" (the stored answer)" if stored and stored in answer.body else ""))
    where = f"GET {RESULTS_PATH}<key of a stored answer>"
    if open_:
        raise StepFailed(
            f"{where}: {', '.join(open_)}; only the edge's credential may read it",
            "the /_cache/* behavior must run the cache-read check (CloudFront Function on viewer request) before "
            "the cache or S3: docs/security.md",
        )
    return f"{where}: " + ", ".join(seen)


def step_server_timing(smoke: Smoke) -> str:
    answered = [a for a in smoke.answers if 200 <= a.status < 300]
    if not answered:
        raise Skipped("no inference answer to read (the steps above failed)")
    missing = [a.label for a in answered if not parse_server_timing(a.headers.get(SERVER_TIMING_HEADER, ""))]
    if missing:
        raise StepFailed(f"no Server-Timing on {', '.join(missing)}",
                         "the edge's answers carry decision and lookup, the origin adapter's its own steps")
    names = _step_names(answered)
    return f"on every answer ({len(answered)}): {', '.join(names)} (table below)"


STEPS: tuple[tuple[str, Callable[[Smoke], str]], ...] = (
    ("no key -> 401", step_no_key),
    ("chat MISS then HIT", step_chat),
    ("stream", step_stream),
    ("embeddings", step_embeddings),
    ("/_cache/ private", step_stored_answers_private),
    ("server-timing", step_server_timing),
)


# --------------------------------------------------------------------------- running


def run_steps(smoke: Smoke, steps=STEPS) -> tuple[list[Finding], str | None]:
    """Every step in order: (findings, the one-line error that stopped the run or None).
    After the stage refuses the key, the rest are skipped."""
    findings: list[Finding] = []
    refused = False
    for name, step in steps:
        if refused:
            findings.append(Finding(SKIP, name, "not run: the stage refused the API key"))
            continue
        try:
            findings.append(Finding(OK, name, step(smoke)))
        except NotServed as e:
            findings.append(Finding(NOT_SERVED, name, str(e)))
        except Skipped as e:
            findings.append(Finding(SKIP, name, str(e)))
        except KeyRefused as e:
            findings.append(Finding(FAIL, name, e.detail, e.fix))
            refused = True
        except StepFailed as e:
            findings.append(Finding(FAIL, name, e.detail, e.fix))
        except SmokeError as e:
            return findings, str(e)
        except Exception as e:  # never a traceback: what was wrong, on the step's line
            findings.append(Finding(FAIL, name, f"unexpected answer: {type(e).__name__}: {e}"))
    return findings, None


def timing_table(answers: list[Answer]) -> list[str]:
    """Server-Timing of each answer (rows) by step (columns, whatever names came, in the
    order they came), and the whole request as the client saw it."""
    if not answers:
        return []
    names = _step_names(answers)
    rows = [["Server-Timing, ms", *names, "client"]]
    for answer in answers:
        steps = {}
        for name, duration in parse_server_timing(answer.headers.get(SERVER_TIMING_HEADER, "")):
            steps.setdefault(name, duration)
        cells = ["-" if n not in steps else "set" if steps[n] is None else f"{steps[n]:.1f}" for n in names]
        rows.append([f"  {answer.label}", *cells, f"{answer.client_ms:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows]


def report(target: str, smoke: Smoke, findings: list[Finding], seconds: float) -> str:
    width = max([len(f.step) for f in findings] or [0])
    lines = [f"smoke {target}: run {smoke.run_id}"]
    for f in findings:
        lines.append(f"{f.status:<5} {f.step:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<5} {'':<{width}}  -> {f.fix}")
    lines += timing_table(smoke.answers)
    counts = {s: sum(f.status == s for f in findings) for s in (FAIL, OK, NOT_SERVED, SKIP)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    failed = [f.step for f in findings if f.status == FAIL]
    verdict = f"failed: {', '.join(failed)}" if failed else "the stage serves"
    lines.append(f"{summary} in {seconds:.1f} s: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stage", help="the stage to check: https://<its domain> (config/stages.py)")
    where.add_argument("--url", help="the distribution's base URL, e.g. http://127.0.0.1:8080 (make serve)")
    parser.add_argument("--key", help=f"the API key (default: ${API_KEY_ENV}, which keeps it out of the process list)")
    parser.add_argument("--model", help="the chat model to ask (default: the first GET /v1/models lists)")
    parser.add_argument("--embeddings-model", help="the embeddings model (default: the one /v1/models lists for embeddings)")
    args = parser.parse_args(argv)
    try:
        target, key_hint = _target(args)
        key = args.key or os.environ.get(API_KEY_ENV)
        if not key:
            raise SmokeError(f"no API key: set {API_KEY_ENV} (or pass --key); {key_hint} makes one")
        smoke = Smoke(target, key, chat_model=args.model, embeddings_model=args.embeddings_model, key_hint=key_hint)
    except SmokeError as e:
        print(f"smoke: error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        findings, stopped = run_steps(smoke)
    except KeyboardInterrupt:
        print("smoke: interrupted", file=sys.stderr)
        return 130
    finally:
        smoke.http.close()
    if stopped:
        if findings:
            print(report(target, smoke, findings, time.perf_counter() - started))
        print(f"smoke: error: {stopped}", file=sys.stderr)
        return 2
    print(report(target, smoke, findings, time.perf_counter() - started))
    return 1 if any(f.status == FAIL for f in findings) else 0


def _target(args) -> tuple[str, str]:
    """(base URL, how to make a key for it)."""
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise SmokeError(f"--url must start with http:// or https://: {args.url!r}")
        return args.url.rstrip("/"), "bin/api-keys --local create --tenant smoke"
    from config.stages import stage

    try:
        settings = stage(args.stage)
    except KeyError as e:
        raise SmokeError(e.args[0]) from None
    return f"https://{settings.domain.name}", f"bin/api-keys --stage {settings.name} create --tenant smoke"


# --------------------------------------------------------------------------- helpers


def _chat_body(model: str, content: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 32}


def _expect_whole_stream(answer: Answer) -> None:
    if answer.stream_error:
        raise StepFailed(f"the stream ended with an error event: {answer.stream_error}")
    if not answer.stream_done:
        raise StepFailed(f"the stream ended without `data: [DONE]` after {len(answer.token_ms)} tokens")


def _sse_data(line: bytes):
    """A server-sent event's data: the JSON object, "[DONE]", or None for other lines."""
    line = line.rstrip(b"\r")
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except ValueError:
        return None


def _delta_content(event: dict) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else choices[0].get("text")
    return content if isinstance(content, str) else ""


def _step_names(answers: list[Answer]) -> list[str]:
    names: dict[str, None] = {}
    for answer in answers:
        for name, _ in parse_server_timing(answer.headers.get(SERVER_TIMING_HEADER, "")):
            names.setdefault(name, None)
    return list(names)


def _error_code(answer: Answer) -> str | None:
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) and isinstance(error.get("code"), str) else None


def _error_summary(answer: Answer) -> str:
    """An error answer in one line: the OpenAI shape's code and message, or the body."""
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        return ": ".join(str(p) for p in (error.get("code"), error.get("message")) if p)[:240]
    return _excerpt(answer.body)


def _excerpt(body: bytes, limit: int = 160) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _connect_reason(exc: httpx2.ConnectError) -> str:
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, OSError) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, socket.gaierror):
        return f"DNS cannot resolve the name ({cause.strerror})"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {cause.reason or cause}"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
