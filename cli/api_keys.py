"""Manage the API keys that the viewer-request function checks (create, list, revoke, rotate).

  bin/api-keys --stage dev create --tenant acme      # prints the new key once
  bin/api-keys --stage dev list                      # key ids, tenants, statuses
  bin/api-keys --stage dev revoke k_0123456789abcdef
  bin/api-keys --stage dev rotate k_0123456789abcdef # new key, same tenant; old one revoked
  bin/api-keys --stage dev rotate-secret             # a new stage secret: every cache key changes (a flush)
  bin/api-keys --local [--key-store-file PATH] ...   # the local run's key-store file
  --json: machine-readable output (create/rotate: one object {"key_id", "key", "tenant"})

A deployed stage's keys live in its CloudFront KeyValueStore `inference-cache-{stage}-api-keys`,
written through boto3's `cloudfront-keyvaluestore` client (SigV4A: needs awscrt). The store
holds only SHA-256 hashes of keys: store key = sha256(api key) as 64 lowercase hex; value =
the key record, compact JSON {"key_id", "tenant", "status": "active"|"revoked", "created",
...} (see key_record). The raw key is printed once, to stdout, and never written anywhere.
The same store holds the stage secret under `stage-secret` (cache keys are MACs under it;
the edge's /_cache/ lookups carry a credential derived from it: docs/security.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from lambdas.contract import API_KEY_STORE_NAME, STAGE_SECRET_STORE_KEY

ROOT = Path(__file__).resolve().parent.parent
KEY_PREFIX = "sk-ic-"  # recognisable in leaked-secret scans, like OpenAI's sk-
KEY_ID_PREFIX = "k_"
ACTIVE, REVOKED = "active", "revoked"
LOCAL_KEY_STORE_ENV = "INFERENCE_CACHE_LOCAL_KEY_STORE"
DEFAULT_LOCAL_KEY_STORE = ROOT / "build" / "local" / "api-keys.json"
# CloudFront KeyValueStore: values up to 1024 characters (Developer Guide, "File format
# for key-value pairs"). A record is ~150; the bound guards against long extras.
KVS_VALUE_LIMIT = 1024
# The tenant id becomes a header value and part of cache keys; the function checks the same.
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
WRITE_ATTEMPTS = 3  # a concurrent writer changed the store (ETag): re-read and retry
HASH_SHOWN = 12  # characters of the key hash that `list` shows


class CliError(Exception):
    """A failure explained in one line; exit status 2."""


# --------------------------------------------------------------------------- keys and records


def generate_api_key() -> str:
    """A new API key: 256 random bits, URL-safe (a valid RFC 6750 bearer token)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """The key's public name (list, revoke, rotate); says nothing about the key."""
    return KEY_ID_PREFIX + secrets.token_hex(8)


