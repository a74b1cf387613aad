"""Cache decision for inference requests: cacheable or not, the cache key, and the
error the edge returns for invalid input.

Shared by the Lambda@Edge origin-request function, the origin adapter and
`bin/cache-key`. Stdlib only, pure (no I/O), and `decide` never raises.
Rules and the choices behind them: docs/cache-key.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import json.encoder
from collections import namedtuple
from itertools import chain, compress, count, repeat

from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    CACHE_KEY_CONTEXT,
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    EMBEDDINGS_MAX_INPUTS,
    EMBEDDINGS_ROUTE,
    INVOCATIONS_ROUTE,
    TTL_HEADER,
)
from lambdas.errors import ApiError

# Bump when the canonical form or the key's construction changes: every key changes with
# it (a fresh cache). 3: keys are MACs under the stage secret.
KEY_FORMAT = "inference-cache-key/3"
# The headers decide reads. The API key is not among them: caches are scoped by the
# tenant the viewer-request check verified (`tenant=`), never by the key itself.
_READ_HEADERS = ("content-type", "content-encoding", "cache-control", TTL_HEADER)

# --------------------------------------------------------------------------- the field table
# What the module knows about each field, per body schema; docs/cache-key.md is written
# from it. A field that is not listed is kept exactly as sent: its value as parsed (key
# order and number spelling included), a null included.
#
# kind:
#   NUM    numeric sampling parameter: numbers of equal value fold (0 == 0.0 == -0 == 0e0;
#          integral floats become ints); any other JSON type -> not cacheable
#   COUNT  NUM that asks for several sequences (n, best_of): absent or the integer 1, or
#          greedy decoding, else not cacheable
#   SEED   NUM; seeded sampling only for an integer in 0..2^63-1
#   SAMPLE TGI/LMI `do_sample`: a bool, else not cacheable
#   FLAG   a bool output option: kept as sent; only `False` can equal a default
#   STOP   stop strings: repeats removed (first occurrence kept), order kept, [] = absent
#   STOPS  STOP where a lone string is the same as a one-element list (OpenAI routes)
#   KEPT   kept exactly as sent (opaque: tools, schemas, formats, template kwargs)
# default: the value every server of that schema uses when the field is absent (same
#   kind and type: `logprobs: 0` is not `false`); a request that sends it keys as one
#   that does not. NO: none (the servers differ, or the field has none).
# null_ok: an explicit null is the same as absent in every server of that schema.
NUM, COUNT, SEED, SAMPLE, FLAG, STOP, STOPS, KEPT = "num", "count", "seed", "sample", "flag", "stop", "stops", "kept"
NO = None
_SAMPLING_KINDS = frozenset((NUM, COUNT, SEED, SAMPLE))

# OpenAI chat completions (vLLM ChatCompletionRequest; TGI and LMI speak the same schema).
#  name                    kind    default null_ok
CHAT_FIELDS = {
    "model":                 (KEPT,  NO,   False),  # required, a non-empty string (/v1 routes)
    "stream":                (FLAG,  False, False),  # leaves the body: the key's stream flag
    "n":                     (COUNT, 1,    False),  # vLLM: Optional[int] = 1; null is not 1
    "best_of":               (COUNT, NO,   True),
    "temperature":           (NUM,   NO,   True),   # defaults differ between servers
    "top_p":                 (NUM,   NO,   True),
    "top_k":                 (NUM,   NO,   True),
    "min_p":                 (NUM,   NO,   True),
    "repetition_penalty":    (NUM,   NO,   True),
    "presence_penalty":      (NUM,   0,    False),
    "frequency_penalty":     (NUM,   0,    False),
    "max_tokens":            (NUM,   NO,   True),   # chat: default None (the rest of the context)
    "max_completion_tokens": (NUM,   NO,   True),
    "min_tokens":            (NUM,   NO,   False),
    "seed":                  (SEED,  NO,   True),   # vLLM: -1 means random
    "stop":                  (STOPS, NO,   True),   # vLLM: None -> []
    "logprobs":              (FLAG,  False, False),  # chat: Optional[bool] = False
    "echo":                  (FLAG,  False, False),
    "logit_bias":            (KEPT,  NO,   True),
    "tools":                 (KEPT,  NO,   True),   # rendered by the chat template (tojson)
    "tool_choice":           (KEPT,  NO,   False),  # vLLM: "auto" only when absent; null != absent
    "response_format":       (KEPT,  NO,   True),   # compiled into a grammar as written
    "chat_template_kwargs":  (KEPT,  NO,   False),
}
# OpenAI completions (vLLM CompletionRequest).
COMPLETION_FIELDS = {
    **{k: CHAT_FIELDS[k] for k in ("model", "stream", "n", "best_of", "temperature", "top_p", "top_k", "min_p",
                                   "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
                                   "seed", "stop", "echo", "logit_bias", "response_format")},
    "max_tokens":            (NUM,   NO,   False),  # completions: default 16, null = no limit
    "logprobs":              (KEPT,  NO,   False),  # Optional[int]: false -> 0 still returns logprobs
}
# OpenAI embeddings: no sampling; everything but model and the stream flag kept as sent.
EMBEDDING_FIELDS = {
    "model":                 (KEPT,  NO,   False),
    "stream":                (FLAG,  False, False),
}
# TGI-style /invocations body: {"inputs", "parameters", "stream"}; every other top-level
# field is kept (TGI and LMI ignore it, but the module does not know that for every server).
TGI_FIELDS = {
    "stream":                (FLAG,  False, False),
}
# TGI/LMI `parameters` (TGI GenerateParameters; LMI maps them onto a vLLM CompletionRequest).
TGI_PARAMETERS = {
    "do_sample":             (SAMPLE, NO,  False),
    "temperature":           (NUM,   NO,   True),
    "top_k":                 (NUM,   NO,   True),
    "top_p":                 (NUM,   NO,   True),
    "typical_p":             (NUM,   NO,   True),
    "repetition_penalty":    (NUM,   NO,   True),
    "presence_penalty":      (NUM,   0,    False),
    "frequency_penalty":     (NUM,   0,    False),
    "max_new_tokens":        (NUM,   NO,   False),  # LMI: absent = 30, null = no limit
    "seed":                  (SEED,  NO,   True),
    "n":                     (COUNT, NO,   False),  # LMI: overrides top_n_tokens, so 1 is not absent
    "best_of":               (COUNT, NO,   True),
    "top_n_tokens":          (COUNT, NO,   False),  # LMI: becomes vLLM's n
    "stop":                  (STOP,  NO,   False),  # TGI: a list (a string is a 400); null is a 400
}
# The body schemas, and which route reads which. /invocations picks its schema by key,
# the way LMI does (djl-serving vllm_async_service.py, preprocess_request).
_SCHEMAS = {
    "chat": ("messages", CHAT_FIELDS),
    "completions": ("prompt", COMPLETION_FIELDS),
    "embeddings": ("input", EMBEDDING_FIELDS),
    "tgi": ("inputs", TGI_FIELDS),
}
_ROUTE_SCHEMA = {CHAT_ROUTE: "chat", COMPLETIONS_ROUTE: "completions", EMBEDDINGS_ROUTE: "embeddings"}
_INVOCATION_KEYS = (("prompt", "completions"), ("inputs", "tgi"), ("messages", "chat"))
_SEED_MAX = 2**63 - 1
_NUMBERS = frozenset((int, float))
_LONG_TEXT_CHARS = 256
_DICT_ONLY = {dict}
_LIST_ONLY = {list}
_CONTAINERS = frozenset((dict, list))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{[")  # translate(None, this): only { and [ left
_STR_ONLY = {str}


# Immutable records as named tuples: dataclasses would add ~15 ms to every cold start.
class Decision(namedtuple("Decision", "cacheable key reason error lookup store ttl_seconds")):
    """cacheable, key (64 hex or None), reason, error (ApiError or None), lookup (may be
    answered from the cache), store (a 2xx answer may be stored under key), ttl_seconds."""

    __slots__ = ()

    def as_dict(self) -> dict:
        """The `bin/cache-key` contract object."""
        error = None if self.error is None else {"status": self.error.status, "message": self.error.message}
        return {"cacheable": self.cacheable, "key": self.key, "reason": self.reason, "error": error}


class _Reject(Exception):
    """Invalid request: carries the ApiError the edge returns."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = ApiError(status, message, param, code)


