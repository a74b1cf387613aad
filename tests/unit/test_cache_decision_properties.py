"""Property tests: the same request in other clothes keeps its key; any change the model
could see changes it; no input makes decide() raise."""

from __future__ import annotations

import json
import math
import random
import re

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from config.stages import STAGES
from lambdas import cache_decision as cd
from lambdas.contract import CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE, INVOCATIONS_ROUTE

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEV = STAGES["dev"].edge_cache_settings()
SCOPED = STAGES["staging"].edge_cache_settings()
JSON = {"content-type": "application/json"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")

# --------------------------------------------------------------------------- requests

# No lone surrogates: raw UTF-8 cannot carry them (the never-raises tests cover them).
chars = st.characters(blacklist_categories=("Cs",))
short_text = st.text(chars, min_size=1, max_size=24)
long_text = st.tuples(st.text(chars, min_size=1, max_size=8), st.integers(250, 700)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
)
text = st.one_of(short_text, short_text, long_text)
model = st.sampled_from(["m", "llama", "meta-llama/Llama-3.1-8B-Instruct"])
finite = st.floats(min_value=-4, max_value=4, allow_nan=False).map(lambda f: round(f, 3))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), finite, short_text)
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(short_text, inner, max_size=3)),
    max_leaves=8,
)
tool = st.builds(
    lambda name, props: {"type": "function", "function": {"name": name, "parameters": {"type": "object",
                                                                                       "properties": props}}},
    st.text("abcdefgh", min_size=1, max_size=6), st.dictionaries(short_text, json_value, max_size=3),
)


@st.composite
def sampling(draw, tgi: bool = False) -> dict:
    """Parameters that make the request cacheable under the deterministic policy."""
    p = dict(draw(st.sampled_from([{"temperature": 0}, {"seed": 1234}, {"top_k": 1}] if not tgi else
                                  [{"do_sample": False}, {"seed": 77}, {"top_k": 1}])))
    if "seed" in p:
        p["temperature"] = draw(st.sampled_from([0.2, 0.7, 1.3]))
    optional = {("max_new_tokens" if tgi else "max_tokens"): st.integers(1, 4096)}
    if "do_sample" not in p:  # TGI samples with do_sample false when a warper such as top_p is set
        optional["top_p"] = st.sampled_from([0.5, 0.9, 0.95])
    p.update(draw(st.fixed_dictionaries({}, optional=optional)))
    if draw(st.booleans()):
        p["stop"] = draw(st.lists(short_text, min_size=1, max_size=3, unique=True))
    return p


@st.composite
def requests(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(["chat", "completions", "embeddings", "tgi", "invocations-chat"]))
    if kind in ("chat", "invocations-chat"):
        messages = [{"role": draw(st.sampled_from(["system", "user", "assistant"])), "content": draw(text)}
                    for _ in range(draw(st.integers(1, 4)))]
        body = {"messages": messages, **draw(sampling())}
        if draw(st.booleans()):
            body["tools"] = draw(st.lists(tool, min_size=1, max_size=3))
        if draw(st.booleans()):
            body["response_format"] = {"type": "json_schema", "json_schema": draw(json_value)}
        if kind == "chat":
            return CHAT_ROUTE, {"model": draw(model), **body}
        return INVOCATIONS_ROUTE, body
    if kind == "completions":
        prompt = draw(st.one_of(text, st.lists(text, min_size=1, max_size=3)))
        return COMPLETIONS_ROUTE, {"model": draw(model), "prompt": prompt, **draw(sampling())}
    if kind == "embeddings":
        body = {"model": draw(model), "input": draw(st.one_of(text, st.lists(text, min_size=1, max_size=4),
                                                              st.lists(st.integers(0, 50000), min_size=1)))}
        if draw(st.booleans()):
            body["encoding_format"] = "float"
        return EMBEDDINGS_ROUTE, body
    return INVOCATIONS_ROUTE, {"inputs": draw(text), "parameters": draw(sampling(tgi=True))}


# --------------------------------------------------------------------------- a JSON writer with random clothes

# The test's own reading of the spec: the numeric sampling parameters, where numbers of
# equal value are the same request. Numbers anywhere else keep their spelling.
NUMERIC = {"temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "presence_penalty",
           "frequency_penalty", "repetition_penalty", "seed", "n", "best_of", "max_new_tokens", "typical_p"}


