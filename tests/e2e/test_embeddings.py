"""/v1/embeddings end to end on the local run, with the official openai client: the edge
function, the origin adapter's translation, and the TEI stand-in with the real model
behind the local SageMaker runtime, all over real sockets."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import urllib.request

import openai
import pytest

from local_run.process import create_api_key, launched

pytestmark = pytest.mark.e2e


def tei_calls(local_run) -> int:
    """How many calls the TEI stand-in has answered (one per batch the adapter sent)."""
    with urllib.request.urlopen(local_run["embeddings_server"] + "/stats", timeout=10) as answer:
        return json.loads(answer.read())["invocations"]


def test_miss_then_hit_with_identical_vectors_and_usage(client, local_run):
    texts = ["edge caches save GPU time", "half the chunks did not change"]
    first = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=texts)
    second = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=texts)
    assert (first.headers["x-inference-cache"], second.headers["x-inference-cache"]) == ("MISS", "HIT")
    a, b = first.parse(), second.parse()
    assert [d.embedding for d in b.data] == [d.embedding for d in a.data]
    assert [d.index for d in a.data] == [0, 1] and len(a.data[0].embedding) == 384
    assert a.model == local_run["embeddings_model"]
    # usage: tokens as the model reads them ([CLS] ... [SEP] each)
    from tokenizers import Tokenizer

    from local_run.embeddings_server import packaged_embedding_model

    tokenizer = Tokenizer.from_file(str(packaged_embedding_model() / "tokenizer.json"))
    tokenizer.no_padding()
    assert a.usage.prompt_tokens == a.usage.total_tokens == sum(len(tokenizer.encode(t).ids) for t in texts)


def test_base64_decodes_to_the_float_vectors(client):
    text = "base64 or floats: the same vector"
    floats = client.embeddings.create(model="m", input=text, encoding_format="float").data[0].embedding
    raw = client.embeddings.with_raw_response.create(model="m", input=text, encoding_format="base64")
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    assert isinstance(encoded, str)
    data = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{len(data) // 4}f", data)) == pytest.approx(floats, abs=1e-7)
    # The openai client asks for base64 by default and decodes it: the same vector again.
    assert client.embeddings.create(model="m", input=text).data[0].embedding == pytest.approx(floats, abs=1e-7)


def test_a_batch_goes_to_the_model_in_its_batches_and_comes_back_in_order(client, local_run):
    texts = [f"chunk {i}: re-indexed text" for i in range(70)]
    before = tei_calls(local_run)
    batch = client.embeddings.create(model="m", input=texts, encoding_format="float").data
    assert tei_calls(local_run) - before == 3  # 32 + 32 + 6 (TEI's max client batch size)
    assert [d.index for d in batch] == list(range(70))
    for i in (0, 33, 69):  # each vector is that input's own
        alone = client.embeddings.create(model="m", input=texts[i], encoding_format="float").data[0].embedding
        assert batch[i].embedding == pytest.approx(alone, abs=2e-5)


def test_token_ids_are_embedded_as_the_text_they_encode(client):
    from tokenizers import Tokenizer

    from local_run.embeddings_server import packaged_embedding_model

    tokenizer = Tokenizer.from_file(str(packaged_embedding_model() / "tokenizer.json"))
    tokenizer.no_padding()
    ids = tokenizer.encode("token ids work too").ids
    by_ids = client.embeddings.create(model="m", input=ids, encoding_format="float")
    by_text = client.embeddings.create(model="m", input="token ids work too", encoding_format="float")
    assert by_ids.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=2e-5)
    assert by_ids.usage.prompt_tokens == len(ids)


def test_what_the_model_cannot_do_is_a_400_and_never_a_model_call(client, local_run):
    before = tei_calls(local_run)
    for kwargs in (
        {"input": ["x"] * 5000},  # more than OpenAI accepts: refused at the edge
        {"input": "x", "dimensions": 64},  # all-MiniLM-L6-v2 has no Matryoshka training
        {"input": ["a", [1, 2]]},
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.embeddings.create(model="m", **kwargs)
        assert raised.value.body["param"] in ("input", "dimensions"), kwargs
    assert tei_calls(local_run) == before


def test_an_input_longer_than_the_model_reads_is_teis_422_and_is_not_stored(client):
    long = "word " * 400
    for _ in range(2):
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            client.embeddings.create(model="m", input=long)
        assert "must have less than 256 tokens" in raised.value.body["message"]
        assert raised.value.response.headers["x-inference-cache"] == "BYPASS"


def test_one_large_request_does_not_hold_the_model_for_everyone(client, local_run):
    """A request of 512 inputs goes to the model as 16 batches, one after the other; a
    one-input request sent while it runs is answered between two of them, long before the
    large one ends (order of completion, not a timing threshold)."""
    big = [f"document {i} of a large re-indexing job" for i in range(512)]
    done: dict[str, float] = {}

    def large() -> None:
        client.with_options(timeout=120).embeddings.create(model="m", input=big, encoding_format="float")
        done["large"] = time.monotonic()

    before = tei_calls(local_run)
    worker = threading.Thread(target=large)
    worker.start()
    deadline = time.monotonic() + 60
    while tei_calls(local_run) - before < 2 and time.monotonic() < deadline:  # the large one is under way
        time.sleep(0.05)
    small = client.embeddings.create(model="m", input="a quick question", encoding_format="float")
    done["small"] = time.monotonic()
    calls_when_small_done = tei_calls(local_run) - before
    worker.join(120)
    assert len(small.data) == 1 and "large" in done
    assert done["small"] < done["large"]
    # The small request's own call came while the large one still had batches to send.
    assert calls_when_small_done < 16 + 1
    assert tei_calls(local_run) - before == 16 + 1


@pytest.fixture(scope="module")
def without_embeddings(tmp_path_factory):
    """The dev stage served as a stage without an embeddings model."""
    key_store = tmp_path_factory.mktemp("no-embeddings-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store), "--no-embeddings") as started:
        yield {**started, "api_key": create_api_key(key_store, "e2e")["key"]}


def test_a_stage_without_embeddings_answers_not_found_at_the_edge(without_embeddings):
    client = openai.OpenAI(base_url=without_embeddings["listening"] + "/v1", api_key=without_embeddings["api_key"],
                           max_retries=0)
    for _ in range(2):  # never cached: the same answer again
        with pytest.raises(openai.NotFoundError) as raised:
            client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
        assert raised.value.body["code"] == "model_not_found"
        assert raised.value.response.headers["x-inference-cache"] == "BYPASS"
    assert without_embeddings["embeddings_server"] is None
    with urllib.request.urlopen(without_embeddings["model_server"] + "/stats", timeout=10) as answer:
        assert json.loads(answer.read())["invocations"] == 0  # no model call
    assert [m.id for m in client.models.list().data] == ["meta-llama/Llama-3.1-8B-Instruct"]
