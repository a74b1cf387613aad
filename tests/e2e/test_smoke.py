"""bin/smoke run as an operator runs it, against the local run: it passes against a whole
one, and against one with a piece broken it fails with that piece's step named: a key the
stage does not know, a model server that does not answer, a /_cache/* that anyone can
read, a front that buffers streams. The broken fronts are stand-ins in front of a real
local run (the run itself is never changed), relaying what it answers."""

from __future__ import annotations

import hmac
import json
import os
import re
import subprocess
import urllib.request

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cli.smoke import API_KEY_ENV, STEPS
from lambdas.contract import CACHE_READ_CONTEXT, CACHE_READ_HEADER, EMBEDDINGS_ROUTE, RESULTS_PATH
from local_run.process import create_api_key, free_port, launched
from local_run.servers import BackgroundServer
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
STEP_NAMES = [name for name, _ in STEPS]


def smoke(url: str, key: str, *args: str) -> tuple[int, str, str]:
    """bin/smoke --url URL, the key in the environment as an operator passes it."""
    env = {**os.environ, API_KEY_ENV: key}
    result = subprocess.run([str(ROOT / "bin" / "smoke"), "--url", url, *args], capture_output=True, text=True,
                            timeout=120, env=env)
    return result.returncode, result.stdout, result.stderr


def statuses(output: str) -> dict[str, str]:
    """step name -> ok | FAIL | n/a | skip, from the step lines."""
    found = {}
    for line in output.splitlines():
        for name in STEP_NAMES:
            match = re.match(rf"(ok|FAIL|n/a|skip)\s+{re.escape(name)}\s\s", line)
            if match:
                found[name] = match.group(1)
    assert list(found) == STEP_NAMES, output
    return found


def line_of(output: str, step: str) -> str:
    return next(line for line in output.splitlines() if re.match(rf"\S+\s+{re.escape(step)}\s\s", line))


def model_calls(run: dict) -> int:
    """Calls the LLM stand-in and the embeddings stand-in (TEI's, one per batch) answered."""
    calls = 0
    for server in ("model_server", "embeddings_server"):
        with urllib.request.urlopen(run[server] + "/stats", timeout=5) as answer:
            calls += json.loads(answer.read())["invocations"]
    return calls


def test_smoke_passes_against_the_local_run(local_run):
    """Every step ok, TTFT and the Server-Timing table printed; and what it claims is what
    happened: one model call per MISS (chat, stream, embeddings), none for the HITs."""
    calls = model_calls(local_run)
    rc, out, err = smoke(local_run["listening"], local_run["api_key"])
    assert (rc, err) == (0, ""), out + err
    assert set(statuses(out).values()) == {"ok"}, out
    assert re.search(r"first token after \d+ ms \(TTFT\), last after \d+ ms, 24 tokens", line_of(out, "stream"))
    assert "sentence-transformers/all-MiniLM-L6-v2: MISS" in line_of(out, "embeddings")
    assert "403 with no credential, 403 with the API key as Bearer, 403 with the API key as x-api-key" in out
    header = next(line for line in out.splitlines() if line.startswith("Server-Timing, ms"))
    names = header.split()[2:]
    assert names == ["key-check", "decision", "lookup", "origin-decision", "lease", "model", "store", "origin", "client"]
    rows = {line.split()[0] + " " + line.split()[1]: dict(zip(names, line.split()[2:], strict=True))
            for line in out.splitlines() if line.startswith("  ")}
    assert list(rows) == ["chat MISS", "chat HIT", "stream MISS", "stream HIT", "embeddings MISS", "embeddings HIT"]
    # A miss went through every step, the store named without a duration (after the
    # answer); a hit never called the model nor stored. (A repeat that comes before the
    # store after the first answer is done misses the edge's lookup and is answered at the
    # origin from the stored answer: a HIT with origin steps but no model.)
    assert "-" not in rows["chat MISS"].values() and rows["chat MISS"]["store"] == "set", out
    for hit in ("chat HIT", "stream HIT", "embeddings HIT"):
        assert (rows[hit]["model"], rows[hit]["store"]) == ("-", "-"), out
        assert "-" not in (rows[hit]["decision"], rows[hit]["lookup"]), out
    assert out.splitlines()[-1].startswith("6 ok in ") and out.splitlines()[-1].endswith(": the stage serves")
    assert model_calls(local_run) - calls == 3


def test_a_key_the_stage_does_not_know_fails_the_first_keyed_step(local_run):
    rc, out, err = smoke(local_run["listening"], "k_0000000000000000_not-a-key")
    assert (rc, err) == (1, ""), out + err
    assert statuses(out) == {
        "no key -> 401": "ok", "chat MISS then HIT": "FAIL", "stream": "skip", "embeddings": "skip",
        "/_cache/ private": "skip", "server-timing": "skip",
    }
    assert "the stage refused the API key: 401 invalid_api_key" in line_of(out, "chat MISS then HIT")
    assert "k_0000000000000000_not-a-key" not in out  # the key is never printed
    assert out.splitlines()[-1].endswith("failed: chat MISS then HIT")


