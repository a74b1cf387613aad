"""The origin adapter's token count (lambdas/origin_adapter/wordpiece.py) against Hugging
Face `tokenizers` itself, which TEI runs, on the dev stage's embeddings model's own
tokenizer.json: the same number of tokens for generated text of every kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from lambdas.origin_adapter.wordpiece import UnsupportedTokenizer, WordPieceCounter
from local_run.embeddings_server import packaged_embedding_model

TOKENIZER_FILE = packaged_embedding_model() / "tokenizer.json"
PROPERTY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(TOKENIZER_FILE))
    tokenizer.no_padding()  # as TEI loads it: no padding, no truncation
    tokenizer.no_truncation()
    return tokenizer


@pytest.fixture(scope="module")
def counter() -> WordPieceCounter:
    return WordPieceCounter.from_json(TOKENIZER_FILE.read_text())


def tokens(reference: Tokenizer, text: str) -> int:
    return len(reference.encode(text, add_special_tokens=True).ids)


VOCAB = sorted(json.loads(TOKENIZER_FILE.read_text())["model"]["vocab"])
# Text made of the vocabulary's own pieces, special tokens, punctuation and odd spacing:
# where the greedy match, the added-token split and the pre-tokenizer do their work.
pieces = st.one_of(
    st.sampled_from(VOCAB).map(lambda p: p.removeprefix("##")),
    st.sampled_from(["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[cls]", "[MASK"]),
    st.sampled_from([" ", "  ", "\t", "\n", "\u3000", "\u00a0", "\u200b", "\x00", "\ufffd", "-", "'", "...", "$", "€"]),
    st.text(max_size=4),
)
built = st.lists(pieces, max_size=30).map("".join)


@PROPERTY
@given(text=st.text(max_size=120))
def test_any_unicode_text_counts_as_tokenizers_counts(reference, counter, text):
    assert counter.count(text) == tokens(reference, text)


@PROPERTY
@given(text=built)
def test_vocabulary_pieces_special_tokens_and_spacing_count_as_tokenizers_counts(reference, counter, text):
    assert counter.count(text) == tokens(reference, text)


@pytest.mark.parametrize(
    "text",
    [
        "naïve café, ÉCOLE: Σ ΣΑΣ İstanbul",  # accents stripped, lowercase per character
        "中文字 and 日本語",  # CJK characters are words of their own
        "hi 🥰 there",  # unknown word: one [UNK]
        "x" * 101 + " y",  # longer than max_input_chars_per_word: one [UNK]
        "supercalifragilisticexpialidocious",  # many continuation pieces
        "[CLS] hello [MASK]x",  # special tokens in the text: one token each
        "a\x0bb\x1cc\u0085d\u200be",  # control and format characters removed
        "",
    ],
)
def test_hand_picked_texts(reference, counter, text):
    assert counter.count(text) == tokens(reference, text)


def test_the_character_tables_are_what_tokenizers_does_for_every_code_point():
    """wordpiece_tables.py is generated from `tokenizers` (python -m tests.unit.wordpiece_tables):
    read again here, one code point at a time, it must be the same."""
    from tests.unit import wordpiece_tables

    assert wordpiece_tables.render(wordpiece_tables.tables()) == wordpiece_tables.MODULE.read_text()


@pytest.mark.parametrize("code", [0x2E52, 0x13430, 0x1ABF, 0x0ECE, 0x11F00, 0x1E4EC])
def test_characters_newer_than_tokenizers_tables_count_as_tokenizers_counts(reference, counter, code):
    """Characters Python's unicodedata knows and `tokenizers`' tables do not (a new
    punctuation mark, format control, non-spacing mark), next to a letter."""
    for text in (f"0{chr(code)}", f"a{chr(code)}b", f"{chr(code)} x"):
        assert counter.count(text) == tokens(reference, text)


def test_a_tokenizer_it_does_not_follow_is_refused():
    config = json.loads(TOKENIZER_FILE.read_text())
    with pytest.raises(UnsupportedTokenizer, match="WordPiece"):
        WordPieceCounter({**config, "model": {**config["model"], "type": "BPE"}})
    with pytest.raises(UnsupportedTokenizer, match="ByteLevel"):
        WordPieceCounter({**config, "pre_tokenizer": {"type": "ByteLevel"}})
