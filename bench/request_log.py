"""Builds a request log (JSONL for `bin/cache-key --jsonl [--summary]`) from realistic
client traffic: the bodies are what the official openai client sends, captured by a
server on 127.0.0.1; some are re-sent as other clients serialize them.

The mix (fixed seed): an FAQ bot (greedy, repeated questions, some from a client that
pretty-prints and spells out defaults), an agent re-asking a tool question (seeded),
an evaluation suite run twice (greedy, stop sequences in another order the second
time), chat users sampling at temperature 0.7, and a document re-indexing job
(embeddings, half the chunks unchanged). Each line names its client and when it came
(one day, in order of arrival; a second generator of its own draws the times, so the
requests are the same with or without them):

    .venv/bin/python bench/request_log.py > requests.jsonl
    bin/cache-key --jsonl --summary < requests.jsonl
"""

from __future__ import annotations

import json
import random
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

CHAT_ANSWER = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
EMBEDDING_ANSWER = {"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}]}


class Capture(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "cache-control")}
        self.server.requests.append({"path": self.path, "headers": headers, "body": body.decode()})
        answer = EMBEDDING_ANSWER if self.path.endswith("/embeddings") else CHAT_ANSWER
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def other_client(entry: dict, rng: random.Random) -> dict:
    """The same request as another client library would serialize it: pretty-printed,
    keys in another order, defaults spelled out, non-ASCII escaped."""
    body = json.loads(entry["body"])
    if "messages" in body:
        body.setdefault("n", 1)
        body.setdefault("stream", False)
        body.setdefault("presence_penalty", 0)
    items = list(body.items())
    rng.shuffle(items)
    return {**entry, "body": json.dumps(dict(items), indent=2, ensure_ascii=True)}


def main() -> None:
    rng = random.Random(20261123)
    server = Capture()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="sk-demo", max_retries=0)
    model = "meta-llama/Llama-3.1-8B-Instruct"
    system = {"role": "system", "content": "You are the support assistant of an online shop. Answer briefly."}
    faq = ["How do I return an item?", "Where is my order?", "Can I change my delivery address?", "Do you ship abroad?",
           "How long do refunds take?", "What is the warranty?", "How do I reset my password?", "Is there a student discount?"]
    log: list[dict] = []
    clock = random.Random(20261124)
    day = datetime(2026, 11, 23, tzinfo=UTC)

    def at(entry: dict, client: str, seconds: float) -> dict:
        stamp = (day + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {**entry, "client": client, "timestamp": stamp}

    def capture(call, **kwargs) -> dict:
        before = len(server.requests)
        call(**kwargs)
        return server.requests[before]

    # FAQ bot: popular questions repeat; a fifth come from a client that serializes differently.
    for _ in range(60):
        question = faq[min(int(rng.expovariate(0.6)), len(faq) - 1)]
        entry = capture(client.chat.completions.create, model=model, temperature=0,
                        messages=[system, {"role": "user", "content": question}], user=f"visitor-{rng.randrange(1000)}")
        entry = other_client(entry, rng) if rng.random() < 0.2 else entry
        log.append(at(entry, "faq-bot", clock.uniform(8 * 3600, 20 * 3600)))  # opening hours
    # Agent: the same tool question, seeded, asked again on every step of a few runs.
    tools = [{"type": "function", "function": {"name": "order_status", "description": "Status of an order",
              "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]
    for _run in range(6):
        started = clock.uniform(0, 86_000)
        for step in range(4):
            entry = capture(client.chat.completions.create, model=model, seed=7, temperature=0.2, tools=tools,
                            messages=[{"role": "user", "content": f"Where is order {1000 + step}?"}])
            log.append(at(entry, "support-agent", started + step * clock.uniform(2, 10)))
    # Evaluation suite, run twice; the second run lists its stop sequences in another order.
    cases = [f"Q{i}: summarize policy section {i} in one sentence." for i in range(25)]
    for started, stops in ((2 * 3600, ["\n\n", "###"]), (2.5 * 3600, ["###", "\n\n"])):
        for i, case in enumerate(cases):
            entry = capture(client.completions.create, model=model, prompt=case, temperature=0, max_tokens=64, stop=stops)
            log.append(at(entry, "eval-suite", started + 2 * i))
    # Chat users, sampling: never cacheable under the deterministic policy.
    for _ in range(30):
        entry = capture(client.chat.completions.create, model=model, temperature=0.7,
                        messages=[{"role": "user", "content": rng.choice(faq)}])
        log.append(at(entry, "chat-users", clock.uniform(8 * 3600, 22 * 3600)))
    # Re-indexing documents: half the chunks did not change since the last run.
    chunks = [f"Policy section {i}: items may be returned within {14 + i} days of delivery." for i in range(20)]
    for run in range(2):
        for i, chunk in enumerate(chunks):
            text = chunk if (run == 0 or i % 2 == 0) else chunk + " (updated)"
            entry = capture(client.embeddings.create, model="all-MiniLM-L6-v2", input=text)
            log.append(at(entry, "indexer", (1 + 12 * run) * 3600 + 3 * i))  # at 01:00 and 13:00
    server.shutdown()
    log.sort(key=lambda entry: entry["timestamp"])  # in order of arrival
    for entry in log:
        sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
