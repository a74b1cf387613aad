"""A stream has a budget of its own: a streamed answer may take longer than a whole answer's
budget (InvokeEndpoint's 60 s does not bind InvokeEndpointWithResponseStream) and is still
relayed whole and stored. Run on a local run with the stage's budgets shortened through the
environment (a whole answer 6 s, its model read 3 s, a stream 20 s), so it takes seconds,
not minutes; the deployed budgets are checked at synth (tests/unit/test_settings.py)."""

from __future__ import annotations

import time

import openai
import pytest

from lambdas.contract import ADAPTER_TIMEOUT_ENV, ENDPOINT_READ_TIMEOUT_ENV, STREAM_BUDGET_ENV
from local_run.process import create_api_key, launched

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def short_budgets(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("budget-keys") / "api-keys.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENDPOINT_READ_TIMEOUT_ENV, "3")
        env.setenv(ADAPTER_TIMEOUT_ENV, "6")
        env.setenv(STREAM_BUDGET_ENV, "20")
        # Chat streams only: the embeddings batch read (12 s) would not fit a 3 s model read.
        with launched("--stage", "dev", "--key-store-file", str(key_store), "--no-embeddings") as started:
            client = openai.OpenAI(base_url=started["listening"] + "/v1", api_key=create_api_key(key_store, "b")["key"],
                                   max_retries=0)
            yield client


def _stream(client, content: str) -> tuple[str, str, float]:
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": content}], temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return raw.headers["x-inference-cache"], text, time.perf_counter() - started


def test_a_stream_longer_than_a_whole_answers_budget_completes_and_is_stored(short_budgets):
    """Before: every stream was ended at the whole-answer budget (52 s deployed) with an
    error event, and never stored. 40 tokens, one every 250 ms: 10 s, beyond the 6 s budget
    of a whole answer (each gap, 250 ms, well within the 3 s model read)."""
    content = f"A long answer {time.time()} [[tokens:40]] [[token-ms:250]]"
    status, text, seconds = _stream(short_budgets, content)
    assert status == "MISS" and seconds > 6 and len(text.split()) >= 30
    replay, replayed, replay_seconds = _stream(short_budgets, content)
    assert (replay, replayed) == ("HIT", text) and replay_seconds < 5


def test_a_stream_past_its_own_budget_ends_with_an_error_and_is_not_stored(short_budgets):
    content = f"Longer than the stream budget {time.time()} [[tokens:200]] [[token-ms:150]]"  # 30 s > 20 s
    with pytest.raises(openai.APIError):
        _stream(short_budgets, content)
    with pytest.raises(openai.APIError):  # not stored: the model runs again, and is cut again
        _stream(short_budgets, content)


def test_a_whole_answer_keeps_the_whole_answer_budget(short_budgets):
    """The same 10 s of generation, not streamed: past the 3 s model read, a 504."""
    with pytest.raises(openai.APIStatusError) as cut:
        short_budgets.chat.completions.create(
            model="local", messages=[{"role": "user", "content": f"Whole {time.time()} [[tokens:40]] [[token-ms:250]]"}],
            temperature=0)
    assert cut.value.status_code == 504