class Raw:
    """A JSON value written exactly as this text (a number's spelling, say)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other) -> bool:
        return isinstance(other, Raw) and other.text == self.text

    def __repr__(self) -> str:
        return f"Raw({self.text})"


def _number(value, rng: random.Random) -> str:
    if isinstance(value, int):
        if abs(value) >= 2**53:  # a float spelling would be another value: the server sees a float
            return str(value)
        spellings = [str(value), f"{value}.0", f"{value}e0", f"{value}.000", f"{value * 10}e-1"]
        if value == 0:
            spellings += ["-0", "-0.0", "0E+5"]
        return rng.choice(spellings)
    assert math.isfinite(value)
    return rng.choice([repr(value), f"{value:.17e}", f"{value:.17E}"])


def _string(s: str, rng: random.Random) -> str:
    if len(s) > 48 or rng.random() < 0.5:
        return json.dumps(s, ensure_ascii=rng.random() < 0.5)
    out = []
    for ch in s:  # escape characters one by one, at random
        if ch in '"\\' or ord(ch) < 0x20 or rng.random() < 0.3:
            if ch == "/" and rng.random() < 0.5:
                out.append("\\/")
            else:
                out.append(json.dumps(ch, ensure_ascii=True)[1:-1] if ch in '"\\\b\f\n\r\t' and rng.random() < 0.5
                           else "".join(f"\\u{unit:04x}" for unit in _utf16(ch)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _utf16(ch: str) -> list[int]:
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def _ws(rng: random.Random) -> str:
    return rng.choice(["", "", " ", "\n  ", "\t"])


def _object(items: list, rng: random.Random, shuffle: bool, child) -> str:
    if shuffle:
        items = list(items)
        rng.shuffle(items)
    return "{" + _ws(rng) + ",".join(
        f"{_ws(rng)}{_string(k, rng)}{_ws(rng)}:{_ws(rng)}{child(k, v)}{_ws(rng)}" for k, v in items) + "}"


def write_kept(value, rng: random.Random) -> str:
    """A value kept as sent: random whitespace and string escapes only (key order and
    number spelling as json.dumps writes them)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return _object(value.items(), rng, False, lambda k, v: write_kept(v, rng))
    if isinstance(value, list):
        return "[" + _ws(rng) + ",".join(_ws(rng) + write_kept(v, rng) + _ws(rng) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, rng)
    return json.dumps(value)


def write(body: dict, rng: random.Random) -> str:
    """JSON for a request with random clothes: whitespace and escapes anywhere; key order
    and number spelling only where the schema is known (the body, messages, content parts,
    TGI parameters, numeric sampling parameters)."""

    def field(name, value, numeric=NUMERIC):
        if name in numeric and type(value) in (int, float):
            return _number(value, rng)
        if name == "parameters" and isinstance(value, dict):
            return _object(value.items(), rng, True, field)
        if name == "messages" and isinstance(value, list):
            return "[" + ",".join(_ws(rng) + (_object(m.items(), rng, True, message_field) if isinstance(m, dict)
                                              else write_kept(m, rng)) for m in value) + "]"
        return write_kept(value, rng)

    def message_field(name, value):
        if name == "content" and isinstance(value, list):
            return "[" + ",".join(_object(p.items(), rng, True, lambda k, v: write_kept(v, rng))
                                  if isinstance(p, dict) else write_kept(p, rng) for p in value) + "]"
        return write_kept(value, rng)

    return _object(body.items(), rng, True, field)


# --------------------------------------------------------------------------- transformations


def _texts(path: str, body: dict) -> list[tuple[object, object]]:
    """(container, index) of every prompt text in the body."""
    out = []
    if "messages" in body:
        out += [(m, "content") for m in body["messages"]]
    for field in ("prompt", "input", "inputs"):
        value = body.get(field)
        if isinstance(value, str):
            out.append((body, field))
        elif isinstance(value, list) and value and isinstance(value[0], str):
            out += [(value, i) for i in range(len(value))]
    return out


def _params(path: str, body: dict) -> dict:
    if path == INVOCATIONS_ROUTE and "inputs" in body:
        return body.setdefault("parameters", {})
    return body


def _schema(path: str, body: dict) -> str:
    if path == INVOCATIONS_ROUTE:
        return "tgi" if "inputs" in body else "chat"
    return {CHAT_ROUTE: "chat", COMPLETIONS_ROUTE: "completions", EMBEDDINGS_ROUTE: "embeddings"}[path]


