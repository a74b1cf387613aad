"""StreamRelay (lambdas/origin_adapter/streaming.py): the model's stream, cut
anywhere, relayed event by event, and judged complete or not."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.origin_adapter.streaming import SSE_DONE, StreamRelay, requested_choices, wants_usage


def chunk(index: int = 0, content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return json.dumps({"object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}).encode()


LMI = b"".join(line + b"\n" for line in (chunk(content="Hel"), chunk(content="lo"), chunk(finish="stop"))) + b"\n"
VLLM_SSE = b"".join(b"data: " + line + b"\n\n" for line in (chunk(content="Hel"), chunk(content="lo"), chunk(finish="stop")))
VLLM_SSE += b"data: [DONE]\n\n"


def relay(parts: list[bytes], **options) -> tuple[StreamRelay, list[bytes]]:
    r = StreamRelay(sse=options.pop("sse", True), keep_limit=options.pop("keep_limit", 1 << 20), **options)
    out = [frame for part in parts for frame in r.feed(part)]
    return r, out + r.finish()


def test_lmi_json_lines_become_openai_sse_and_end_with_done():
    r, out = relay([LMI])
    assert out == [b"data: " + chunk(content="Hel") + b"\n\n", b"data: " + chunk(content="lo") + b"\n\n",
                   b"data: " + chunk(finish="stop") + b"\n\n", SSE_DONE]
    assert r.complete and r.kept() == b"".join(out)


def test_an_sse_stream_from_vllm_is_relayed_the_same_way():
    assert relay([VLLM_SSE])[1] == relay([LMI])[1]


def test_each_event_is_relayed_as_soon_as_its_line_is_complete():
    r = StreamRelay(sse=True, keep_limit=1 << 20)
    first = chunk(content="Hel") + b"\n"
    assert r.feed(first[:10]) == []  # half a line: nothing to send yet
    assert r.feed(first[10:]) == [b"data: " + chunk(content="Hel") + b"\n\n"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(LMI)), max_size=12), st.booleans())
def test_where_the_parts_are_cut_changes_nothing(cuts, sse):
    """PayloadParts end anywhere: any cut of the bytes relays the same events, the same verdict."""
    points = sorted(set(cuts))
    parts = [LMI[a:b] for a, b in zip([0, *points], [*points, len(LMI)], strict=True)]
    whole, whole_out = relay([LMI], sse=sse)
    cut, cut_out = relay(parts, sse=sse)
    assert b"".join(cut_out) == b"".join(whole_out) and cut.complete == whole.complete is True
    assert cut.kept() == whole.kept()


def test_invocations_streams_keep_the_containers_bytes():
    r, out = relay([VLLM_SSE], sse=False)
    assert b"".join(out) == VLLM_SSE and r.complete  # no [DONE] of ours: the container's is there


def test_a_stream_without_finish_reasons_is_incomplete_and_gets_no_done():
    r, out = relay([chunk(content="Hel") + b"\n"])
    assert not r.complete and SSE_DONE not in out and r.kept() is None
    assert r.why_incomplete() == "a choice ended without a finish reason"


def test_every_choice_must_finish():
    two = chunk(0, finish="stop") + b"\n" + chunk(1, content="x") + b"\n"
    assert not relay([two], choices=2)[0].complete
    assert relay([two + chunk(1, finish="length") + b"\n"], choices=2)[0].complete


def test_the_models_own_error_event_is_relayed_and_fails_the_stream():
    r, out = relay([chunk(content="Hel") + b'\n{"error": {"message": "engine died"}}\n\n'])
    assert out[-1] == b'data: {"error": {"message": "engine died"}}\n\n'  # the openai client raises it
    assert not r.complete and r.error_relayed and "engine died" in r.why_incomplete()


def test_a_line_that_is_no_event_is_not_sent_and_fails_the_stream():
    r, out = relay([b"<html>502</html>\n" + LMI])
    assert b"<html>" not in b"".join(out) and not r.complete and not r.error_relayed


def test_a_usage_chunk_is_required_when_asked_for():
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
    assert relay([LMI], usage=True)[0].why_incomplete() == "usage chunk missing"
    assert relay([LMI.rstrip(b"\n") + b"\n" + usage + b"\n"], usage=True)[0].complete


def test_a_tgi_stream_finishes_with_its_generated_text():
    token = json.dumps({"token": {"id": 1, "text": "4"}, "generated_text": None, "details": None}).encode()
    last = json.dumps({"token": {"id": 2, "text": "."}, "generated_text": "4.", "details": None}).encode()
    assert not relay([token + b"\n"], sse=False)[0].complete
    assert relay([token + b"\n" + last + b"\n"], sse=False)[0].complete


def test_an_answer_too_large_to_serve_is_relayed_but_not_kept():
    r, out = relay([LMI], keep_limit=100)
    assert r.complete and out[-1] == SSE_DONE and r.kept() is None


def test_an_empty_stream_is_not_an_answer():
    assert relay([b"\n"])[0].why_incomplete() == "empty stream"


def test_choices_and_usage_are_read_the_way_servers_coerce_them():
    assert [requested_choices({"n": n}) for n in (None, 1, 2, 2.0, "3", " 2 ", 2.5, "x", True, float("inf"), float("nan"))] == [
        1, 1, 2, 2, 3, 2, 1, 1, 1, 1, 1]
    assert wants_usage({"stream_options": {"include_usage": True}})
    assert not wants_usage({"stream_options": {"include_usage": "yes"}}) and not wants_usage({})


def test_a_last_line_without_its_newline_is_relayed_and_judged():
    r, out = relay([chunk(content="Hel") + b"\n" + chunk(finish="stop")])  # no newline after the last event
    assert out == [b"data: " + chunk(content="Hel") + b"\n\n", b"data: " + chunk(finish="stop") + b"\n\n", SSE_DONE]
    assert r.complete and r.kept() == b"".join(out)
    r, out = relay([b"<html>502</html>"])  # the same for a last line that is no event
    assert out == [] and r.why_incomplete() == "unreadable event in the model's stream"


def test_the_models_error_reads_as_its_message_whatever_its_shape():
    assert relay([b'{"error": "engine died"}\n'])[0].why_incomplete() == "model error mid-stream: engine died"
    assert relay([b'{"error": {"message": "engine died", "code": 500}}\n'])[0].why_incomplete() == (
        "model error mid-stream: engine died")
    long = "x" * 300  # at most 200 characters of it
    assert relay([json.dumps({"error": long}).encode() + b"\n"])[0].why_incomplete() == "model error mid-stream: " + "x" * 200


def test_a_choice_without_an_index_is_choice_zero_and_an_odd_index_finishes_none():
    no_index = json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}).encode() + b"\n"
    assert relay([no_index])[0].complete
    for index in ("1", 1.0, True):  # equal to 1 in Python, but not the integer index 1 a server sends
        odd = json.dumps({"choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]}).encode() + b"\n"
        assert not relay([chunk(0, finish="stop") + b"\n" + odd], choices=2)[0].complete, index


def test_a_tgi_stream_may_finish_by_its_details_alone():
    last = json.dumps({"token": {"id": 2, "text": "."}, "generated_text": None, "details": {"finish_reason": "length"}}).encode()
    assert relay([last + b"\n"], sse=False)[0].complete


def test_the_keep_limit_counts_the_whole_stream_and_holds_at_the_limit():
    lines = [chunk(content="Hel") + b"\n", chunk(content="lo") + b"\n", chunk(finish="stop") + b"\n"]
    whole = b"".join(b"data: " + line.rstrip(b"\n") + b"\n\n" for line in lines) + SSE_DONE
    assert relay(lines, keep_limit=len(whole))[0].kept() == whole  # exactly at the limit: kept
    assert relay(lines, keep_limit=len(whole) - 1)[0].kept() is None  # one byte over, across four feeds: not kept