# --------------------------------------------------------------------------- headers


def _header_value(value) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and type(value[0]) is dict:  # CloudFront: [{"key": ..., "value": ...}]
            return str(value[0].get("value", ""))
        return ", ".join(str(v.get("value", "")) if isinstance(v, dict) else str(v) for v in value)
    return "" if value is None else str(value)


def _read_headers(headers) -> tuple:
    """(content-type, content-encoding, cache-control, x-inference-cache-ttl), each a str or
    None, from a plain mapping (any case), list values, or CloudFront's {name: [{"key",
    "value"}]}; repeats joined by ", "."""
    if not headers:
        return None, None, None, None
    try:  # CloudFront hands over lowercase names: look the few up, leave the rest alone
        direct = all(map(str.islower, headers.keys()))
    except TypeError:
        direct = False
    if direct:
        get = headers.get
        ctype = get("content-type")
        if ctype is not None and type(ctype) is not str:
            ctype = _header_value(ctype)
        encoding = get("content-encoding")
        if encoding is not None and type(encoding) is not str:
            encoding = _header_value(encoding)
        cc = get("cache-control")
        if cc is not None and type(cc) is not str:
            cc = _header_value(cc)
        ttl = get(TTL_HEADER)
        if ttl is not None and type(ttl) is not str:
            ttl = _header_value(ttl)
        return ctype, encoding, cc, ttl
    out: dict = {}
    for name, value in headers.items():
        name = str(name).lower()
        if name in _READ_HEADERS:
            value = _header_value(value)
            out[name] = out[name] + ", " + value if name in out else value
    return tuple(map(out.get, _READ_HEADERS))


