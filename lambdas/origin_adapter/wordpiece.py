"""How many tokens an embeddings model reads in a text: its own WordPiece tokenizer
(tokenizer.json, as published with the weights), counted the way Hugging Face
`tokenizers` encodes and Text Embeddings Inference counts (special tokens included, no
padding, no truncation).

Why here: TEI counts tokens, but behind SageMaker its count never reaches the caller
(InvokeEndpoint returns the body and the content type, not TEI's x-compute-tokens
header), and OpenAI's `usage` needs it. `tokenizers` itself is compiled Rust, which the
origin adapter's bundle does not carry (pure Python only, any machine synthesizes it), so
the BERT family's tokenizer (BertNormalizer, BertPreTokenizer, WordPiece, a template of
special tokens) is followed step by step, with `tokenizers`' own character classes
(wordpiece_tables.py); tests/unit/test_wordpiece.py holds it to `tokenizers` on generated
text. Any other tokenizer is refused when loaded.
"""

from __future__ import annotations

import json
import re
import unicodedata
from bisect import bisect_right

from lambdas.origin_adapter import wordpiece_tables

# Rust's char::is_whitespace (the Unicode White_Space property).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


class _Ranges:
    """Membership in sorted, disjoint inclusive ranges of code points."""

    def __init__(self, ranges: tuple) -> None:
        self._starts = [start for start, _ in ranges]
        self._ends = [end for _, end in ranges]

    def __contains__(self, code: int) -> bool:
        i = bisect_right(self._starts, code) - 1
        return i >= 0 and code <= self._ends[i]


# The character classes as `tokenizers` itself applies them (its tables are older than
# Python's unicodedata, and the Lambda runtime's Python is newer than the synthesizing
# machine's): generated from `tokenizers` into wordpiece_tables.py.
_REMOVED = _Ranges(wordpiece_tables.REMOVED)
_NONSPACING = _Ranges(wordpiece_tables.NONSPACING)
_PUNCTUATION = _Ranges(wordpiece_tables.PUNCTUATION)
# BertNormalizer's handle_chinese_chars: CJK ideographs get a space on each side.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# ASCII text (the common case) in a few C-level passes: clean_text drops every control
# character but tab, newline and return, which become spaces; words are runs of letters
# and digits, every other printable ASCII character is punctuation (its own word).
_ASCII_CLEAN = {**{c: None for c in range(0x20) if c not in (9, 10, 13)}, 9: " ", 10: " ", 13: " ", 0x7F: None}
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 ]")
_MEMO_LIMIT = 200_000


class UnsupportedTokenizer(ValueError):
    """tokenizer.json describes a tokenizer this module does not follow."""