# The listed equivalences, per schema: (where, name, the values that equal absence).
DEFAULTS = {
    "chat": [("top", "n", [1, 1.0]), ("top", "presence_penalty", [0, 0.0, -0.0]), ("top", "frequency_penalty", [0]),
             ("top", "logprobs", [False]), ("top", "echo", [False]), ("top", "logit_bias", [None]),
             ("top", "tools", [None]), ("top", "response_format", [None]), ("top", "seed", [None]),
             ("top", "temperature", [None]), ("top", "max_tokens", [None]), ("top", "stop", [None, []])],
    "completions": [("top", "n", [1, 1.0]), ("top", "presence_penalty", [0, -0.0]), ("top", "frequency_penalty", [0.0]),
                    ("top", "echo", [False]), ("top", "logit_bias", [None]), ("top", "seed", [None]),
                    ("top", "top_p", [None]), ("top", "stop", [None, []])],
    "embeddings": [],
    "tgi": [("params", "presence_penalty", [0]), ("params", "frequency_penalty", [0, 0.0]), ("params", "seed", [None]),
            ("params", "temperature", [None]), ("params", "top_k", [None]), ("params", "stop", [[]])],
}


def equivalent(path: str, body: dict, rng: random.Random) -> dict:
    """The same request: single text parts, universal defaults, null-safe nulls, excluded
    fields, stop repeats (after the first occurrence), a lone stop string as a list."""
    body = json.loads(json.dumps(body))
    schema = _schema(path, body)
    for m in body.get("messages", []):
        if rng.random() < 0.5:
            m["content"] = [{"type": "text", "text": m["content"]}]
    if rng.random() < 0.4:
        body.setdefault("stream", False)
    params = _params(path, body) if schema == "tgi" else body
    for where, name, values in DEFAULTS[schema]:
        if rng.random() < 0.4:
            (params if where == "params" else body).setdefault(name, rng.choice(values))
    for name in DEV.excluded_fields:
        if rng.random() < 0.4:
            body[name] = rng.choice(["u-1", {"trace": [1, 2]}, True])
    stop = params.get("stop")
    if stop:
        stop = list(stop)
        for _ in range(rng.randint(0, 3)):  # a repeat anywhere after its first occurrence
            i = rng.randrange(len(stop))
            stop.insert(rng.randint(i + 1, len(stop)), stop[i])
        params["stop"] = stop[0] if len(set(stop)) == 1 and schema != "tgi" and rng.random() < 0.5 else stop
    if schema == "tgi" and not body["parameters"]:
        del body["parameters"]
    return body


DIFFERENCES = ["char", "trailing-space", "case", "nfd", "model", "stream", "tools", "sampling", "model-version",
               "kept-number", "kept-key-order", "stop-order"]
SPELLINGS = [("1", "1.0"), ("1.0", "1e0"), ("0", "-0"), ("0.0", "-0.0"), ("100", "1e2"), ("2.5", "2.50"),
             ("1E2", "1e2"), ("1e2", "1e+2")]


def _kept_field(path: str, body: dict) -> tuple[dict, str]:
    """(object, field) where an opaque value goes: a tool's schema in chat, an unknown field elsewhere."""
    if _schema(path, body) == "chat":
        return body, "tools"
    if _schema(path, body) == "tgi":
        return _params(path, body), "grammar"
    return body, "guided_json"


