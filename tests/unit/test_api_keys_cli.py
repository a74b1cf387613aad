"""bin/api-keys: create, list, revoke, rotate.

The local key-store file is real (files in tmp_path), and the `--json create` path runs the
real bin/api-keys in a subprocess. Deployed stages use real boto3 clients whose AWS
boundary is botocore's Stubber (on both the `cloudfront` and the
`cloudfront-keyvaluestore` client), driven in-process through cli.api_keys.main with the
clients injected; nothing leaves the machine and no credentials are needed."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from cli.api_keys import KEY_PREFIX, LocalKeyStore, create_key, key_hash, key_store_name, main

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = ROOT / "bin" / "api-keys"
ARN = "arn:aws:cloudfront::111111111111:key-value-store/0f3c2a6e-1d2b-4c5d-8e9f-0a1b2c3d4e5f"  # dev's account


def _run_bin(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "INFERENCE_CACHE_LOCAL_KEY_STORE"}
    return subprocess.run([str(API_KEYS), *args], capture_output=True, text=True, env={**base, **(env or {})},
                          timeout=60)


def _main(*args: str, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(list(args), **kwargs)
    return status, out.getvalue(), err.getvalue()


def _local(path: Path, *args: str) -> tuple[int, str, str]:
    return _main("--local", "--key-store-file", str(path), *args)


def _stored(path: Path) -> dict[str, dict]:
    return {h: json.loads(v) for h, v in json.loads(path.read_text()).items()}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("api-keys: error: ")
    return lines[0]


# --------------------------------------------------------------------------- local key store


def test_create_json_through_bin_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "api-keys.json"
    done = _run_bin("--local", "--key-store-file", str(path), "--json", "create", "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert set(created) == {"key_id", "key", "tenant"} and created["tenant"] == "acme"
    assert created["key"].startswith(KEY_PREFIX) and len(created["key"]) >= len(KEY_PREFIX) + 43
    text = path.read_text()
    assert created["key"] not in text and created["key"] not in done.stderr
    record = _stored(path)[hashlib.sha256(created["key"].encode()).hexdigest()]
    assert record["key_id"] == created["key_id"] and record["tenant"] == "acme" and record["status"] == "active"
    assert datetime.datetime.strptime(record["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert len(json.loads(text)[key_hash(created["key"])]) < 1024  # a KeyValueStore value's limit


def test_plain_create_prints_only_the_key_on_stdout(tmp_path):
    done = _run_bin("create", "--tenant", "acme", "--local", "--key-store-file", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith(KEY_PREFIX) and "\n" not in key
    assert "shown only this once" in done.stderr and key not in done.stderr


def test_local_store_path_from_the_environment(tmp_path):
    path = tmp_path / "from-env" / "keys.json"
    done = _run_bin("--local", "create", "--tenant", "acme", env={"INFERENCE_CACHE_LOCAL_KEY_STORE": str(path)})
    assert done.returncode == 0, done.stderr
    assert len(_stored(path)) == 1


def test_list_shows_ids_tenants_statuses_but_never_keys_or_full_hashes(tmp_path):
    path = tmp_path / "s.json"
    store = LocalKeyStore(path)
    acme, beta = create_key(store, "acme"), create_key(store, "beta")
    assert _local(path, "revoke", beta["key_id"])[0] == 0
    status, out, _ = _local(path, "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "ID", "TENANT", "STATUS", "CREATED", "KEY", "HASH"]
    assert [line.split()[:3] for line in lines[1:]] == [[acme["key_id"], "acme", "active"],
                                                        [beta["key_id"], "beta", "revoked"]]
    for created in (acme, beta):
        assert created["key"] not in out and key_hash(created["key"]) not in out
        assert key_hash(created["key"])[:12] in out
    status, out, _ = _local(path, "--json", "list")
    assert [(r["key_id"], r["status"]) for r in json.loads(out)] == [(acme["key_id"], "active"), (beta["key_id"], "revoked")]


def test_revoke_keeps_the_record_marked_revoked_and_is_idempotent(tmp_path):
    path = tmp_path / "s.json"
    created = create_key(LocalKeyStore(path), "acme")
    status, out, _ = _local(path, "--json", "revoke", created["key_id"])
    assert status == 0
    assert json.loads(out) == {"key_id": created["key_id"], "tenant": "acme", "status": "revoked", "changed": True}
    record = _stored(path)[key_hash(created["key"])]
    assert record["status"] == "revoked" and record["revoked"] >= record["created"]
    before = path.read_text()
    status, out, _ = _local(path, "revoke", created["key_id"])
    assert status == 0 and "already revoked" in out and path.read_text() == before


def test_rotate_gives_the_same_tenant_a_new_key_and_revokes_the_old(tmp_path):
    path = tmp_path / "s.json"
    old = create_key(LocalKeyStore(path), "acme")
    status, out, err = _local(path, "--json", "rotate", old["key_id"])
    assert status == 0, err
    new = json.loads(out)
    assert new["tenant"] == "acme" and new["revoked_key_id"] == old["key_id"] and new["key"] != old["key"]
    stored = _stored(path)
    assert stored[key_hash(new["key"])] | {"created": ""} == {"key_id": new["key_id"], "tenant": "acme",
                                                                "status": "active", "created": ""}
    assert stored[key_hash(old["key"])]["status"] == "revoked"
    assert stored[key_hash(old["key"])]["replaced_by"] == new["key_id"]
    status, _, err = _local(path, "rotate", old["key_id"])  # a revoked key is not rotated again
    assert status == 2 and "revoked, not active" in _one_error_line(err)


@pytest.mark.parametrize("args, message", [
    (("revoke", "k_0000000000000000"), "no API key with id k_0000000000000000"),
    (("rotate", "k_0000000000000000"), "no API key with id"),
    (("create", "--tenant", "acme corp"), "tenant id 'acme corp' must be"),
    (("create", "--tenant=-x"), "must be"),
])
def test_local_errors_are_one_line_with_status_2(tmp_path, args, message):
    status, out, err = _local(tmp_path / "s.json", *args)
    assert status == 2 and out == "" and message in _one_error_line(err)


def test_a_corrupt_local_store_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{oops")
    status, _, err = _local(path, "create", "--tenant", "acme")
    assert status == 2 and "cannot read" in _one_error_line(err)
    assert path.read_text() == "{oops"


def test_concurrent_creates_lose_no_key(tmp_path):
    path = tmp_path / "s.json"
    procs = [subprocess.Popen([str(API_KEYS), "--local", "--key-store-file", str(path), "--json", "create", "--tenant",
                               f"t{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(5)]
    keys = [json.loads(p.communicate(timeout=60)[0])["key"] for p in procs]
    assert set(_stored(path)) == {key_hash(k) for k in keys}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # temp files renamed or removed


def test_either_a_stage_or_local_must_be_named(tmp_path):
    for args in (("list",), ("--stage", "dev", "--local", "list"), ("--stage", "dev", "list", "--local"),
                 ("--stage", "dev", "--key-store-file", "x.json", "list")):
        with pytest.raises(SystemExit) as exited, redirect_stderr(io.StringIO()):
            main(list(args))
        assert exited.value.code == 2


# --------------------------------------------------------------------------- deployed stage (Stubber)


@pytest.fixture
def aws(monkeypatch):
    """Real clients with throwaway credentials; every call is answered by a Stubber."""
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                    region_name="us-east-1")
    cloudfront = session.client("cloudfront")
    kvs = session.client("cloudfront-keyvaluestore")
    with Stubber(cloudfront) as cf_stub, Stubber(kvs) as kvs_stub:
        yield cloudfront, kvs, cf_stub, kvs_stub
        cf_stub.assert_no_pending_responses()
        kvs_stub.assert_no_pending_responses()


def _captured(client, operation: str) -> list[dict]:
    """The parameters of each `operation` call, as botocore builds the request from them."""
    calls: list[dict] = []
    client.meta.events.register(f"before-parameter-build.cloudfront-keyvaluestore.{operation}",
                                lambda params, **_: calls.append(dict(params)))
    return calls


def _store_found(cf_stub, stage="dev", arn=ARN):
    cf_stub.add_response("describe_key_value_store", {
        "ETag": "E2QWRUHEXAMPLE",
        "KeyValueStore": {"Name": key_store_name(stage), "Id": arn.rsplit("/", 1)[1], "Comment": "", "ARN": arn,
                          "Status": "READY", "LastModifiedTime": datetime.datetime(2026, 11, 1)},
    }, {"Name": key_store_name(stage)})


def _etag(kvs_stub, etag="KV-ETAG-1"):
    kvs_stub.add_response("describe_key_value_store", {
        "ItemCount": 1, "TotalSizeInBytes": 200, "KvsARN": ARN, "Created": datetime.datetime(2026, 11, 1),
        "ETag": etag}, {"KvsARN": ARN})


def _listing(kvs_stub, pages: list[dict[str, str]]):
    for i, page in enumerate(pages):
        response = {"Items": [{"Key": k, "Value": v} for k, v in page.items()]}
        if i + 1 < len(pages):
            response["NextToken"] = f"page-{i + 1}"
        params = {"KvsARN": ARN} if i == 0 else {"KvsARN": ARN, "NextToken": f"page-{i}"}
        kvs_stub.add_response("list_keys", response, params)


def _written(etag="KV-ETAG-2"):
    return {"ItemCount": 2, "TotalSizeInBytes": 400, "ETag": etag}


def _record(key_id, tenant, status="active"):
    return json.dumps({"key_id": key_id, "tenant": tenant, "status": status, "created": "2026-11-01T00:00:00Z"},
                      separators=(",", ":"))


def test_create_on_a_stage_puts_the_hash_with_the_store_etag(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    puts = _captured(kvs, "PutKey")
    _store_found(cf_stub)
    _etag(kvs_stub, "KV-ETAG-1")
    kvs_stub.add_response("put_key", _written(), {"KvsARN": ARN, "Key": ANY, "Value": ANY, "IfMatch": "KV-ETAG-1"})
    status, out, err = _main("--stage", "dev", "--json", "create", "--tenant", "acme", clients=(cloudfront, kvs))
    assert status == 0, err
    created = json.loads(out)
    (put,) = puts
    assert put["Key"] == hashlib.sha256(created["key"].encode()).hexdigest()
    assert json.loads(put["Value"])["tenant"] == "acme" and json.loads(put["Value"])["status"] == "active"
    assert created["key"] not in put["Value"]


def test_list_on_a_stage_reads_every_page(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    _store_found(cf_stub)
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme")}, {"b" * 64: _record("k_2", "beta", "revoked")}])
    status, out, _ = _main("--stage", "dev", "--json", "list", clients=(cloudfront, kvs))
    assert status == 0
    assert [(r["key_id"], r["tenant"], r["status"], r["key_hash_prefix"]) for r in json.loads(out)] == [
        ("k_1", "acme", "active", "a" * 12), ("k_2", "beta", "revoked", "b" * 12)]


def test_revoke_on_a_stage_rewrites_that_record(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    puts = _captured(kvs, "PutKey")
    _store_found(cf_stub)
    _etag(kvs_stub, "KV-ETAG-7")
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme"), "b" * 64: _record("k_2", "acme")}])
    kvs_stub.add_response("put_key", _written(), {"KvsARN": ARN, "Key": "b" * 64, "Value": ANY, "IfMatch": "KV-ETAG-7"})
    status, out, err = _main("--stage", "dev", "revoke", "k_2", clients=(cloudfront, kvs))
    assert status == 0, err
    assert out == "k_2 (acme) revoked\n"
    assert json.loads(puts[0]["Value"])["status"] == "revoked"


def test_rotate_on_a_stage_writes_new_key_and_revocation_in_one_update(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    updates = _captured(kvs, "UpdateKeys")
    _store_found(cf_stub)
    _etag(kvs_stub, "KV-ETAG-3")
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme")}])
    kvs_stub.add_response("update_keys", _written(), {"KvsARN": ARN, "IfMatch": "KV-ETAG-3", "Puts": ANY})
    status, out, err = _main("--stage", "dev", "--json", "rotate", "k_1", clients=(cloudfront, kvs))
    assert status == 0, err
    rotated = json.loads(out)
    written = {p["Key"]: json.loads(p["Value"]) for p in updates[0]["Puts"]}
    assert written["a" * 64]["status"] == "revoked" and written["a" * 64]["replaced_by"] == rotated["key_id"]
    assert written[key_hash(rotated["key"])]["tenant"] == "acme"
    assert written[key_hash(rotated["key"])]["status"] == "active"


def test_a_concurrent_write_is_retried_on_fresh_records(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    _store_found(cf_stub)
    _etag(kvs_stub, "KV-ETAG-1")
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme")}])
    kvs_stub.add_client_error("put_key", "ConflictException", "ETag mismatch", 409)
    _etag(kvs_stub, "KV-ETAG-2")
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme")}])
    kvs_stub.add_response("put_key", _written(), {"KvsARN": ARN, "Key": "a" * 64, "Value": ANY, "IfMatch": "KV-ETAG-2"})
    assert _main("--stage", "dev", "revoke", "k_1", clients=(cloudfront, kvs))[0] == 0


def test_missing_store_is_a_one_line_error(aws):
    cloudfront, kvs, cf_stub, _ = aws
    cf_stub.add_client_error("describe_key_value_store", "EntityNotFound", "The specified resource does not exist.",
                             404, expected_params={"Name": "inference-cache-dev-api-keys"})
    status, out, err = _main("--stage", "dev", "list", clients=(cloudfront, kvs))
    assert status == 2 and out == ""
    assert "no key store named inference-cache-dev-api-keys" in _one_error_line(err)


def test_store_deleted_behind_its_name_is_a_one_line_error(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    _store_found(cf_stub)
    kvs_stub.add_client_error("list_keys", "ResourceNotFoundException", "Resource not found", 404)
    status, _, err = _main("--stage", "dev", "list", clients=(cloudfront, kvs))
    assert status == 2 and "not found: was it deleted?" in _one_error_line(err)


def test_store_in_another_account_is_refused(aws):
    cloudfront, kvs, cf_stub, _ = aws
    _store_found(cf_stub, arn=ARN.replace("111111111111", "999999999999"))
    status, _, err = _main("--stage", "dev", "create", "--tenant", "acme", clients=(cloudfront, kvs))
    assert status == 2 and "found in account 999999999999, but stage dev lives in 111111111111" in _one_error_line(err)


def test_access_denied_is_one_line_with_status_1(aws):
    cloudfront, kvs, cf_stub, _ = aws
    cf_stub.add_client_error("describe_key_value_store", "AccessDenied", "User is not authorized", 403)
    status, _, err = _main("--stage", "dev", "list", clients=(cloudfront, kvs))
    assert status == 1 and "AccessDenied: User is not authorized" in _one_error_line(err)


def test_unknown_stage_is_a_one_line_error():
    status, out, err = _main("--stage", "nope", "list")
    assert status == 2 and out == ""
    assert "unknown stage 'nope' (stages: dev, prod, staging)" in _one_error_line(err)


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """An environment where botocore's credential chain finds nothing, and reaches no
    network on the way (the instance metadata service is off)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    env = {"AWS_CONFIG_FILE": str(tmp_path / "none-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_no_credentials_stops_before_any_client_or_request(no_credentials):
    session = boto3.session.Session()
    created, sent = [], []
    session.events.register("creating-client-class", lambda **kw: created.append(kw))
    session.events.register("before-send", lambda **kw: sent.append(kw))
    status, out, err = _main("--stage", "dev", "list", session=session)
    assert status == 2 and out == ""
    assert "no AWS credentials for stage dev" in _one_error_line(err)
    assert created == [] and sent == []


def test_no_credentials_through_bin(no_credentials, tmp_path):
    env = {"PATH": os.environ["PATH"], **no_credentials}
    done = subprocess.run([str(API_KEYS), "--stage", "dev", "create", "--tenant", "acme"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "no AWS credentials" in _one_error_line(done.stderr)



# --------------------------------------------------------------------------- the stage secret


def test_rotate_secret_creates_then_replaces_the_stage_secret_and_never_prints_it(tmp_path):
    path = tmp_path / "keys.json"
    assert _local(path, "create", "--tenant", "acme")[0] == 0
    status, out, _ = _local(path, "rotate-secret")
    assert status == 0 and "created" in out
    first = json.loads(path.read_text())["stage-secret"]
    assert len(first) == 43 and first not in out
    status, out, _ = _local(path, "--json", "rotate-secret")
    assert status == 0 and json.loads(out) == {"rotated": True, "had_secret": True}
    second = json.loads(path.read_text())["stage-secret"]
    assert second != first and second not in out
    # The secret is not an API key: list shows the one key, nothing unreadable.
    rows = json.loads(_local(path, "--json", "list")[1])
    assert [r["tenant"] for r in rows] == ["acme"]


def test_rotate_secret_on_a_stage_is_one_put_with_the_store_etag(aws):
    cloudfront, kvs, cf_stub, kvs_stub = aws
    puts = _captured(kvs, "PutKey")
    _store_found(cf_stub)
    _etag(kvs_stub, "KV-ETAG-9")
    _listing(kvs_stub, [{"a" * 64: _record("k_1", "acme"), "stage-secret": "old-secret"}])
    kvs_stub.add_response("put_key", _written(), {"KvsARN": ARN, "Key": "stage-secret", "Value": ANY, "IfMatch": "KV-ETAG-9"})
    status, out, err = _main("--stage", "dev", "--json", "rotate-secret", clients=(cloudfront, kvs))
    assert status == 0, err
    assert json.loads(out) == {"rotated": True, "had_secret": True}
    (put,) = puts
    assert put["Key"] == "stage-secret" and len(put["Value"]) == 43 and put["Value"] != "old-secret"
