"""The work after an answer stays inside its Lambda invocation (lambdas/origin_adapter/
invocations.py): the origin adapter's web app registers an internal extension with the
Lambda Extensions API and asks for the next event only once the invocation's request was
answered and its store and lease release were done, so Lambda does not freeze the
environment under them. Tested against a stand-in of the Runtime API's extension routes
(a real HTTP server on 127.0.0.1 that hands out INVOKE events and notes when the extension
asks for the next one), the web app served by uvicorn, the results bucket on the local S3
made slow by its fault hook (each call waits 1 s), SageMaker stubbed with botocore's
Stubber."""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx2
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from config.stages import STAGES
from lambdas.contract import RESULTS_PREFIX
from lambdas.origin_adapter import app as origin_app
from lambdas.origin_adapter.adapter import InferenceAdapter
from lambdas.origin_adapter.endpoint import SageMakerEndpoint
from lambdas.origin_adapter.invocations import EXTENSION_NAME, Invocations, hold_invocations
from lambdas.origin_adapter.results_store import ResultsStore, results_bucket_client
from local_run.servers import BackgroundServer
from tests.stage_secret import WITH_SECRET

BUCKET = "results-under-test"
ANSWER = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                                                                "finish_reason": "stop"}]}
GREEDY = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}


class RuntimeApi:
    """The Extensions API routes Lambda serves on AWS_LAMBDA_RUNTIME_API: register, and
    event/next, which blocks until the test hands out an event. Notes every call."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.registered: list[tuple[dict, dict]] = []
        self.next_calls: list[float] = []  # when each Next request came (time.time())
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.registered.append((dict(self.headers), body))
                self._answer({"functionName": "origin-adapter"}, {"Lambda-Extension-Identifier": "extension-1"})

            def do_GET(self) -> None:
                assert self.path == "/2020-01-01/extension/event/next"
                assert self.headers["Lambda-Extension-Identifier"] == "extension-1"
                api.next_calls.append(time.time())
                self._answer(api.events.get())

            def _answer(self, body: dict, headers: dict | None = None) -> None:
                payload = json.dumps(body).encode()
                self.send_response(200)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(payload)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def invoke(self, request_id: str, seconds: float = 30.0) -> None:
        self.events.put({"eventType": "INVOKE", "requestId": request_id, "deadlineMs": int((time.time() + seconds) * 1000)})

    def wait_next_calls(self, n: int, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while len(self.next_calls) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.next_calls) >= n, self.next_calls

    def stop(self) -> None:
        self.events.put({"eventType": "SHUTDOWN"})
        self.server.shutdown()


@pytest.fixture
def lambda_world(local_s3_environment):
    """A slow results bucket (each call 1 s), a stubbed endpoint, the web app with its hold."""
    s3 = local_s3_environment
    bucket = results_bucket_client(connect_timeout=0.5, read_timeout=2.0)
    bucket.create_bucket(Bucket=BUCKET)
    s3.checks.set_fault(BUCKET, delay_seconds=1.0)
    endpoint = SageMakerEndpoint("e", connect_timeout=1, read_timeout=5, throttle_retries=0,
                                 client=boto3.client("sagemaker-runtime", region_name="us-east-1"))
    adapter = InferenceAdapter(STAGES["dev"].edge_cache_settings(), endpoint, ResultsStore(BUCKET, bucket), logging.getLogger("t"))
    runtime = RuntimeApi()
    invocations = Invocations()
    hold = hold_invocations(runtime.address, invocations)
    web = BackgroundServer(origin_app.create_app(lambda: adapter, environments=1, invocations=invocations), name="origin").start()
    try:
        with Stubber(endpoint.client) as sagemaker:
            yield runtime, hold, web, sagemaker, s3, bucket
    finally:
        runtime.stop()
        web.stop()
        s3.checks.set_fault(None)


def test_the_extension_registers_for_invokes_and_is_waiting_before_the_first(lambda_world):
    runtime, hold, *_ = lambda_world
    assert hold is not None and hold.is_alive()
    (headers, body), = runtime.registered
    assert body == {"events": ["INVOKE"]} and headers["Lambda-Extension-Name"] == EXTENSION_NAME
    runtime.wait_next_calls(1)  # the Init phase ends only when every extension asked for its first event


def test_the_invocation_lasts_until_the_store_after_the_answer_is_done(lambda_world):
    runtime, _, web, sagemaker, s3, bucket = lambda_world
    payload = json.dumps(ANSWER).encode()
    sagemaker.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload)),
                                               "ContentType": "application/json"}, {"EndpointName": "e", "Body": ANY,
                                                                                    "ContentType": "application/json",
                                                                                    "Accept": "application/json"})
    runtime.wait_next_calls(1)
    runtime.invoke("request-1")
    started = time.time()
    answer = httpx2.post(web.url + "/v1/chat/completions", json=GREEDY, timeout=30,
                         headers={"x-amzn-lambda-context": json.dumps({"request_id": "request-1"}), **WITH_SECRET})
    answered = time.time()
    assert answer.status_code == 200 and answer.json() == ANSWER and answer.headers["x-inference-cache"] == "MISS"
    assert answered - started < 0.9  # the client did not wait for the slow bucket
    runtime.wait_next_calls(2)
    # Lambda is told the invocation is done only after the store (1 s on this bucket)...
    assert runtime.next_calls[1] - answered >= 0.9
    # ... which did complete: the answer is in the bucket (read once the fault is gone).
    s3.checks.set_fault(None)
    stored = bucket.get_object(Bucket=BUCKET, Key=f"{RESULTS_PREFIX}{answer.headers['x-inference-cache-key']}")
    assert stored["Body"].read() == payload


def test_an_invocation_whose_request_never_arrives_is_let_go_at_its_deadline(lambda_world):
    runtime, *_ = lambda_world
    runtime.wait_next_calls(1)
    invoked = time.time()
    runtime.invoke("never-seen", seconds=1.5)
    runtime.wait_next_calls(2)
    # Asked for the next event half a second before the deadline, not held for good.
    assert 0.8 <= runtime.next_calls[1] - invoked <= 1.4


def test_outside_lambda_nothing_registers():
    assert hold_invocations(None, Invocations()) is None
    assert hold_invocations("", Invocations()) is None