# HTTP's optional whitespace around a field value is space and horizontal tab only (RFC
# 9110, 5.6.3 OWS); str.strip() would also remove \v, \f, \x1c-\x1f and Unicode spaces.
_OWS = " \t"


def _client_headers(headers, settings: EdgeCacheSettings) -> tuple[bool, bool, int]:
    """Checks the content headers (415) and reads the client controls (400 on a bad TTL):
    (no_store, no_cache, ttl_seconds). A value with a control character other than HTAB
    is not a valid field value (RFC 9110, 5.5): 400, never read leniently."""
    ctype, encoding, cc, ttl = headers_read = _read_headers(headers)
    for value, name in zip(headers_read, _READ_HEADERS, strict=True):
        if value is not None and not value.isprintable() and any(c < " " and c != "\t" or c == "\x7f" for c in value):
            raise _Reject(400, "invalid_header_value", f"{name} holds a control character", name)
    if (ctype and ctype != "application/json") or encoding:
        _check_content_headers(ctype, encoding)
    return _client_controls(cc, ttl, settings)


def _check_content_headers(ctype: str | None, encoding: str | None) -> None:
    if ctype and ctype != "application/json" and ctype.strip(_OWS):  # absent or empty: taken as JSON
        media, *params = ctype.split(";")
        media = media.strip(_OWS).lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise _Reject(415, "unsupported_media_type", f"Content-Type {media[:60]!r} is not application/json", "content-type")
        for p in params:
            name, _, value = p.partition("=")
            if name.strip(_OWS).lower() == "charset" and value.strip(_OWS).strip('"').lower() not in ("utf-8", "utf8"):
                raise _Reject(415, "unsupported_media_type", "JSON bodies must be UTF-8", "content-type")
    if encoding and encoding.strip(_OWS).lower() not in ("", "identity"):
        raise _Reject(
            415, "unsupported_media_type", f"Content-Encoding {encoding.strip(_OWS)[:40]!r} is not supported", "content-encoding"
        )


def _client_controls(cc: str | None, raw: str | None, settings: EdgeCacheSettings) -> tuple[bool, bool, int]:
    """(no_store, no_cache, ttl_seconds) from Cache-Control and x-inference-cache-ttl."""
    no_store = no_cache = False
    if cc:
        directives = {d.split("=", 1)[0].strip(_OWS).lower() for d in cc.split(",")}
        no_store, no_cache = "no-store" in directives, "no-cache" in directives
    max_ttl = settings.max_ttl_seconds
    if raw is None:
        return no_store, no_cache, min(settings.default_ttl_seconds, max_ttl)
    raw = raw.strip(_OWS)
    if not (raw.isascii() and raw.isdigit()):
        raise _Reject(400, "invalid_ttl", f"{TTL_HEADER} must be a whole number of seconds, got {raw[:40]!r}", TTL_HEADER)
    digits = raw.lstrip("0")
    # Any whole number is valid; a larger one than the stage allows is clamped (no int()
    # of thousands of digits: that is slow, and past 4300 digits a ValueError).
    return no_store, no_cache, max_ttl if len(digits) > 18 else min(int(digits or "0"), max_ttl)


# --------------------------------------------------------------------------- parsing


def _pairs(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _Reject(400, "duplicate_key", f"duplicate key {k[:80]!r} in a JSON object", k[:80])
            seen.add(k)
    return obj


def _constant(name: str):
    raise _Reject(400, "non_finite_number", f"{name} is not a JSON number")


class _Num:
    """A number as written, where the module keeps spelling: every JSON number with a
    fraction or an exponent, and the integer `-0` (serde_json reads it as -0.0). Other
    integers are plain ints: their spelling is their value. Known numeric sampling
    parameters fold it to its value (_number); anywhere else it is written as its text
    (_encode_kept)."""

    __slots__ = ("text", "value")

    def __init__(self, text: str, value) -> None:
        self.text, self.value = text, value

    def __repr__(self) -> str:
        return f"_Num({self.text})"


_SCALARS = frozenset((str, int, float, bool, type(None), _Num))


def _float(text: str) -> _Num:
    """parse_float: overflow (1e999) -> 400; else the number as written."""
    f = float(text)
    if f - f != 0:  # inf; nan cannot come out of float() on a JSON number
        raise _Reject(400, "number_out_of_range", f"number {text[:40]} is out of range")
    return _Num(text, f)


def _int_minus_zero(text: str):
    return _Num(text, 0) if text == "-0" else int(text)


# Built once: json.loads(text, **hooks) builds a decoder per call. The parse_int hook
# costs a Python call per integer: only small bodies and those that may contain "-0" pay it.
_JSON_SPACE = " \t\n\r"
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
_DECODER_MINUS_ZERO = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int_minus_zero
)