def different(path: str, body: dict, how: str, rng: random.Random) -> tuple[dict, dict, dict]:
    """(body a, body b, settings for b): one change the model can see."""
    a, b, s = json.loads(json.dumps(body)), json.loads(json.dumps(body)), DEV
    texts_a, texts_b = _texts(path, a), _texts(path, b)
    if how == "stop-order" and _schema(path, a) == "embeddings":
        how = "char"
    if how in ("char", "trailing-space", "case", "nfd"):
        if not texts_a:  # embeddings of token ids: change one token
            b["input"][0] += 1
            return a, b, s
        i = rng.randrange(len(texts_a))
        (ca, ka), (cb, kb) = texts_a[i], texts_b[i]
        t = ca[ka]
        if how == "char":
            j = rng.randrange(len(t))
            cb[kb] = t[:j] + ("b" if t[j] != "b" else "c") + t[j + 1:]
        elif how == "trailing-space":
            cb[kb] = t + " "
        elif how == "case":
            if t.swapcase() != t:
                cb[kb] = t.swapcase()
            else:
                ca[ka], cb[kb] = t + "a", t + "A"
        else:  # the same visible text, composed vs decomposed
            ca[ka], cb[kb] = t + "\u00e9", t + "e\u0301"
    elif how == "model":
        b["model"] = a.get("model", "m") + "-2"
    elif how == "stream":
        b["stream"] = True
    elif how == "tools":
        tools = a.get("tools") or []
        if len(tools) >= 2 and tools[0] != tools[-1]:
            b["tools"] = tools[::-1]
        else:
            b["tools"] = tools + [{"type": "function", "function": {"name": "extra", "parameters": {}}}]
    elif how == "sampling":
        params = _params(path, b) if _schema(path, b) == "tgi" else b
        names = {"max_tokens", "max_new_tokens", "top_p", "seed"} | ({"temperature"} if "seed" in params else set())
        name = rng.choice(sorted(set(params) & names) or ["max_tokens"])
        params[name] = params.get(name, 100) + 1
    elif how == "kept-number":  # one number's spelling inside a schema
        x, y = rng.choice(SPELLINGS)
        for body_, text in ((a, x), (b, y)):
            where, name = _kept_field(path, body_)
            schema = {"type": "object", "properties": {"v": {"enum": [Raw(text), "z"]}}}
            if name == "tools":
                where[name] = (where.get(name) or []) + [{"type": "function", "function": {"name": "k",
                                                                                           "parameters": schema}}]
            else:
                where[name] = schema
    elif how == "kept-key-order":  # two keys of a tool (or another opaque value) swapped
        first, second = rng.sample(["name", "description", "parameters", "strict"], 2)
        for body_, pair in ((a, (first, second)), (b, (second, first))):
            where, name = _kept_field(path, body_)
            function = {k: {"name": "k", "description": "d", "parameters": {}, "strict": True}[k] for k in pair}
            value = {"type": "function", "function": function}
            where[name] = (where.get(name) or []) + [value] if name == "tools" else value
    elif how == "stop-order":
        params = _params(path, a) if _schema(path, a) == "tgi" else a
        stop = [x for x in dict.fromkeys(params.get("stop") or [])]
        stop = stop if len(stop) >= 2 else stop + [w for w in ("\n\n", "END") if w not in stop][:2 - len(stop)]
        params["stop"] = stop
        (_params(path, b) if _schema(path, b) == "tgi" else b)["stop"] = stop[::-1]
    elif path == "/v1/embeddings":  # answered by the embeddings model: its version keys it
        s = DEV._replace(embeddings_model_version=DEV.embeddings_model_version + "-next")
    else:
        s = DEV._replace(model_version=DEV.model_version + "-next")
    return a, b, s


def key(path: str, raw: bytes, s=DEV, headers=JSON) -> str:
    d = cd.decide(path, headers, raw, s)
    assert d.cacheable and d.error is None, (d, raw[:300])
    assert HEX64.match(d.key)
    return d.key


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(requests(), st.randoms(use_true_random=False))
def test_equivalent_requests_share_a_key(request, rng):
    path, body = request
    expected = key(path, json.dumps(body).encode())
    for _ in range(2):
        raw = write(equivalent(path, body, rng), rng).encode("utf-8")
        assert key(path, raw) == expected, raw[:400]


@PROPERTY
@given(requests(), st.sampled_from(DIFFERENCES), st.randoms(use_true_random=False))
def test_different_requests_have_different_keys(request, how, rng):
    path, body = request
    a, b, s = different(path, body, how, rng)
    assume(a != b or s is not DEV)
    key_a = key(path, write(a, rng).encode("utf-8"))
    key_b = key(path, write(b, rng).encode("utf-8"), s)
    assert key_a != key_b, (how, a, b)


