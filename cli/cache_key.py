"""The cache decision from the command line (the module's public contract).

  bin/cache-key --path /v1/chat/completions [--header 'Name: value']... < body.json
  bin/cache-key --jsonl < requests.jsonl            # {"path","headers","body"|"body_b64"} per line
  bin/cache-key --jsonl --summary < requests.jsonl  # hit ratio these keys reach vs byte-exact keys
  bin/cache-key --stage prod ...                    # that stage's cache settings (default: the default stage)
  bin/cache-key --stage prod --deployed-keys ...    # the keys prod computes (reads its stage secret)

Each decision is printed as {"cacheable", "key", "reason", "error": null|{"status", "message"}},
and, with a key, "key_kind": "estimate" (a SHA-256 no deployed stage uses: good for hit
ratios and for comparing two requests) or "deployed" (the MAC the stage computes, with
--deployed-keys, which reads the stage secret with the stage account's credentials, or
--local-keys for the local run's).
Exit status 0 unless the command itself is misused (2). Rules: docs/cache-key.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys

from config.stages import DEFAULT_STAGE, STAGES
from lambdas import cache_decision, cache_settings


def _bad_line(number: int, message: str) -> dict:
    """A log line that cannot be turned into a request: an error object, never a stop."""
    return {
        "cacheable": False,
        "key": None,
        "reason": "bad input line",
        "error": {"status": 400, "message": f"line {number}: {message}"},
    }


def request_from_line(number: int, line: bytes):
    """(path, headers, body, tenant) or an error object."""
    try:
        record = json.loads(line)
    except ValueError as e:  # also UnicodeDecodeError
        return _bad_line(number, f"not JSON ({str(e)[:80]})")
    return request_from_record(number, record)


def request_from_record(number: int, record) -> tuple[str, dict, bytes, str | None] | dict:
    """A parsed log line {"path", "headers", "body"|"body_b64", "tenant"?} as
    (path, headers, body, tenant), or an error object."""
    if type(record) is not dict:
        return _bad_line(number, "not a JSON object")
    path, headers, tenant = record.get("path"), record.get("headers") or {}, record.get("tenant")
    if type(path) is not str:
        return _bad_line(number, "'path' must be a string")
    if type(headers) is not dict or not all(type(v) is str for v in headers.values()):
        return _bad_line(number, "'headers' must be an object of strings")
    if tenant is not None and type(tenant) is not str:
        return _bad_line(number, "'tenant' must be a string")
    if "body_b64" in record:
        try:
            body = base64.b64decode(record["body_b64"], validate=True)
        except (TypeError, ValueError, binascii.Error):
            return _bad_line(number, "'body_b64' is not base64")
    elif type(record.get("body")) is str:
        body = record["body"].encode("utf-8", "surrogatepass")
    else:
        return _bad_line(number, "needs 'body' (a string) or 'body_b64'")
    return path, headers, body, tenant


def byte_exact_key(path: str, scope: str, body: bytes) -> str:
    """What most gateways key on: SHA-256 of the path and the raw body (and the tenant
    on a tenant-scoped stage, as this project's keys have it)."""
    return hashlib.sha256(f"{path}\x00{scope}\x00".encode("utf-8", "surrogatepass") + body).hexdigest()


class Replay:
    """An unbounded cache replayed over a log: a lookup hits when an earlier request of
    the same key stored its answer. Keys are held as the first 64 bits of their
    SHA-256 (8 bytes each, not 64 hex characters: a million keys collide with odds of
    about 3e-8)."""

    __slots__ = ("stored",)

    def __init__(self) -> None:
        self.stored: dict[int, bool] = {}  # key -> an answer is stored

    @staticmethod
    def compact(key: str) -> int:
        return int(key[:16], 16)

    def add(self, key: str, lookup: bool, store: bool) -> bool:
        """One cacheable request; True when it is a hit."""
        k = int(key[:16], 16)
        stored = self.stored.get(k)
        if lookup and stored:
            return True
        if store or stored is None:
            self.stored[k] = bool(store or stored)
        return False

    def __len__(self) -> int:
        return len(self.stored)


class HitSummary:
    """An unbounded cache replayed over the log, once with these keys and once with a
    byte-exact key (SHA-256 of path + raw body) on the same requests and controls."""

    def __init__(self) -> None:
        self.requests = self.invalid = self.cacheable = self.hits = self.exact_hits = 0
        self.keys = Replay()
        self.exact_keys = Replay()
        self.reasons: dict[str, int] = {}

    def add(self, decision: dict, lookup: bool = False, store: bool = False, exact_key: str | None = None) -> tuple[bool, bool]:
        """One request's decision; (hit with these keys, hit with byte-exact keys)."""
        self.requests += 1
        self.invalid += decision["error"] is not None
        reason = decision["reason"]
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if not decision["cacheable"]:
            return False, False
        self.cacheable += 1
        hit = self.keys.add(decision["key"], lookup, store)
        exact_hit = self.exact_keys.add(exact_key, lookup, store)
        self.hits += hit
        self.exact_hits += exact_hit
        return hit, exact_hit

    def as_dict(self, stage: str) -> dict:

        def ratio(n: int) -> float:
            return round(n / self.requests, 4) if self.requests else 0.0

        return {
            "stage": stage,
            "requests": self.requests,
            "invalid": self.invalid,
            "cacheable": self.cacheable,
            "distinct_keys": len(self.keys),
            "hits": self.hits,
            "hit_ratio": ratio(self.hits),
            "byte_exact_distinct_keys": len(self.exact_keys),
            "byte_exact_hits": self.exact_hits,
            "byte_exact_hit_ratio": ratio(self.exact_hits),
            "reasons": dict(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _table(s: dict) -> str:
    rows = [
        ("requests", s["requests"], s["requests"]),
        ("cacheable", s["cacheable"], s["cacheable"]),
        ("distinct keys", s["distinct_keys"], s["byte_exact_distinct_keys"]),
        ("hits", s["hits"], s["byte_exact_hits"]),
        ("hit ratio", f"{s['hit_ratio']:.1%}", f"{s['byte_exact_hit_ratio']:.1%}"),
    ]
    lines = [f"stage {s['stage']}", f"{'':<15}{'cache-key':>12}{'byte-exact':>12}"]
    lines += [f"{name:<15}{a!s:>12}{b!s:>12}" for name, a, b in rows]
    lines += ["reasons:"] + [f"  {n:>7}  {reason}" for reason, n in s["reasons"].items()]
    return "\n".join(lines)


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cache-key", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", help="request path, e.g. /v1/chat/completions (body on stdin)")
    parser.add_argument("--header", action="append", default=[], type=_parse_header, metavar="'NAME: VALUE'")
    parser.add_argument("--tenant", help="the verified tenant id (what the API key check sets) for tenant-scoped stages")
    parser.add_argument("--jsonl", action="store_true", help="one request per stdin line, one decision per line")
    parser.add_argument("--summary", action="store_true", help="with --jsonl: print hit-ratio summary JSON only "
                        "(a readable table goes to stderr)")
    parser.add_argument("--canonical", action="store_true", help="print the bytes the key hashes instead")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stage", choices=sorted(STAGES), default=DEFAULT_STAGE, help=f"default {DEFAULT_STAGE}")
    group.add_argument("--settings", metavar="FILE", help="a cache_settings.json instead of a stage")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--deployed-keys", action="store_true",
                      help="the keys the stage computes: MACs under its stage secret (needs its account's credentials)")
    keys.add_argument("--local-keys", nargs="?", const="", metavar="KEY_STORE_FILE",
                      help="the keys the local run computes (its key store's stage secret)")
    args = parser.parse_args(argv)
    if args.jsonl and (args.path or args.header or args.canonical):
        parser.error("--jsonl takes requests from stdin; --path/--header/--canonical are for one request")
    if not args.jsonl and (args.summary or not args.path):
        parser.error("--path is required without --jsonl; --summary needs --jsonl")
    if args.settings:
        try:
            settings = cache_settings.load(args.settings)
        except (OSError, ValueError, TypeError) as e:
            parser.error(f"cannot read settings {args.settings}: {e}")
        stage_name = settings.stage
    else:
        settings, stage_name = STAGES[args.stage].edge_cache_settings(), args.stage
    mac = None
    if args.deployed_keys or args.local_keys is not None:
        from cli.api_keys import CliError, stage_secret_of

        try:
            secret = stage_secret_of(stage_name if args.deployed_keys else None, args.local_keys or None)
        except CliError as e:
            parser.exit(2, f"cache-key: error: {e}\n")
        except Exception as e:  # noqa: BLE001 - no credentials, no boto3, no network: one line, no traceback
            parser.exit(2, f"cache-key: error: cannot read the stage secret: {type(e).__name__}: {e}\n")
        mac = cache_decision.mac_key(secret)
    kind = "deployed" if mac else "estimate"

    def decided(decision) -> dict:
        result = decision.as_dict()
        if result["key"]:
            result["key_kind"] = kind
        return result

    out = sys.stdout
    if not args.jsonl:
        body = sys.stdin.buffer.read()
        headers: dict[str, str] = {}
        for name, value in args.header:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if args.canonical:
            payload = cache_decision.canonical_payload(args.path, headers, body, settings, tenant=args.tenant)
            out.flush()
            sys.stdout.buffer.write((payload or b"") + b"\n")  # JSON, NUL, then long texts as raw bytes
            return 0
        decision = cache_decision.decide(args.path, headers, body, settings, tenant=args.tenant, mac=mac)
        out.write(json.dumps(decided(decision)) + "\n")
        return 0

    summary = HitSummary() if args.summary else None
    scoped = settings.tenant_scoped
    data = sys.stdin.buffer.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, 1):
        request = request_from_line(number, line.rstrip(b"\r"))
        if isinstance(request, dict):
            result = request
            if summary:
                summary.add(result)
        else:
            path, headers, body, tenant = request
            decision = cache_decision.decide(path, headers, body, settings, tenant=tenant or args.tenant, mac=mac)
            result = decided(decision)
            if summary:
                scope = (tenant or args.tenant or "") if scoped else ""
                summary.add(result, decision.lookup, decision.store, byte_exact_key(path, scope, body))
        if not summary:
            out.write(json.dumps(result) + "\n")
    if summary:
        report = summary.as_dict(stage_name)
        out.write(json.dumps(report) + "\n")
        sys.stderr.write(_table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