def key_hash(api_key: str) -> str:
    """The store key of an API key: SHA-256 of its UTF-8 bytes, lowercase hex (what the
    function computes from the presented key)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_tenant(tenant: str) -> str:
    if not TENANT_ID.match(tenant):
        raise CliError(f"tenant id {tenant[:80]!r} must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit")
    return tenant


def key_record(key_id: str, tenant: str, status: str = ACTIVE, created: str | None = None, **extra: str) -> str:
    """The store value of a key: compact JSON {"key_id", "tenant", "status", "created", **extra}.
    The function reads "tenant" and "status" (only "active" passes); extras ("revoked",
    "replaced_by") are for people."""
    record = {"key_id": key_id, "tenant": check_tenant(tenant), "status": status, "created": created or _now(), **extra}
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
    if len(text) > KVS_VALUE_LIMIT:
        raise CliError(f"key record of {len(text)} characters exceeds the key store's {KVS_VALUE_LIMIT}")
    return text


def parse_key_record(text: str) -> dict:
    """A store value back as a dict; ValueError when it is not a key record."""
    record = json.loads(text)
    if not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in ("key_id", "tenant", "status")):
        raise ValueError("not a key record")
    return record


# --------------------------------------------------------------------------- key stores
# Both stores offer records() and transact(plan, read): `plan(records)` returns (puts,
# result), where records is {key hash: value} and puts the values to write; the store
# applies the puts atomically, or re-runs the plan on fresh records when another writer
# got there first.


class LocalKeyStore:
    """The local run's key store: a JSON file {key hash: value}, as the Node.js host reads it.
    Written whole to a temporary file and renamed over (readers never see half a file),
    under a lock file (two commands at once do not lose each other's keys)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"local key store {self.path}"

    def records(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read {self.path}: {e}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CliError(f"{self.path} is not a key store (a JSON object of strings)")
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def transact(self, plan: Callable[[dict[str, str]], tuple[dict[str, str], object]], read: bool = True):
        with self._locked():
            records = self.records()
            puts, result = plan(records if read else {})
            if puts:
                records.update(puts)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump(records, f, indent=1, sort_keys=True)
                        f.write("\n")
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            return result


def _error_code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


class DeployedKeyStore:
    """A stage's CloudFront KeyValueStore, through a `cloudfront-keyvaluestore` client.
    Writes carry the store's ETag (IfMatch): a concurrent change fails them instead of
    being overwritten, and the plan runs again on fresh records."""

    def __init__(self, kvs_client, arn: str, name: str) -> None:
        self._kvs = kvs_client
        self.arn = arn
        self.name = name

    def describe(self) -> str:
        return f"key store {self.name}"

    @contextlib.contextmanager
    def _store_errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if _error_code(e) == "ResourceNotFoundException":
                raise CliError(f"key store {self.name} ({self.arn}) not found: was it deleted?") from None
            raise

    def records(self) -> dict[str, str]:
        records = {}
        with self._store_errors():
            for page in self._kvs.get_paginator("list_keys").paginate(KvsARN=self.arn):
                for item in page.get("Items", []):
                    records[item["Key"]] = item["Value"]
        return records

    def transact(self, plan: Callable[[dict[str, str]], tuple[dict[str, str], object]], read: bool = True):
        with self._store_errors():
            return self._transact(plan, read)

    def _transact(self, plan, read):
        from botocore.exceptions import ClientError

        for attempt in range(1, WRITE_ATTEMPTS + 1):
            # The ETag first: any write after this point makes ours fail, even one that
            # changes records we have already read.
            etag = self._kvs.describe_key_value_store(KvsARN=self.arn)["ETag"]
            puts, result = plan(self.records() if read else {})
            if not puts:
                return result
            try:
                if len(puts) == 1:
                    ((key, value),) = puts.items()
                    self._kvs.put_key(KvsARN=self.arn, Key=key, Value=value, IfMatch=etag)
                else:  # rotate: the new key and the old key's revocation land together or not at all
                    self._kvs.update_keys(KvsARN=self.arn, IfMatch=etag,
                                          Puts=[{"Key": k, "Value": v} for k, v in puts.items()])
                return result
            except ClientError as e:
                if _error_code(e) != "ConflictException" or attempt == WRITE_ATTEMPTS:
                    raise


def stages() -> dict:
    """The deployable stages by name. The one place that knows where stage settings live."""
    from config.stages import STAGES

    return STAGES


def key_store_name(stage: str) -> str:
    return API_KEY_STORE_NAME.format(stage=stage)


def deployed_key_store(stage: str, cloudfront_client, kvs_client) -> DeployedKeyStore:
    """The stage's key store, found by its deterministic name through the `cloudfront` client."""
    settings = stages()[stage]
    name = key_store_name(stage)
    try:
        arn = cloudfront_client.describe_key_value_store(Name=name)["KeyValueStore"]["ARN"]
    except Exception as e:
        if _error_code(e) in ("EntityNotFound", "ResourceNotFoundException", "NoSuchResource"):
            raise CliError(f"no key store named {name} in this account: is stage {stage} deployed?") from None
        raise
    # arn:aws:cloudfront::<account>:key-value-store/<id>: refuse to write keys for one
    # stage into another account's store of the same name.
    account = arn.split(":")[4] if arn.count(":") >= 5 else ""
    expected = str(getattr(settings, "account", "") or "")
    if expected and account != expected:
        raise CliError(f"{name} found in account {account}, but stage {stage} lives in {expected}: wrong credentials?")
    return DeployedKeyStore(kvs_client, arn, name)


def local_key_store_path(path: str | None = None) -> Path:
    return Path(path or os.environ.get(LOCAL_KEY_STORE_ENV) or DEFAULT_LOCAL_KEY_STORE)


def _clients(session):
    """cloudfront + cloudfront-keyvaluestore clients; fails before any request without credentials."""
    from botocore.exceptions import NoCredentialsError

    if session is None:
        import boto3

        session = boto3.session.Session()
    if session.get_credentials() is None:
        raise NoCredentialsError()
    # Both are global services (the key store API signs with SigV4A for every region).
    return session.client("cloudfront", region_name="us-east-1"), session.client("cloudfront-keyvaluestore",
                                                                                 region_name="us-east-1")


# --------------------------------------------------------------------------- operations


def _parsed(records: dict[str, str]) -> Iterator[tuple[str, dict | None]]:
    for digest, value in records.items():
        try:
            yield digest, parse_key_record(value)
        except ValueError:
            yield digest, None


def _api_key_records(records: dict[str, str]) -> dict[str, str]:
    """The store's API key records, without its stage secret."""
    return {k: v for k, v in records.items() if k != STAGE_SECRET_STORE_KEY}


def _find(records: dict[str, str], key_id: str) -> tuple[str, dict]:
    for digest, record in _parsed(_api_key_records(records)):
        if record and record["key_id"] == key_id:
            return digest, record
    raise CliError(f"no API key with id {key_id}")


def create_key(store, tenant: str) -> dict:
    """A new active key for `tenant`: {"key_id", "key", "tenant"} (the key is not stored)."""
    check_tenant(tenant)

    def plan(_records):
        api_key, key_id = generate_api_key(), new_key_id()
        return {key_hash(api_key): key_record(key_id, tenant)}, {"key_id": key_id, "key": api_key, "tenant": tenant}

    return store.transact(plan, read=False)


def list_keys(store) -> list[dict]:
    """Every key's record, without the key: key_id, tenant, status, created, key_hash_prefix."""
    rows = []
    for digest, record in _parsed(_api_key_records(store.records())):
        record = record or {"key_id": "?", "tenant": "?", "status": "unreadable record"}
        rows.append({"key_id": record["key_id"], "tenant": record["tenant"], "status": record["status"],
                     "created": record.get("created", ""), "key_hash_prefix": digest[:HASH_SHOWN]})
    return sorted(rows, key=lambda r: (r["tenant"], r["created"], r["key_id"]))


def revoke_key(store, key_id: str) -> dict:
    """Marks the key revoked (the record stays, for `list`); {"key_id", "tenant", "status", "changed"}."""

    def plan(records):
        digest, record = _find(records, key_id)
        outcome = {"key_id": key_id, "tenant": record["tenant"], "status": REVOKED, "changed": record["status"] != REVOKED}
        if not outcome["changed"]:
            return {}, outcome
        extra = {k: v for k, v in record.items() if k not in ("key_id", "tenant", "status", "created")}
        extra["revoked"] = _now()
        return {digest: key_record(key_id, record["tenant"], REVOKED, record.get("created"), **extra)}, outcome

    return store.transact(plan)


def rotate_key(store, key_id: str) -> dict:
    """A new key for the same tenant (so its cache stays), and the old one revoked, in one
    write: {"key_id", "key", "tenant", "revoked_key_id"}."""

    def plan(records):
        old_digest, old = _find(records, key_id)
        if old["status"] != ACTIVE:
            raise CliError(f"{key_id} is {old['status']}, not active: use `create --tenant {old['tenant']}` for a new key")
        api_key, new_id = generate_api_key(), new_key_id()
        now = _now()
        puts = {
            key_hash(api_key): key_record(new_id, old["tenant"], created=now),
            old_digest: key_record(key_id, old["tenant"], REVOKED, old.get("created"), revoked=now, replaced_by=new_id),
        }
        return puts, {"key_id": new_id, "key": api_key, "tenant": old["tenant"], "revoked_key_id": key_id}

    return store.transact(plan)


def generate_stage_secret() -> str:
    """256 random bits, URL-safe (43 characters: a header value and a KeyValueStore value)."""
    return secrets.token_urlsafe(32)


def read_stage_secret(store) -> str | None:
    """The stage secret, or None when there is none yet."""
    secret = store.records().get(STAGE_SECRET_STORE_KEY)
    return secret or None


def rotate_stage_secret(store) -> dict:
    """A new stage secret, in one write: every cache key changes with it (the stored answers
    become unreachable: a flush); {"rotated": true, "had_secret": bool}. Never printed."""

    def plan(records):
        return {STAGE_SECRET_STORE_KEY: generate_stage_secret()}, {"rotated": True,
                                                                  "had_secret": STAGE_SECRET_STORE_KEY in records}

    return store.transact(plan)


def stage_secret_of(stage: str | None = None, local_file: str | None = None, session=None) -> str:
    """The stage secret of a deployed stage (read with the credentials of its account) or
    of the local run's key store (`stage` None); CliError when there is none."""
    if stage is None:
        store = LocalKeyStore(local_key_store_path(local_file))
    else:
        if stage not in stages():
            raise CliError(f"unknown stage {stage!r}")
        store = deployed_key_store(stage, *_clients(session))
    secret = read_stage_secret(store)
    if secret is None:
        raise CliError(f"{store.describe()} holds no stage secret yet: `bin/api-keys ... rotate-secret` makes one")
    return secret


def ensure_stage_secret(store) -> str:
    """The stage secret, made first if the store has none (the local run's first start)."""

    def plan(records):
        secret = records.get(STAGE_SECRET_STORE_KEY)
        if secret:
            return {}, secret
        secret = generate_stage_secret()
        return {STAGE_SECRET_STORE_KEY: secret}, secret

    return store.transact(plan)


# --------------------------------------------------------------------------- command line


def _add_target_options(parser: argparse.ArgumentParser, default) -> None:
    """--stage/--local/--key-store-file/--json, accepted before or after the command."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--stage", metavar="NAME", default=default, help="a deployed stage's key store")
    target.add_argument("--local", action="store_true", default=default,
                        help=f"the local run's key-store file (default {DEFAULT_LOCAL_KEY_STORE.relative_to(ROOT)}, "
                             f"or ${LOCAL_KEY_STORE_ENV})")
    parser.add_argument("--key-store-file", metavar="PATH", default=default, help="with --local: this file instead")
    parser.add_argument("--json", action="store_true", default=default, help="machine-readable output")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="api-keys", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_target_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _add_target_options(common, argparse.SUPPRESS)
    create = commands.add_parser("create", parents=[common], help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True, help="tenant id: 1-64 of A-Z a-z 0-9 . _ -")
    commands.add_parser("list", parents=[common], help="key ids, tenants and statuses (never keys)")
    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id")
    rotate = commands.add_parser("rotate", parents=[common], help="new key for the same tenant, old one revoked")
    rotate.add_argument("key_id")
    commands.add_parser("rotate-secret", parents=[common],
                        help="a new stage secret (first deploy: creates it); every cache key changes: a cache flush")
    return parser


def open_key_store(args: argparse.Namespace, session=None, clients=None):
    """The store the arguments name; `clients` (cloudfront, cloudfront-keyvaluestore)
    instead of ones made from `session` (or the default session)."""
    if args.local:
        return LocalKeyStore(local_key_store_path(args.key_store_file))
    known = stages()
    if args.stage not in known:
        raise CliError(f"unknown stage {args.stage!r} (stages: {', '.join(sorted(known))})")
    cloudfront, kvs = clients or _clients(session)
    return deployed_key_store(args.stage, cloudfront, kvs)


def _print_new_key(outcome: dict, as_json: bool, out, err) -> None:
    if as_json:
        out.write(json.dumps(outcome) + "\n")
        return
    out.write(outcome["key"] + "\n")  # alone on stdout: KEY=$(bin/api-keys ... create ...)
    err.write(f"API key {outcome['key_id']} for tenant {outcome['tenant']}"
              + (f" (replaces {outcome['revoked_key_id']}, now revoked)" if "revoked_key_id" in outcome else "")
              + ". It is shown only this once: the store keeps only its SHA-256.\n")


def run(args: argparse.Namespace, store, out=None, err=None) -> int:
    """Carries out the parsed command against `store`; what the command prints."""
    out, err = out or sys.stdout, err or sys.stderr
    if args.command == "create":
        _print_new_key(create_key(store, args.tenant), args.json, out, err)
    elif args.command == "rotate":
        _print_new_key(rotate_key(store, args.key_id), args.json, out, err)
    elif args.command == "rotate-secret":
        outcome = rotate_stage_secret(store)
        if args.json:
            out.write(json.dumps(outcome) + "\n")
        else:
            out.write(("stage secret rotated: every cache key changes, stored answers are no longer served (a flush)"
                       if outcome["had_secret"] else "stage secret created: the edge caches from now on") + "\n")
    elif args.command == "revoke":
        outcome = revoke_key(store, args.key_id)
        if args.json:
            out.write(json.dumps(outcome) + "\n")
        else:
            out.write(f"{outcome['key_id']} ({outcome['tenant']}) "
                      + ("revoked" if outcome["changed"] else "was already revoked") + "\n")
    else:
        rows = list_keys(store)
        if args.json:
            out.write(json.dumps(rows) + "\n")
        elif not rows:
            err.write(f"no API keys in {store.describe()}\n")
        else:
            columns = (("KEY ID", "key_id"), ("TENANT", "tenant"), ("STATUS", "status"), ("CREATED", "created"),
                       ("KEY HASH", "key_hash_prefix"))
            widths = [max(len(title), *(len(str(r[field])) for r in rows)) for title, field in columns]
            out.write("  ".join(t.ljust(w) for (t, _), w in zip(columns, widths, strict=True)).rstrip() + "\n")
            for r in rows:
                out.write("  ".join(str(r[f]).ljust(w) for (_, f), w in zip(columns, widths, strict=True)).rstrip() + "\n")
    return 0


def main(argv: list[str] | None = None, session=None, clients=None) -> int:
    """The command; exit status 0, 2 (misuse, unknown stage or key, no store, no
    credentials) or 1 (AWS refused). Errors are one line on stderr."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.stage) == bool(args.local):
        parser.error("name the key store: --stage NAME or --local")
    if args.key_store_file and not args.local:
        parser.error("--key-store-file goes with --local")

    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return run(args, open_key_store(args, session, clients))
    except CliError as e:
        message, status = str(e), 2
    except NoCredentialsError:
        message, status = (f"no AWS credentials for stage {args.stage}: set AWS_PROFILE (or run `aws sso login`) "
                           "for the stage's account"), 2
    except ClientError as e:
        error = e.response.get("Error", {})
        message, status = f"{error.get('Code', 'error')}: {error.get('Message', str(e))}", 1
    except BotoCoreError as e:  # no awscrt (SigV4A), no network, ...
        message, status = str(e), 1
    sys.stderr.write(f"api-keys: error: {message}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