def test_a_model_server_that_does_not_answer_fails_chat_and_stream_while_embeddings_pass(tmp_path):
    """The local run's chat model is an OpenAI-compatible server at a port nothing listens
    on (LOCAL_CHAT_URL): chat answers 502 model_error, the embedder still serves, and the
    stored embeddings answer is the one /_cache/ is probed with."""
    key_store = tmp_path / "api-keys.json"
    closed = f"http://127.0.0.1:{free_port()}"
    with launched("--stage", "dev", "--key-store-file", str(key_store), "--chat-url", closed) as started:
        rc, out, err = smoke(started["listening"], create_api_key(key_store, "smoke")["key"])
    assert (rc, err) == (1, ""), out + err
    assert statuses(out) == {
        "no key -> 401": "ok", "chat MISS then HIT": "FAIL", "stream": "FAIL", "embeddings": "ok",
        "/_cache/ private": "ok", "server-timing": "ok",
    }
    assert f"502 model_error: The model failed: the chat server at {closed} failed" in line_of(out, "chat MISS then HIT")
    assert out.splitlines()[-1].endswith("failed: chat MISS then HIT, stream")


def _stand_in(upstream: str, *, cache_credential: str | None = None, buffered: bool = False,
              no_embeddings: bool = False) -> Starlette:
    """A front relaying everything to the local run, with one piece broken or changed:
    `cache_credential` set, it lets anyone read /_cache/ (as a /_cache/* behavior without
    its viewer-request function would); `buffered`, it sends each answer only once it is
    whole (as a function URL in BUFFERED mode would); `no_embeddings`, it answers
    /v1/embeddings as the edge of a stage without an embeddings model does (issue 22)."""

    async def relay(request: Request) -> Response:
        if no_embeddings and request.url.path == EMBEDDINGS_ROUTE:
            error = {"message": "This stage serves no embeddings model.", "type": "invalid_request_error",
                     "param": "model", "code": "model_not_found"}
            return JSONResponse({"error": error}, status_code=404, headers={"x-inference-cache": "BYPASS"})
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        if cache_credential and request.url.path.startswith(RESULTS_PATH):
            headers[CACHE_READ_HEADER] = cache_credential
        client = httpx2.AsyncClient(timeout=60)
        sent = client.build_request(request.method, upstream + request.url.path, headers=headers, content=await request.body())
        answer = await client.send(sent, stream=True)
        out = {k: v for k, v in answer.headers.items() if k not in ("content-length", "transfer-encoding", "connection")}

        async def close() -> None:
            await answer.aclose()
            await client.aclose()

        if buffered:
            body = await answer.aread()
            await close()
            return Response(body, status_code=answer.status_code, headers=out)
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=out, background=BackgroundTask(close))

    return Starlette(routes=[Route("/{path:path}", relay, methods=["GET", "HEAD", "POST"])])


def test_a_cache_path_anyone_can_read_fails_the_private_step(local_run):
    secret = json.loads(local_run["key_store"].read_text())["stage-secret"]
    credential = hmac.digest(secret.encode(), CACHE_READ_CONTEXT.encode(), "sha256").hex()
    front = BackgroundServer(_stand_in(local_run["listening"], cache_credential=credential), name="open-cache").start()
    try:
        rc, out, err = smoke(front.url, local_run["api_key"])
    finally:
        front.stop()
    assert (rc, err) == (1, ""), out + err
    assert statuses(out) == {name: "FAIL" if name == "/_cache/ private" else "ok" for name in STEP_NAMES}
    assert ("200 with no credential (the stored answer), 200 with the API key as Bearer (the stored answer), 200 with "
            "the API key as x-api-key (the stored answer)") in line_of(out, "/_cache/ private")
    assert out.splitlines()[-1].endswith("failed: /_cache/ private")


def test_a_front_that_buffers_streams_fails_the_stream_step(local_run):
    front = BackgroundServer(_stand_in(local_run["listening"], buffered=True), name="buffering").start()
    try:
        rc, out, err = smoke(front.url, local_run["api_key"])
    finally:
        front.stop()
    assert (rc, err) == (1, ""), out + err
    assert statuses(out) == {name: "FAIL" if name == "stream" else "ok" for name in STEP_NAMES}
    assert "the tokens came in one burst, so the answer was buffered, not streamed" in line_of(out, "stream")


def test_a_stage_without_embeddings_is_not_a_failure(local_run):
    """404 model_not_found on /v1/embeddings: "not served by this stage", n/a, exit 0."""
    front = BackgroundServer(_stand_in(local_run["listening"], no_embeddings=True), name="no-embeddings").start()
    try:
        rc, out, err = smoke(front.url, local_run["api_key"])
    finally:
        front.stop()
    assert (rc, err) == (0, ""), out + err
    assert statuses(out) == {name: "n/a" if name == "embeddings" else "ok" for name in STEP_NAMES}
    assert "not served by this stage (POST /v1/embeddings: 404 model_not_found)" in line_of(out, "embeddings")
    assert out.splitlines()[-1].startswith("5 ok, 1 n/a in ")