def _parse(body: bytes) -> dict:
    if not body:
        raise _Reject(400, "empty_body", "request body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject(400, "invalid_utf8", f"body is not UTF-8 (byte {e.start})") from None
    try:
        # The parse_int hook: a Python call per integer; a search for "-0": ~1.5 ns a byte.
        minus_zero = len(body) <= 4096 or _may_contain(body, b"-", b"0")
        # JSONDecoder.decode without its two regex calls: the C scanner, then whitespace.
        start = 0 if text[0] not in _JSON_SPACE else len(text) - len(text.lstrip(_JSON_SPACE))
        obj, end = (_DECODER_MINUS_ZERO if minus_zero else _DECODER).scan_once(text, start)
        if end != len(text) and text[end:].strip(_JSON_SPACE):
            raise _Reject(400, "invalid_json", f"body is not valid JSON: Extra data at position {end}")
    except _Reject:
        raise
    except StopIteration as e:  # no JSON value where one must start
        raise _Reject(400, "invalid_json", f"body is not valid JSON: Expecting value at position {e.value}") from None
    except RecursionError:  # far deeper than any limit; json's C scanner stops itself
        raise _Reject(400, "nesting_too_deep", "JSON nesting is too deep") from None
    except json.JSONDecodeError as e:
        raise _Reject(400, "invalid_json", f"body is not valid JSON: {e.msg} at position {e.pos}") from None
    except ValueError as e:  # an int with more digits than sys.get_int_max_str_digits()
        raise _Reject(400, "number_out_of_range", f"number out of range ({str(e)[:60]})") from None
    if type(obj) is not dict:
        raise _Reject(400, "not_an_object", "request body must be a JSON object")
    return obj


def _may_contain(body: bytes, first: bytes, rest: bytes) -> bool:
    """Whether first + rest may occur in body. A search for a 2+ byte needle scans about
    1.5 ns a byte (60 us at 40 KB); memchr for the first byte is ~50x faster. After 32
    candidates it answers True: the caller then takes its slower, always-correct path."""
    find, startswith = body.find, body.startswith
    i = find(first)
    for _ in range(32):
        if i < 0:
            return False
        if startswith(rest, i + 1):
            return True
        i = find(first, i + 1)
    return i >= 0


def _check_depth(obj: dict, limit: int) -> None:
    """Containers nested deeper than `limit` -> 400. Level by level, each level in a few
    C-level passes (map/chain/compress): no Python loop over nodes, no recursion. (_decide
    calls it only where a cheap bound on the body does not settle it.)"""
    level, depth = [obj], 1
    while True:
        kinds = set(map(type, level))
        if kinds == _DICT_ONLY:
            children = list(chain.from_iterable(map(dict.values, level)))
        elif kinds == _LIST_ONLY:
            children = list(chain.from_iterable(level))
        else:
            children = list(chain.from_iterable([n.values() if type(n) is dict else n for n in level]))
        kinds = set(map(type, children))
        if dict not in kinds and list not in kinds:
            return
        depth += 1
        if depth > limit:
            raise _Reject(400, "nesting_too_deep", f"JSON nesting deeper than {limit}")
        level = list(compress(children, map(_CONTAINERS.__contains__, map(type, children))))


# --------------------------------------------------------------------------- canonical form


def _number(v):
    """A numeric sampling parameter by value: int, or float when not integral (1.0 -> 1,
    -0.0 -> 0, 1e2 -> 100). Any other type comes back as it is (the caller rejects it)."""
    t = type(v)
    if t is int:
        return v
    if t is _Num:
        v = v.value
        return int(v) if type(v) is float and v.is_integer() else v
    if t is float:  # a declared server default
        return int(v) if v.is_integer() else v
    return v


def _fold(d: dict, fields: dict, declared: dict, odd: list) -> bool:
    """Canonicalize, in place, one object whose schema the module knows: listed fields by
    their kind; null-safe nulls, defaults and declared server defaults dropped; everything
    else kept as parsed. Names of sampling parameters of an unexpected type go to `odd`.
    Returns whether `d` is flat: no value holds an object, directly or in a list (the
    sort_keys encoder then writes exactly the canonical form, see _canonical)."""
    for name in d.keys() & fields.keys():
        v = d[name]
        kind, default, null_ok = fields[name]
        if v is None:
            if null_ok:
                del d[name]
            elif kind in _SAMPLING_KINDS:
                odd.append(name)
        elif kind is NUM or kind is COUNT or kind is SEED:
            t = type(v)
            if t is _Num:  # _number, inlined
                v = v.value
                if type(v) is float and v.is_integer():
                    v = int(v)
                d[name] = v
            elif t is not int and t is not float:
                odd.append(name)
                continue
            if v == default or (declared and name in declared and v == declared[name]):
                del d[name]
        elif kind is FLAG:
            if v is False and default is False:
                del d[name]
        elif kind is SAMPLE:
            if type(v) is not bool:
                odd.append(name)
        elif kind is STOP or kind is STOPS:
            if type(v) is str and kind is STOPS:
                v = d[name] = [v]
            if type(v) is list:
                if not v:
                    del d[name]
                elif len(v) > 1 and _STR_ONLY.issuperset(map(type, v)) and len(set(v)) < len(v):
                    d[name] = list(dict.fromkeys(v))  # repeats removed, first occurrence kept
    for v in d.values():
        t = type(v)
        if t is list:
            if len(v) > 8:
                if not _SCALARS.issuperset(map(type, v)):
                    return False
            else:  # a short list (stop strings): a plain loop is cheaper
                for x in v:
                    if type(x) not in _SCALARS:
                        return False
        elif t is dict:
            return False
    return True


def _require(obj: dict, field: str) -> object:
    value = obj.get(field)
    if value is None:
        raise _Reject(400, "missing_field", f"'{field}' is required", field)
    return value


def _text_token(s: str, texts: list) -> str:
    """Long prompt text leaves the JSON: it is hashed as raw bytes after it (a fraction of
    the cost of JSON-escaping it) and a placeholder stands in its place. The bytes are
    Latin-1 when every character fits (a copy of CPython's 1-byte storage, no
    transcoding), else UTF-8, each behind its kind and length (see _key_bytes).
    Injective: a placeholder is NUL + "l" or "u"; a literal string that starts with NUL
    gets one more NUL, so no literal string can pose as a placeholder."""
    if len(s) >= _LONG_TEXT_CHARS:
        try:
            data = s.encode("latin-1")
        except UnicodeEncodeError:
            data = s.encode("utf-8", "surrogatepass")
            texts += (b"u", len(data).to_bytes(8, "big"), data)
            return "\x00u"
        texts += (b"l", len(data).to_bytes(8, "big"), data)
        return "\x00l"
    if s[:1] == "\x00":
        return "\x00" + s
    return s


def _normalize_messages(obj: dict, texts: list) -> bool:
    """Validate messages; one plain text part -> its string; prompt text through
    _text_token. Returns whether every value of every message is a scalar (key order: the
    sort_keys encoder folds it then, else see _sorted_messages)."""
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        _require(obj, "messages")  # absent or null: missing_field
        raise _Reject(400, "invalid_type", "'messages' must be a non-empty list of objects", "messages")
    minimum = _LONG_TEXT_CHARS
    if len(messages) <= 8:  # a few messages: one pass over each is cheaper than several C-speed passes
        flat = True
        for m in messages:
            if type(m) is not dict:  # (a message before it may be normalized already: the request is refused)
                raise _Reject(400, "invalid_type", "'messages' must be a non-empty list of objects", "messages")
            content = m.get("content")
            if type(content) is str:
                if len(content) >= minimum or content[:1] == "\x00":
                    m["content"] = _text_token(content, texts)
            elif type(content) is list:
                content = _content_parts(m, content, texts)
                if type(content) is str and (len(content) >= minimum or content[:1] == "\x00"):
                    m["content"] = _text_token(content, texts)
            if flat:
                for v in m.values():
                    if type(v) not in _SCALARS:
                        flat = False
                        break
        return flat
    if not _DICT_ONLY.issuperset(map(type, messages)):
        raise _Reject(400, "invalid_type", "'messages' must be a non-empty list of objects", "messages")
    contents = list(map(dict.get, messages, repeat("content")))
    # Long conversations, all text: C-speed passes.
    if _STR_ONLY.issuperset(map(type, contents)) and not any(map(str.startswith, contents, repeat("\x00"))):
        for i in compress(count(), map(minimum.__le__, map(len, contents))):
            messages[i]["content"] = _text_token(contents[i], texts)
        return _SCALARS.issuperset(map(type, chain.from_iterable(map(dict.values, messages))))
    for m, content in zip(messages, contents, strict=True):
        if type(content) is list:
            content = _content_parts(m, content, texts)
        if type(content) is str and (len(content) >= minimum or content[:1] == "\x00"):
            m["content"] = _text_token(content, texts)
    return _SCALARS.issuperset(map(type, chain.from_iterable(map(dict.values, messages))))


def _content_parts(m: dict, content: list, texts: list):
    """A message's list content: one plain text part (exactly "type" and "text") becomes
    its string, returned for _text_token; else each text part's text goes through
    _text_token, and the list is returned."""
    if len(content) == 1:
        part = content[0]
        if type(part) is dict and len(part) == 2 and part.get("type") == "text" and type(part.get("text")) is str:
            text = m["content"] = part["text"]
            return text
    for part in content:
        if type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str:
            part["text"] = _text_token(part["text"], texts)
    return content


def _sorted_messages(messages: list) -> list:
    """Messages and their content parts with their keys sorted, their values kept as sent."""
    out = []
    for m in messages:
        m = dict(sorted(m.items()))
        content = m.get("content")
        if type(content) is list:
            m["content"] = [dict(sorted(p.items())) if type(p) is dict else p for p in content]
        out.append(m)
    return out


def _sampling_reason(p: dict, declared: dict, odd: list, tgi: bool) -> tuple[bool, str]:
    """Policy "deterministic" for a generation request, fail-closed; `p` holds its folded
    sampling parameters. The reason names the rule that decided."""
    if odd:
        return False, f"unexpected type for {min(odd)}"
    if declared:
        p = {**declared, **p}
    get = p.get
    temperature, top_k = get("temperature"), get("top_k")
    if (type(temperature) in _NUMBERS and temperature == 0) or (type(top_k) in _NUMBERS and top_k == 1):
        return True, "greedy decoding"
    if tgi and get("do_sample") is False:
        top_p, typical_p = get("top_p"), get("typical_p")
        # TGI samples anyway when a logits warper is set, whatever do_sample says.
        if not (
            (type(temperature) in _NUMBERS and temperature != 1)
            or (type(top_p) in _NUMBERS and top_p < 1)
            or (type(typical_p) in _NUMBERS and typical_p < 1)
            or (type(top_k) in _NUMBERS and top_k > 1)
        ):
            return True, "greedy decoding"
    for name in ("n", "best_of", "top_n_tokens") if tgi else ("n", "best_of"):
        v = get(name)
        if v is not None and not (type(v) is int and v == 1):
            return False, "n > 1 with sampling" if type(v) in _NUMBERS and v > 1 else f"{name} not 1 with sampling"
    seed = get("seed")
    if seed is None:
        return False, "sampling without seed"
    if type(seed) is int and 0 <= seed <= _SEED_MAX:
        return True, "seeded sampling"
    return False, "seed not in 0..2^63-1"


def _schema(route: str, obj: dict) -> str | None:
    """Which body schema the server reads: the route's; on /invocations the first of
    prompt, inputs, messages that is present (LMI's order), None when the body has none or
    mixes them (it passes through uncached: the container answers it)."""
    if route != INVOCATIONS_ROUTE:
        return _ROUTE_SCHEMA[route]
    present = [schema for name, schema in _INVOCATION_KEYS if name in obj]
    return present[0] if len(present) == 1 else None


def _mixed(obj: dict) -> str:
    keys = [name for name, _ in _INVOCATION_KEYS if name in obj]
    return f"invocations body mixes {' and '.join(keys)}" if keys else "invocations body has no prompt, inputs or messages"


# The /v1 generation routes whose bodies the origin adapter sends to the same LMI
# /invocations, and the key LMI serves each by.
_DISPATCHED_ROUTES = {CHAT_ROUTE: "messages", COMPLETIONS_ROUTE: "prompt"}


def _served_otherwise(route: str, obj: dict) -> str | None:
    """Why a /v1 chat or completions body would be served under another schema than its
    route's: LMI picks the schema by the keys it finds (prompt, then inputs, then
    messages), whatever the route. None when the route's key is the only one present (or
    none is: the route's own 400)."""
    keys = [name for name, _ in _INVOCATION_KEYS if name in obj]
    if not keys or keys == [_DISPATCHED_ROUTES[route]]:
        return None
    if keys[0] == _DISPATCHED_ROUTES[route]:  # served as the route says, but mixed: as on /invocations
        return f"{route} body mixes {' and '.join(keys)}"
    served = next(schema for name, schema in _INVOCATION_KEYS if name == keys[0])
    return f"{keys[0]} in a {route} body: the container serves it as {served} (LMI reads prompt, then inputs, then messages)"


def _canonical(route: str, obj: dict, settings: EdgeCacheSettings, texts: list) -> tuple:
    """Validate and canonicalize `obj`, long prompt texts moved to `texts`; returns
    (canonical body, the encoder that writes it, stream, cacheable, reason)."""
    schema = _ROUTE_SCHEMA.get(route) or _schema(route, obj)
    if schema is None:
        return obj, _encode, False, False, _mixed(obj)
    if route in _DISPATCHED_ROUTES and (otherwise := _served_otherwise(route, obj)):
        return obj, _encode, False, False, otherwise
    declared = settings.declared_server_defaults
    declared = {k: _number(v) for k, v in declared.items()} if declared else {}
    for name in settings.excluded_fields:
        obj.pop(name, None)
    if route != INVOCATIONS_ROUTE:
        get = obj.get
        model = get("model")
        if type(model) is not str or not model:
            _require(obj, "model")  # absent or null: missing_field
            raise _Reject(400, "invalid_type", "'model' must be a non-empty string", "model")
        if get("n") is not None or get("best_of") is not None:
            for name in ("n", "best_of"):  # the servers refuse these with a 400 (vLLM: "n must be at least 1")
                count = _number(get(name))
                if (type(count) is int or type(count) is float) and count < 1:
                    raise _Reject(400, "invalid_value", f"'{name}' must be at least 1", name)
    field, fields = _SCHEMAS[schema]
    odd: list = []
    params = {} if schema == "tgi" else None
    flat_messages = True
    if schema == "chat":
        flat_messages = _normalize_messages(obj, texts)
    elif schema == "tgi":
        obj["inputs"] = _text_tokens(_require(obj, "inputs"), texts)
        p = obj.get("parameters")
        if "parameters" in obj and type(p) is not dict:
            odd.append("parameters")
        elif type(p) is dict:
            _fold(p, TGI_PARAMETERS, declared, odd)
            if p:
                params = obj["parameters"] = dict(sorted(p.items()))
            else:
                del obj["parameters"]
    else:
        value = _require(obj, field)
        if type(value) is not str and type(value) is not list:
            raise _Reject(400, "invalid_type", f"'{field}' must be a string or a list", field)
        if schema == "embeddings" and (not value or (type(value) is list and "" in value)):
            raise _Reject(400, "invalid_value", "'input' must not be empty", "input")
        # More inputs than OpenAI accepts (a list of token ids is one input, of any length).
        if schema == "embeddings" and type(value) is list and len(value) > EMBEDDINGS_MAX_INPUTS and type(value[0]) is not int:
            raise _Reject(
                400, "invalid_value", f"'input' holds {len(value)} inputs; at most {EMBEDDINGS_MAX_INPUTS} are accepted", "input"
            )
        obj[field] = _text_tokens(value, texts)
    stream = obj.pop("stream", False)
    if type(stream) is not bool:  # an odd value stays in the body, where it keys apart
        obj["stream"] = stream
        stream = False
    if schema == "chat":  # not a field of the table: kept out of _fold's flatness check
        messages = obj.pop("messages")
        flat = _fold(obj, fields, declared, odd) and flat_messages
        obj["messages"] = messages
    else:
        flat = _fold(obj, fields, declared, odd)
    # Flat bodies (the common case): the sort_keys encoder writes exactly the canonical
    # form, without a sorted copy of every message (~10% of a decision at 40 KB). Else
    # the objects of known schema are sorted here and the encoder keeps every key order.
    body, encoder = obj, _encode_sorted
    if not flat:
        body, encoder = dict(sorted(obj.items())), _encode
        if schema == "chat":
            body["messages"] = _sorted_messages(body["messages"])
    policy = settings.policy
    if policy == "all":
        return body, encoder, stream, True, "policy all"
    if schema == "embeddings":
        return body, encoder, stream, True, "embeddings"
    sampling = _sampling_reason(body if params is None else params, declared, odd, schema == "tgi")
    return (body, encoder, stream, *sampling)


def _text_tokens(value, texts: list):
    if type(value) is str:
        return _text_token(value, texts)
    if type(value) is list and value and type(value[0]) is str and all(type(v) is str for v in value):
        return [_text_token(v, texts) for v in value]
    return value


_NAN = float("nan")


def _encode_kept(o):
    """The C encoder's `default`: a kept number as written, as [NaN, "its text"]. No body
    can pose as one: NaN is not JSON, the parser rejects it (400), so a NaN in the
    canonical form can only come from here."""
    if type(o) is _Num:
        return [_NAN, o.text]
    raise TypeError(f"{type(o).__name__} is not JSON")


def _make_encoder(sort_keys: bool):
    """Canonical JSON: keys in the order the canonical form built them (sorted where the
    schema is known, as sent elsewhere; or all sorted, for flat bodies: _fold), no
    whitespace, ASCII (non-ASCII and lone surrogates as \\u escapes), kept numbers as
    written. json's C encoder built once; json.dumps would build it per call."""
    public = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), allow_nan=True, default=_encode_kept).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        c_encode = make(None, _encode_kept, json.encoder.encode_basestring_ascii, None, ":", ",", sort_keys, False, True)
        sample = {"b": [1.5, "\u00e9", -3, _Num("1e0", 1.0)], "a": None}
        if "".join(c_encode(sample, 0)) == public(sample):
            return lambda o: "".join(c_encode(o, 0))
    except Exception:  # noqa: BLE001 - no C encoder (or another signature): the public API
        return public
    return public


