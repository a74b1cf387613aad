"""Cache decision for inference requests: cacheable or not, the cache key, and the
error the edge returns for invalid input.

Shared by the Lambda@Edge origin-request function, the origin adapter and
`bin/cache-key`. Stdlib only, pure (no I/O), and `decide` never raises.
Rules and the choices behind them: docs/cache-key.md.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
from collections import namedtuple
from itertools import chain, compress, count, repeat

from inference_cache.cache_settings import EdgeCacheSettings
from inference_cache.contract import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    EMBEDDINGS_ROUTE,
    INVOCATIONS_ROUTE,
    TTL_HEADER,
)
from inference_cache.errors import ApiError

# Bump when the canonical form changes: every key changes with it (a fresh cache).
KEY_FORMAT = "inference-cache-key/1"
_READ_HEADERS = ("content-type", "content-encoding", "cache-control", TTL_HEADER, "authorization", "x-api-key")

# Values every server uses when the parameter is absent: name -> (exact type, value).
# Compared after number canonicalization, so 0.0, -0 and 0e0 are the int 0 here.
_UNIVERSAL_DEFAULTS = {
    "n": (int, 1),
    "presence_penalty": (int, 0),
    "frequency_penalty": (int, 0),
    "logprobs": (bool, False),
    "echo": (bool, False),
}
_STOP_FIELDS = ("stop", "stop_sequences")
# Prompt text at least this long is hashed as raw bytes, outside the JSON (see _text_token).
_LONG_TEXT_CHARS = 256
_DICT_ONLY = {dict}
_LIST_ONLY = {list}
_CONTAINERS = frozenset((dict, list))
_STR_ONLY = {str}
_TENANT_SALT = b"inference-cache-tenant/1\x00"


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


def _lower_headers(headers) -> dict:
    """{lowercase name: str} for the few headers decide reads, from a plain mapping (any
    case), list values, or CloudFront's {name: [{"key", "value"}]}; repeats joined by ", "."""
    out: dict = {}
    if not headers:
        return out
    try:  # CloudFront hands over lowercase names: look the few up, leave the rest alone
        direct = all(map(str.islower, headers.keys()))
    except TypeError:
        direct = False
    if direct:
        for name in _READ_HEADERS:
            value = headers.get(name)
            if value is not None:
                out[name] = _header_value(value)
        return out
    for name, value in headers.items():
        name = str(name).lower()
        if name in _READ_HEADERS:
            value = _header_value(value)
            out[name] = out[name] + ", " + value if name in out else value
    return out