@PROPERTY
@given(requests(), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_tenants_never_share_keys(request, tenant_a, tenant_b):
    path, body = request
    raw = json.dumps(body).encode()
    # The same API key for both: only the verified tenant scopes the cache.
    a = cd.decide(path, {"authorization": "Bearer sk-shared"}, raw, SCOPED, tenant=tenant_a)
    b = cd.decide(path, {"authorization": "Bearer sk-shared"}, raw, SCOPED, tenant=tenant_b)
    assert a.cacheable == b.cacheable
    if a.cacheable:
        assert (a.key == b.key) == (tenant_a == tenant_b)


# --------------------------------------------------------------------------- never raises

paths = st.sampled_from([CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE, INVOCATIONS_ROUTE, "/v1/models", ""])
header_values = st.one_of(st.text(max_size=40), st.sampled_from(["application/json", "no-store", "no-cache", "0", "-1",
                                                                 "Bearer x", "text/plain; charset=utf-8"]))
headers = st.dictionaries(
    st.one_of(st.sampled_from(["content-type", "Content-Type", "cache-control", "x-inference-cache-ttl",
                               "authorization", "x-api-key", "content-encoding"]), st.text(max_size=10)),
    st.one_of(header_values, st.none(), st.integers(), st.lists(header_values, max_size=2)),
    max_size=5,
)
stage_settings = st.sampled_from([DEV, SCOPED, DEV._replace(policy="all"), DEV._replace(max_nesting_depth=2),
                                  DEV._replace(max_body_bytes=64)])


def _check(d) -> None:
    assert isinstance(d, cd.Decision)
    assert not d.reason.startswith("internal error"), d
    if d.error is not None:
        assert d.error.status in (400, 413, 415) and not d.cacheable
        json.loads(d.error.body())
    if d.cacheable:
        assert HEX64.match(d.key) and d.error is None
    else:
        assert d.key is None and not d.lookup and not d.store
    json.dumps(d.as_dict())


@PROPERTY
@given(paths, headers, st.binary(max_size=300), stage_settings, st.booleans())
def test_arbitrary_bytes_never_raise(path, hdrs, raw, s, truncated):
    _check(cd.decide(path, hdrs, raw, s, truncated=truncated))


@PROPERTY
@given(paths, headers, json_value, stage_settings, st.one_of(st.none(), st.text(max_size=8)))
def test_arbitrary_json_never_raises(path, hdrs, value, s, tenant):
    raw = json.dumps(value).encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, a 400
    _check(cd.decide(path, hdrs, raw, s, tenant=tenant))


@PROPERTY
@given(requests(), st.data())
def test_mutated_requests_never_raise(request, data):
    """Valid requests with one field replaced by arbitrary JSON (wrong types everywhere)."""
    path, body = request
    target = data.draw(st.sampled_from(["top", "message", "parameters"]))
    value = data.draw(json_value)
    if target == "message" and body.get("messages"):
        body["messages"][0][data.draw(st.sampled_from(["content", "role", "tool_calls"]))] = value
    elif target == "parameters" and "parameters" in body:
        body["parameters"][data.draw(st.sampled_from(["do_sample", "seed", "stop", "top_k", "n", "top_n_tokens",
                                                      "temperature"]))] = value
    else:
        body[data.draw(st.sampled_from(["messages", "prompt", "input", "inputs", "model", "stop", "temperature",
                                        "stream", "seed", "n", "parameters", "tools"]))] = value
    raw = write(body, data.draw(st.randoms(use_true_random=False))).encode("utf-8")
    _check(cd.decide(path, JSON, raw, data.draw(stage_settings)))


# --------------------------------------------------------------------------- odd types fail closed

SAMPLING_FIELDS = {
    "chat": ["temperature", "top_p", "top_k", "min_p", "seed", "n", "best_of", "max_tokens", "max_completion_tokens",
             "presence_penalty", "frequency_penalty", "repetition_penalty"],
    "completions": ["temperature", "top_p", "top_k", "seed", "n", "best_of", "max_tokens", "presence_penalty",
                    "frequency_penalty"],
    "tgi": ["do_sample", "temperature", "top_k", "top_p", "typical_p", "seed", "max_new_tokens", "best_of", "n",
            "top_n_tokens", "repetition_penalty", "frequency_penalty"],
}
# Never null-safe, in any schema: an explicit null is not the server's default.
NOT_NULL_SAFE = {"n", "presence_penalty", "frequency_penalty", "do_sample", "max_new_tokens", "top_n_tokens"}
odd_values = st.one_of(
    st.text(max_size=6), st.sampled_from(["0", "1", "2", " 3", "0.0", "true", ""]),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text("ab", max_size=2), st.integers(), max_size=1),
    st.booleans(),
)


@PROPERTY
@given(requests(), st.data())
def test_sampling_parameters_of_unexpected_type_are_not_cacheable(request, data):
    path, body = request
    schema = _schema(path, body)
    assume(schema != "embeddings")
    name = data.draw(st.sampled_from(SAMPLING_FIELDS[schema]))
    if name == "do_sample":
        value = data.draw(st.one_of(st.text(max_size=4), st.integers(0, 1), st.lists(st.booleans(), max_size=1)))
    elif name in NOT_NULL_SAFE or (schema == "completions" and name == "max_tokens"):
        value = data.draw(st.one_of(odd_values, st.none()))
    else:
        value = data.draw(odd_values)
    (_params(path, body) if schema == "tgi" else body)[name] = value
    raw = write(body, data.draw(st.randoms(use_true_random=False))).encode("utf-8")
    d = cd.decide(path, JSON, raw, DEV)
    assert not d.cacheable and d.key is None and d.error is None, (d, name, value)
    assert d.reason == f"unexpected type for {name}"