_encode = _make_encoder(False)
_encode_sorted = _make_encoder(True)


# --------------------------------------------------------------------------- decision


_new_decision = tuple.__new__  # Decision(...) without the named tuple's Python-level __new__


def _not_cacheable(reason: str, error: ApiError | None = None) -> Decision:
    return _new_decision(Decision, (False, None, reason, error, False, False, 0))


def mac_key(stage_secret: str) -> bytes:
    """The key deployed cache keys are MACs under, derived from the stage secret (the
    secret itself is also the root of the /_cache/ read credential: one use, one key)."""
    return hmac.digest(stage_secret.encode(), CACHE_KEY_CONTEXT.encode(), "sha256")


def _decide(path, headers, body, settings, truncated, tenant, mac) -> tuple[Decision, bytes | None]:
    if path not in settings.routes or (path not in _ROUTE_SCHEMA and path != INVOCATIONS_ROUTE):
        return _not_cacheable("route not cached"), None
    if type(body) is not bytes:
        body = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        if path == EMBEDDINGS_ROUTE and settings.embeddings_model_id is None:
            # The stage serves no embeddings model: no model call, nothing to store.
            raise _Reject(404, "model_not_found", "This stage serves no embeddings model.", "model")
        max_bytes = settings.max_body_bytes
        if truncated or len(body) > max_bytes:
            raise _Reject(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
        no_store, no_cache, ttl = _client_headers(headers, settings)
        obj = _parse(body)
        limit = settings.max_nesting_depth
        # Nesting: at most as deep as the body has { and [ (a cheap bound for small bodies).
        if len(body) > 8192 or len(body.translate(None, _NOT_BRACKETS)) > limit:
            _check_depth(obj, limit)
        texts: list[bytes] = []
        obj, encoder, stream, ok, reason = _canonical(path, obj, settings, texts)
    except _Reject as r:
        return _not_cacheable(f"invalid request: {r.error.code}", r.error), None
    if not ok:
        return _not_cacheable(reason), None
    scope = None
    if settings.tenant_scoped:
        scope = str(tenant) if tenant else None
        if not scope:
            return _not_cacheable("tenant-scoped stage, no verified tenant"), None
    if no_store:
        return _not_cacheable("client no-store"), None
    payload = b"".join([_key_head(path, settings, scope, stream, encoder), encoder(obj).encode(), b"]\x00", *texts])
    if no_cache:
        reason += ", client no-cache"
    if ttl <= 0:
        reason += ", ttl 0"
    # Deployed: HMAC-SHA256 under the stage's MAC key, so nobody without the secret can name
    # a request's answer. Without one (bin/cache-key's estimates): plain SHA-256.
    key = hmac.digest(mac, payload, "sha256").hex() if mac else hashlib.sha256(payload).hexdigest()
    return _new_decision(Decision, (True, key, reason, None, not no_cache, ttl > 0, ttl)), payload


# What the key hashes: the canonical JSON of [KEY_FORMAT, route, model_id, model_version,
# tenant|null, stream, body] (on /v1/embeddings the embeddings model's id and version) (ASCII,
# so it holds no NUL byte), a NUL, then the long texts in document order, each as kind (b"l"/b"u"), 8-byte length and bytes. Unambiguous: the
# first NUL ends the JSON; lengths delimit the texts. The JSON is written as its head (the
# list up to the body, the same for every request of a route and stream, so it is written
# once: _key_head), the body's JSON, and "]": the bytes the encoder writes for the whole list.
_KEY_HEADS: dict = {}


def _key_head(path, settings: EdgeCacheSettings, scope, stream: bool, encoder) -> bytes:
    # /v1/embeddings is answered by the embeddings model: its id and version key it.
    if path == EMBEDDINGS_ROUTE:
        model_id, model_version = settings.embeddings_model_id, settings.embeddings_model_version
    else:
        model_id, model_version = settings.model_id, settings.model_version
    if type(path) is not str or type(model_id) is not str or type(model_version) is not str or (
        scope is not None and type(scope) is not str
    ):  # only plain strings share a head (1 == 1.0 == True would share one, and are written apart)
        return encoder([KEY_FORMAT, path, model_id, model_version, scope, stream]).encode()[:-1] + b","
    key = (path, model_id, model_version, scope, stream)
    head = _KEY_HEADS.get(key)
    if head is None:
        if len(_KEY_HEADS) >= 256:  # tenants, models: bounded
            _KEY_HEADS.clear()
        head = _KEY_HEADS[key] = _encode_sorted([KEY_FORMAT, *key]).encode()[:-1] + b","
    return head


def decide(
    path: str,
    headers,
    body: bytes,
    settings: EdgeCacheSettings,
    *,
    truncated: bool = False,
    tenant: str | None = None,
    mac: bytes | None = None,
) -> Decision:
    """The cache decision for one request; its key a MAC under `mac` (mac_key() of the stage
    secret), or without one a plain SHA-256 that no deployed stage uses (an estimate).
    Never raises: an unexpected failure is 'not cacheable' (the request passes through
    uncached), never an error response."""
    try:
        return _decide(path, headers, body, settings, truncated, tenant, mac)[0]
    except Exception as e:  # noqa: BLE001 - the edge must never fail a request on a bug here
        return _not_cacheable(f"internal error: {type(e).__name__}")


def canonical_payload(
    path: str, headers, body: bytes, settings: EdgeCacheSettings, *, tenant: str | None = None
) -> bytes | None:
    """The exact bytes the key hashes or MACs (to debug a miss), or None when there is no key."""
    try:
        return _decide(path, headers, body, settings, False, tenant, None)[1]
    except Exception:  # noqa: BLE001
        return None