def tenant_scope(headers) -> str | None:
    """Short id (32 hex, SHA-256) of the viewer's API key (`Authorization: Bearer X` or
    `x-api-key: X`), or None without one. Never raises."""
    try:
        h = _lower_headers(headers)
        credential = ""
        auth = h.get("authorization", "").strip()
        if auth[:7].lower() == "bearer ":
            credential = auth[7:].strip()
        if not credential:
            credential = h.get("x-api-key", "").strip()
        if not credential:
            return None
        return hashlib.sha256(_TENANT_SALT + credential.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    except Exception:  # noqa: BLE001 - never fail a request on a header oddity
        return None


def _check_content_headers(h: dict) -> None:
    ctype = h.get("content-type")
    if ctype and ctype != "application/json" and ctype.strip():  # absent or empty: taken as JSON
        media, *params = ctype.split(";")
        media = media.strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise _Reject(415, "unsupported_media_type", f"Content-Type {media[:60]!r} is not application/json", "content-type")
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                raise _Reject(415, "unsupported_media_type", "JSON bodies must be UTF-8", "content-type")
    encoding = h.get("content-encoding")
    if encoding and encoding.strip().lower() not in ("", "identity"):
        raise _Reject(
            415, "unsupported_media_type", f"Content-Encoding {encoding.strip()[:40]!r} is not supported", "content-encoding"
        )


def _client_controls(h: dict, settings: EdgeCacheSettings) -> tuple[bool, bool, int]:
    """(no_store, no_cache, ttl_seconds) from Cache-Control and x-inference-cache-ttl."""
    no_store = no_cache = False
    cc = h.get("cache-control")
    if cc:
        directives = {d.split("=", 1)[0].strip().lower() for d in cc.split(",")}
        no_store, no_cache = "no-store" in directives, "no-cache" in directives
    max_ttl = settings.max_ttl_seconds
    raw = h.get(TTL_HEADER)
    if raw is None:
        return no_store, no_cache, min(settings.default_ttl_seconds, max_ttl)
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise _Reject(400, "invalid_ttl", f"{TTL_HEADER} must be a whole number of seconds, got {raw[:40]!r}", TTL_HEADER)
    return no_store, no_cache, min(int(raw), max_ttl)


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


def _float(text: str):
    """Numbers by value, as the server's JSON parser sees them: an integral float becomes
    the int of the same value (1.0 == 1, -0.0 == 0e0 == 0); overflow (1e999) -> 400."""
    f = float(text)
    if f.is_integer():
        return int(f)
    if f - f != 0:  # inf; nan cannot come out of float() on a JSON number
        raise _Reject(400, "number_out_of_range", f"number {text[:40]} is out of range")
    return f


# Built once: json.loads(text, **hooks) builds a decoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def _parse(body: bytes) -> dict:
    if not body:
        raise _Reject(400, "empty_body", "request body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject(400, "invalid_utf8", f"body is not UTF-8 (byte {e.start})") from None
    try:
        obj = _DECODER.decode(text)
    except _Reject:
        raise
    except RecursionError:  # far deeper than any limit; json's C scanner stops itself
        raise _Reject(400, "nesting_too_deep", "JSON nesting is too deep") from None
    except json.JSONDecodeError as e:
        raise _Reject(400, "invalid_json", f"body is not valid JSON: {e.msg} at position {e.pos}") from None
    except ValueError as e:  # an int with more digits than sys.get_int_max_str_digits()
        raise _Reject(400, "number_out_of_range", f"number out of range ({str(e)[:60]})") from None
    if type(obj) is not dict:
        raise _Reject(400, "not_an_object", "request body must be a JSON object")
    return obj


def _check_depth(obj: dict, body: bytes, limit: int) -> None:
    """Containers nested deeper than `limit` -> 400. Level by level, each level in a few
    C-level passes (map/chain/compress): no Python loop over nodes, no recursion."""
    if len(body) <= 8192 and body.count(b"{") + body.count(b"[") <= limit:  # cheap bound for small bodies
        return
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


def _canon_setting(v):
    return int(v) if type(v) is float and v.is_integer() else v


def _normalize_params(d: dict, declared: dict) -> None:
    """In place: drop nulls, universal defaults and declared server defaults; stop as a set."""
    if None in d.values():
        for k in [k for k, v in d.items() if v is None]:
            del d[k]
    for name in _UNIVERSAL_DEFAULTS.keys() & d.keys():
        t, value = _UNIVERSAL_DEFAULTS[name]
        v = d[name]
        if type(v) is t and v == value:
            del d[name]
    if declared:
        for name in declared.keys() & d.keys():
            v, value = d[name], declared[name]
            if type(v) is type(value) and v == value:
                del d[name]
    if "stop" in d or "stop_sequences" in d:
        for name in _STOP_FIELDS:
            stop = d.get(name)
            if type(stop) is str:
                d[name] = [stop]
            elif type(stop) is list and set(map(type, stop)) <= _STR_ONLY:
                if stop:
                    d[name] = sorted(set(stop))
                else:
                    del d[name]


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
            data, token = s.encode("latin-1"), "\x00l"
        except UnicodeEncodeError:
            data, token = s.encode("utf-8", "surrogatepass"), "\x00u"
        texts.append(b"l" if token == "\x00l" else b"u")
        texts.append(len(data).to_bytes(8, "big"))
        texts.append(data)
        return token
    if s[:1] == "\x00":
        return "\x00" + s
    return s


def _normalize_messages(obj: dict, texts: list) -> None:
    """Validate messages; one text part -> its string; prompt text through _text_token."""
    messages = _require(obj, "messages")
    if type(messages) is not list or not messages or set(map(type, messages)) != _DICT_ONLY:
        raise _Reject(400, "invalid_type", "'messages' must be a non-empty list of objects", "messages")
    minimum = _LONG_TEXT_CHARS
    contents = [m.get("content") for m in messages]
    if set(map(type, contents)) == _STR_ONLY:  # the common case: all text
        if len(contents) <= 8:
            for m, content in zip(messages, contents, strict=True):
                if len(content) >= minimum or content[:1] == "\x00":
                    m["content"] = _text_token(content, texts)
            return
        if not any(map(str.startswith, contents, repeat("\x00"))):  # long conversations: C-speed passes
            for i in compress(count(), map(minimum.__le__, map(len, contents))):
                messages[i]["content"] = _text_token(contents[i], texts)
            return
    for m, content in zip(messages, contents, strict=True):
        if type(content) is list:
            if len(content) == 1:
                part = content[0]
                if type(part) is dict and len(part) == 2 and part.get("type") == "text" and type(part.get("text")) is str:
                    content = m["content"] = part["text"]
            if type(content) is list:
                for part in content:
                    if type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str:
                        part["text"] = _text_token(part["text"], texts)
                continue
        if type(content) is str and (len(content) >= minimum or content[:1] == "\x00"):
            m["content"] = _text_token(content, texts)


def _num(v) -> bool:
    return type(v) is int or type(v) is float


def _sampling_reason(p: dict, declared: dict) -> tuple[bool, str]:
    """Policy "deterministic" for a generation request; `p` holds its sampling parameters."""
    if declared:
        p = {**declared, **p}
    get = p.get
    temperature, top_k = get("temperature"), get("top_k")
    if (_num(temperature) and temperature == 0) or (_num(top_k) and top_k == 1):
        return True, "greedy decoding"
    if get("do_sample") is False:
        top_p, typical_p = get("top_p"), get("typical_p")
        # TGI samples anyway when a logits warper is set, whatever do_sample says.
        if not (
            (_num(temperature) and temperature != 1)
            or (_num(top_p) and top_p < 1)
            or (_num(typical_p) and typical_p < 1)
            or (_num(top_k) and top_k > 1)
        ):
            return True, "greedy decoding"
    n, best_of = get("n"), get("best_of")
    if (_num(n) and n > 1) or (_num(best_of) and best_of > 1):
        return False, "n > 1 with sampling"
    if type(get("seed")) is int:
        return True, "seeded sampling"
    return False, "sampling without seed"


def _canonical(route: str, obj: dict, settings: EdgeCacheSettings, texts: list) -> tuple[bool, bool, str]:
    """Validate and normalize `obj` in place, long prompt texts moved to `texts`;
    returns (stream, cacheable, reason)."""
    declared = settings.declared_server_defaults
    declared = {k: _canon_setting(v) for k, v in declared.items()} if declared else {}
    for name in settings.excluded_fields:
        obj.pop(name, None)
    if route != INVOCATIONS_ROUTE:
        model = _require(obj, "model")
        if type(model) is not str or not model:
            raise _Reject(400, "invalid_type", "'model' must be a non-empty string", "model")
    params = obj
    if route == CHAT_ROUTE or (route == INVOCATIONS_ROUTE and "messages" in obj):
        _normalize_messages(obj, texts)
    elif route == COMPLETIONS_ROUTE or route == EMBEDDINGS_ROUTE:
        field = "prompt" if route == COMPLETIONS_ROUTE else "input"
        value = _require(obj, field)
        if type(value) is not str and type(value) is not list:
            raise _Reject(400, "invalid_type", f"'{field}' must be a string or a list", field)
        obj[field] = _text_tokens(value, texts)
    else:  # /invocations, TGI / LMI schema
        if obj.get("inputs") is None:
            raise _Reject(400, "missing_field", "'inputs' or 'messages' is required", "inputs")
        obj["inputs"] = _text_tokens(obj["inputs"], texts)
        p = obj.get("parameters")
        params = {}
        if type(p) is dict:
            _normalize_params(p, declared)
            if p:
                params = p
            else:
                del obj["parameters"]
    _normalize_params(obj, declared)
    stream = obj.pop("stream", False)
    if type(stream) is not bool:  # an odd value stays in the body, where it keys apart
        obj["stream"] = stream
        stream = False
    policy = settings.policy
    if policy == "all":
        return stream, True, "policy all"
    if route == EMBEDDINGS_ROUTE:
        return stream, True, "embeddings"
    return (stream, *_sampling_reason(params, declared))


def _text_tokens(value, texts: list):
    if type(value) is str:
        return _text_token(value, texts)
    if type(value) is list and value and type(value[0]) is str and all(type(v) is str for v in value):
        return [_text_token(v, texts) for v in value]
    return value


def _no_default(o):
    raise TypeError(f"{type(o).__name__} is not JSON")


def _make_encoder():
    """Canonical JSON: sorted keys, no whitespace, ASCII (non-ASCII and lone surrogates as
    \\u escapes). json's C encoder built once; json.dumps would build it per call."""
    public = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        c_encode = make(None, _no_default, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, False)
        sample = {"b": [1.5, "\u00e9", -3], "a": None}
        if "".join(c_encode(sample, 0)) == public(sample):
            return lambda o: "".join(c_encode(o, 0))
    except Exception:  # noqa: BLE001 - no C encoder (or another signature): the public API
        return public
    return public


_encode = _make_encoder()


# --------------------------------------------------------------------------- decision


def _not_cacheable(reason: str, error: ApiError | None = None) -> Decision:
    return Decision(False, None, reason, error, False, False, 0)


def _decide(path, headers, body, settings, truncated, tenant) -> tuple[Decision, bytes | None]:
    if path not in settings.routes:
        return _not_cacheable("route not cached"), None
    if type(body) is not bytes:
        body = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        max_bytes = settings.max_body_bytes
        if truncated or len(body) > max_bytes:
            raise _Reject(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
        h = _lower_headers(headers)
        _check_content_headers(h)
        no_store, no_cache, ttl = _client_controls(h, settings)
        obj = _parse(body)
        _check_depth(obj, body, settings.max_nesting_depth)
        texts: list[bytes] = []
        stream, ok, reason = _canonical(path, obj, settings, texts)
    except _Reject as r:
        return _not_cacheable(f"invalid request: {r.error.code}", r.error), None
    if not ok:
        return _not_cacheable(reason), None
    scope = None
    if settings.tenant_scoped:
        scope = str(tenant) if tenant else tenant_scope(h)
        if not scope:
            return _not_cacheable("tenant-scoped stage, no API key"), None
    if no_store:
        return _not_cacheable("client no-store"), None
    payload = _key_bytes(
        [KEY_FORMAT, path, settings.model_id, settings.model_version, scope, stream, obj], texts
    )
    if no_cache:
        reason += ", client no-cache"
    if ttl <= 0:
        reason += ", ttl 0"
    return Decision(True, hashlib.sha256(payload).hexdigest(), reason, None, not no_cache, ttl > 0, ttl), payload


def _key_bytes(head: list, texts: list) -> bytes:
    """What the key hashes: the canonical JSON of `head` (ASCII, so it holds no NUL byte),
    a NUL, then the long texts in document order, each as kind (b"l"/b"u"), 8-byte length
    and bytes. Unambiguous: the first NUL ends the JSON; lengths delimit the texts."""
    return b"".join([_encode(head).encode(), b"\x00", *texts])


def decide(
    path: str, headers, body: bytes, settings: EdgeCacheSettings, *, truncated: bool = False, tenant: str | None = None
) -> Decision:
    """The cache decision for one request. Never raises: an unexpected failure is
    'not cacheable' (the request passes through uncached), never an error response."""
    try:
        return _decide(path, headers, body, settings, truncated, tenant)[0]
    except Exception as e:  # noqa: BLE001 - the edge must never fail a request on a bug here
        return _not_cacheable(f"internal error: {type(e).__name__}")


def canonical_payload(
    path: str, headers, body: bytes, settings: EdgeCacheSettings, *, tenant: str | None = None
) -> bytes | None:
    """The exact bytes the key hashes (to debug a miss), or None when there is no key."""
    try:
        return _decide(path, headers, body, settings, False, tenant)[1]
    except Exception:  # noqa: BLE001
        return None