class WordPieceCounter:
    def __init__(self, tokenizer: dict) -> None:
        normalizer, pre_tokenizer, model = tokenizer.get("normalizer"), tokenizer.get("pre_tokenizer"), tokenizer.get("model")
        if not (isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer"):
            raise UnsupportedTokenizer(f"normalizer {_kind(normalizer)}: only BertNormalizer is followed")
        if not (isinstance(pre_tokenizer, dict) and pre_tokenizer.get("type") == "BertPreTokenizer"):
            raise UnsupportedTokenizer(f"pre-tokenizer {_kind(pre_tokenizer)}: only BertPreTokenizer is followed")
        if not (isinstance(model, dict) and model.get("type") == "WordPiece"):
            raise UnsupportedTokenizer(f"model {_kind(model)}: only WordPiece is followed")
        self._clean = normalizer.get("clean_text", True)
        self._chinese = normalizer.get("handle_chinese_chars", True)
        self._lowercase = normalizer.get("lowercase", True)
        strip = normalizer.get("strip_accents")
        self._strip_accents = self._lowercase if strip is None else strip
        self._vocab = frozenset(model["vocab"])
        self._prefix = model.get("continuing_subword_prefix", "##")
        self._max_word_chars = model.get("max_input_chars_per_word", 100)
        self._specials = _special_tokens(tokenizer.get("post_processor"))
        added = tokenizer.get("added_tokens") or []
        for token in added:
            if token.get("normalized") or token.get("single_word"):
                raise UnsupportedTokenizer(f"added token {token.get('content')!r}: normalized or single-word matching")
        contents = sorted({t["content"] for t in added if t.get("content")}, key=len, reverse=True)
        # Added tokens are matched in the raw text first, leftmost and longest: one token each.
        self._added = re.compile("|".join(map(re.escape, contents))) if contents else None
        self._memo: dict[str, int] = {}

    @classmethod
    def from_json(cls, text: str | bytes) -> WordPieceCounter:
        return cls(json.loads(text))

    def count(self, text: str) -> int:
        """Tokens of `text` as the model reads it: special tokens of the template included."""
        if self._added is None or not self._added.search(text):
            return self._specials + self._count_piece(text)
        n, start = self._specials, 0
        for match in self._added.finditer(text):
            n += self._count_piece(text[start : match.start()]) + 1
            start = match.end()
        return n + self._count_piece(text[start:])

    # -- one piece of text between added tokens ------------------------------------------------
    def _count_piece(self, text: str) -> int:
        if not text:
            return 0
        if text.isascii() and self._clean:
            text = text.translate(_ASCII_CLEAN)
            if self._lowercase:
                text = text.lower()
            words = _ASCII_WORDS.findall(text)
        else:
            words = self._words(self._normalize(text))
        memo, n = self._memo, 0
        for word in words:
            count = memo.get(word)
            if count is None:
                count = self._word_pieces(word)
                if len(memo) < _MEMO_LIMIT:
                    memo[word] = count
            n += count
        return n

    def _normalize(self, text: str) -> str:
        """BertNormalizer: clean_text, handle_chinese_chars, strip_accents, lowercase."""
        out = []
        for c in text:
            code = ord(c)
            if self._clean:
                if c in "\t\n\r":
                    out.append(" ")
                    continue
                if code in _REMOVED or 0xD800 <= code <= 0xDFFF:  # (no Rust string holds a surrogate)
                    continue
                if c in _WHITE_SPACE:
                    out.append(" ")
                    continue
            if self._chinese and _is_cjk(code):
                out.extend((" ", c, " "))
            else:
                out.append(c)
        text = "".join(out)
        if self._strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if ord(c) not in _NONSPACING)
        if self._lowercase:
            text = "".join(c.lower() for c in text)  # per character, as Rust's char::to_lowercase
        return text

    @staticmethod
    def _words(text: str) -> list[str]:
        """BertPreTokenizer: split on whitespace (removed), then every punctuation
        character (ASCII punctuation or a Unicode P* category) is a word of its own."""
        words, current = [], []
        for c in text:
            if c in _WHITE_SPACE:
                if current:
                    words.append("".join(current))
                    current = []
            elif ord(c) in _PUNCTUATION:
                if current:
                    words.append("".join(current))
                    current = []
                words.append(c)
            else:
                current.append(c)
        if current:
            words.append("".join(current))
        return words

    def _word_pieces(self, word: str) -> int:
        """WordPiece: greedy longest match from the left, continuations with the prefix; a
        word with a piece not in the vocabulary, or longer than the limit, is one [UNK]."""
        if len(word) > self._max_word_chars:
            return 1
        vocab, prefix = self._vocab, self._prefix
        if word in vocab:
            return 1
        pieces, start = 0, 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            if end == start:
                return 1  # [UNK]
            pieces += 1
            start = end
        return pieces


def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in _CJK)


def _special_tokens(post_processor) -> int:
    """Special tokens the post-processor adds to one sequence."""
    if post_processor is None:
        return 0
    kind = post_processor.get("type")
    if kind == "TemplateProcessing":
        single = post_processor.get("single") or []
        specials = post_processor.get("special_tokens") or {}
        return sum(len(specials.get(item["SpecialToken"]["id"], {}).get("ids") or [0]) for item in single if "SpecialToken" in item)
    if kind in ("BertProcessing", "RobertaProcessing"):
        return 2
    raise UnsupportedTokenizer(f"post-processor {kind!r}: only TemplateProcessing and BertProcessing are followed")


def _kind(part) -> str:
    return repr(part.get("type")) if isinstance(part, dict) else repr(part)
