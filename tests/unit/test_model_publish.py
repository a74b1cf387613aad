"""bin/model-publish against a real S3 server on 127.0.0.1 (moto's, behind local_run.s3,
which adds the body checksum checks S3 makes and moto does not): what moves, what is
skipped, what is copied server-side, resume after a kill, refused corruption, the
version and the cache key, the CLI's output and its errors. Offline, fake credentials."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import model_publish
from cli.model_manifest import FileChangedError, Manifest, build_manifest, list_model_files
from cli.model_stage import STAGES_FILE, pin_model_version, stage_target
from config.stages import STAGES
from lambdas import cache_decision
from lambdas.contract import CHAT_ROUTE
from local_run.s3 import LocalS3

ROOT = Path(__file__).resolve().parents[2]
MODEL_PUBLISH = ROOT / "bin" / "model-publish"
PREFIX = "models/test-model/"
MIB = 1 << 20
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@pytest.fixture(scope="session")
def s3_server():
    with LocalS3() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch):
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(s3_server):
    return boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")


@pytest.fixture
def bucket(s3, s3_server):
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3_server.checks.reset()
    return name


def write_model(root: Path, seed: int = 1) -> Path:
    """A small model: one multipart-sized shard (6 MiB, parts of 5 MiB), three small
    shards, config and tokenizer files, one in a subfolder."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"model-00001-of-00004.safetensors": 6 * MIB + 123}
    sizes.update({f"model-0000{i}-of-00004.safetensors": 200_000 + i for i in (2, 3, 4)})
    for name, size in sizes.items():
        (root / name).write_bytes(rng.randbytes(size))
    (root / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    (root / "generation_config.json").write_text('{"temperature": 0.6}\n')
    (root / "tokenizer.json").write_bytes(rng.randbytes(40_000))
    (root / "original").mkdir(exist_ok=True)
    (root / "original" / "params.json").write_text('{"dim": 4096}\n')
    return root


def model_files(root: Path) -> dict[str, bytes]:
    return {rel: path.read_bytes() for rel, path in list_model_files(root)}


def publish(s3_server, bucket, src, *extra, capsys=None) -> dict:
    argv = [str(src), "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_server.url, "--part-size-mib", "5"]
    code = model_publish.main([*argv, "--json", *extra])
    out = capsys.readouterr().out if capsys else ""
    assert code == 0
    return json.loads(out)


def keys_under(s3, bucket, prefix) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def stored_manifest(s3, bucket, version) -> Manifest:
    return Manifest.from_json(s3.get_object(Bucket=bucket, Key=f"{PREFIX}_manifests/{version}.json")["Body"].read())


def assert_version_holds(s3, bucket, version, files: dict[str, bytes]) -> None:
    """The version prefix holds exactly these files, bytes and metadata sha256 alike,
    and its manifest lists exactly them."""
    prefix = f"{PREFIX}{version}/"
    assert set(keys_under(s3, bucket, prefix)) == {prefix + rel for rel in files}
    for rel, data in files.items():
        obj = s3.get_object(Bucket=bucket, Key=prefix + rel)
        assert obj["Body"].read() == data, rel
        assert obj["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest(), rel
    manifest = stored_manifest(s3, bucket, version)
    assert manifest.version == version
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()
    }


# --------------------------------------------------------------------------- publishing


def test_first_publish_uploads_every_file_and_writes_the_manifest(s3_server, s3, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    files = model_files(src)
    summary = publish(s3_server, bucket, src, capsys=capsys)

    assert summary["version"] == build_manifest(src).version
    assert (summary["uploaded_files"], summary["copied_files"], summary["skipped_files"]) == (len(files), 0, 0)
    assert summary["uploaded_bytes"] == sum(map(len, files.values()))
    assert_version_holds(s3, bucket, summary["version"], files)
    # Only the model's files are under the loaded prefix; the manifest is beside it.
    assert set(keys_under(s3, bucket, PREFIX)) - set(keys_under(s3, bucket, summary["prefix"])) == {
        summary["manifest_key"]
    }


def test_second_publish_of_the_same_directory_moves_nothing(s3_server, s3, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    first = publish(s3_server, bucket, src, capsys=capsys)
    s3_server.checks.reset()

    again = publish(s3_server, bucket, src, capsys=capsys)

    assert again["version"] == first["version"]
    assert (again["uploaded_files"], again["uploaded_bytes"], again["copied_files"]) == (0, 0, 0)
    assert again["skipped_files"] == len(model_files(src))
    stats = s3_server.checks.stats()
    assert stats["body_bytes"] == 0 and "PUT" not in stats["requests"] and "POST" not in stats["requests"]


def test_fresh_checkout_with_new_mtimes_is_the_same_version(s3_server, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    first = publish(s3_server, bucket, src, capsys=capsys)
    checkout = tmp_path / "checkout"
    shutil.copytree(src, checkout, copy_function=shutil.copyfile)  # new mtimes: what `aws s3 sync` re-uploads
    s3_server.checks.reset()

    again = publish(s3_server, bucket, checkout, capsys=capsys)

    assert again["version"] == first["version"] and again["uploaded_bytes"] == 0
    assert s3_server.checks.stats()["body_bytes"] == 0


@pytest.mark.parametrize("shard", ["model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors"])
def test_one_shard_changed_same_size_older_mtime_moves_exactly_that_file(
    s3_server, s3, bucket, tmp_path, capsys, shard
):
    src = write_model(tmp_path / "model")
    original = model_files(src)
    first = publish(s3_server, bucket, src, capsys=capsys)
    path = src / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 86_400 * 10**9))  # older than before: sync would miss it
    assert path.stat().st_size == stat.st_size
    s3_server.checks.reset()

    second = publish(s3_server, bucket, src, capsys=capsys)

    files = model_files(src)
    assert second["version"] != first["version"]
    assert (second["uploaded_files"], second["uploaded_bytes"]) == (1, len(data))
    assert (second["copied_files"], second["skipped_files"]) == (len(files) - 1, 0)
    # Bytes that reached S3: the shard and the new manifest, plus the few hundred bytes of
    # XML that complete a multipart upload or copy; a copy sends no file bytes.
    manifest_bytes = stored_manifest(s3, bucket, second["version"]).to_json()
    overhead = s3_server.checks.stats()["body_bytes"] - len(data) - len(manifest_bytes)
    assert 0 <= overhead < 4096
    assert_version_holds(s3, bucket, second["version"], files)
    assert_version_holds(s3, bucket, first["version"], original)  # the old version is untouched


def test_added_and_deleted_files_the_manifest_follows_the_directory(s3_server, s3, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    first = publish(s3_server, bucket, src, capsys=capsys)
    (src / "generation_config.json").unlink()
    (src / "original" / "params.json").unlink()
    (src / "special_tokens_map.json").write_text('{"bos_token": "<s>"}\n')
    (src / "original" / "tokenizer.model").write_bytes(b"\x00" * 1000)

    second = publish(s3_server, bucket, src, capsys=capsys)

    files = model_files(src)
    assert second["version"] != first["version"]
    assert (second["uploaded_files"], second["copied_files"]) == (2, len(files) - 2)
    assert_version_holds(s3, bucket, second["version"], files)


def test_interrupted_publish_resumes_and_the_manifest_comes_last(s3_server, s3, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    files = model_files(src)
    version = build_manifest(src).version
    # The server lets 3 objects through, then holds every write: the publish stalls at a
    # known point, and is killed there.
    s3_server.checks.hold_writes_after(3)
    env = {**os.environ, **FAKE_ENV}
    argv = [str(MODEL_PUBLISH), str(src), "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_server.url]
    proc = subprocess.Popen(
        [*argv, "--concurrency", "1", "--part-size-mib", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert s3_server.checks.held.wait(60), proc.stderr.read1() if proc.poll() is not None else "never held"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        s3_server.checks.release()
        if proc.poll() is None:
            proc.kill()

    up = keys_under(s3, bucket, f"{PREFIX}{version}/")
    assert len(up) == 3
    assert keys_under(s3, bucket, f"{PREFIX}_manifests/") == {}  # not published: nothing may pin it

    resumed = publish(s3_server, bucket, src, capsys=capsys)

    assert resumed["version"] == version
    assert (resumed["skipped_files"], resumed["uploaded_files"]) == (3, len(files) - 3)
    already_up = {key.removeprefix(f"{PREFIX}{version}/") for key in up}
    assert resumed["uploaded_bytes"] == sum(len(data) for rel, data in files.items() if rel not in already_up)
    assert_version_holds(s3, bucket, version, files)


def test_an_object_with_the_right_size_but_another_sha256_is_not_skipped(s3_server, s3, bucket, tmp_path, capsys):
    src = write_model(tmp_path / "model")
    version = build_manifest(src).version
    stale = f"{PREFIX}{version}/config.json"
    size = (src / "config.json").stat().st_size
    s3.put_object(Bucket=bucket, Key=stale, Body=b"x" * size, Metadata={"sha256": "0" * 64})

    summary = publish(s3_server, bucket, src, capsys=capsys)

    assert summary["skipped_files"] == 0
    assert_version_holds(s3, bucket, version, model_files(src))


# --------------------------------------------------------------------------- checksums


def _plan(s3, bucket, src):
    manifest = build_manifest(src)
    return manifest, model_publish.plan_publish(s3, bucket, PREFIX, manifest, concurrency=2)


def _reporter():
    return model_publish.Reporter(quiet_stdout=True)


def test_every_part_carries_a_sha256_and_a_corrupted_part_is_refused(s3_server, s3, bucket, tmp_path):
    src = write_model(tmp_path / "model")
    manifest, plan = _plan(s3, bucket, src)
    sent_parts = []
    first_part_sent = threading.Event()

    def corrupt_second_part(request, **kwargs):
        sent_parts.append(dict(request.headers))
        if "partNumber=1" in request.url:
            first_part_sent.set()
        if "partNumber=2" in request.url:
            # Parts go out two at a time: the corrupted one waits for the first to be on its
            # way, or a fast refusal could cancel the first before it is sent at all.
            first_part_sent.wait(10)
            body = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
            request.body = bytes([body[0] ^ 0xFF]) + body[1:]  # after botocore computed its checksum

    s3.meta.events.register("before-send.s3.UploadPart", corrupt_second_part)
    with pytest.raises(model_publish.TransferFailed, match="BadDigest"):
        model_publish.execute(s3, bucket, src, plan, 2, 5 * MIB, _reporter())

    assert len(sent_parts) >= 2 and all(h.get("x-amz-checksum-sha256") for h in sent_parts)
    assert s3_server.checks.stats()["refused_checksums"] >= 1
    assert f"{plan.version_prefix}model-00001-of-00004.safetensors" not in keys_under(s3, bucket, plan.version_prefix)


def test_a_file_rewritten_between_hash_and_upload_is_refused_by_s3(s3_server, s3, bucket, tmp_path):
    src = write_model(tmp_path / "model")
    manifest, plan = _plan(s3, bucket, src)
    path = src / "tokenizer.json"
    path.write_bytes(b"?" * path.stat().st_size)  # same size: only the content says so

    with pytest.raises(model_publish.TransferFailed, match="BadDigest"):
        model_publish.execute(s3, bucket, src, plan, 2, 5 * MIB, _reporter())

    assert f"{plan.version_prefix}tokenizer.json" not in keys_under(s3, bucket, plan.version_prefix)


def test_a_file_changing_while_hashed_is_an_error(tmp_path):
    src = write_model(tmp_path / "model")
    target = src / "model-00001-of-00004.safetensors"

    def append_once(path, _n, done=[]):  # noqa: B006 - one append, on the first read
        if path == target.name and not done:
            done.append(1)
            with open(target, "ab") as f:
                f.write(b"more")

    with pytest.raises(FileChangedError, match="model-00001-of-00004.safetensors changed while it was hashed"):
        build_manifest(src, progress=append_once)


# --------------------------------------------------------------------------- version


def _content_version(files: dict[str, bytes]) -> str:
    with tempfile.TemporaryDirectory() as d:
        for rel, data in files.items():
            (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(d) / rel).write_bytes(data)
        return build_manifest(Path(d)).version


_MUTATION = st.tuples(st.sampled_from(["flip", "same", "touch", "add", "delete", "rename"]), st.integers(0, 10**6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MUTATION, min_size=1, max_size=4))
def test_the_version_changes_exactly_when_content_changes(mutations):
    base = {"config.json": b'{"a": 1}', "model.safetensors": bytes(range(256)) * 40, "tok/tokenizer.json": b"tok"}
    files = dict(base)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        before = build_manifest(root).version
        for op, n in mutations:
            names = sorted(files)
            rel = names[n % len(names)] if names else None
            if op == "flip" and rel and files[rel]:
                data = bytearray(files[rel])
                data[n % len(data)] ^= 1 + n % 255
                files[rel] = bytes(data)
            elif op == "same" and rel:  # rewritten with the same bytes: not a change
                pass
            elif op == "touch" and rel:
                os.utime(root / rel, ns=(n, n))
                continue
            elif op == "add":
                rel = f"extra-{n}.bin"
                files[rel] = n.to_bytes(4, "big")
            elif op == "delete" and len(files) > 1:
                (root / rel).unlink()
                del files[rel]
                continue
            elif op == "rename" and rel:
                files[f"renamed-{n}"] = files.pop(rel)
                (root / rel).unlink()
                rel = f"renamed-{n}"
            if rel in files:
                (root / rel).write_bytes(files[rel])
        after = build_manifest(root).version
    assert (after == before) == (files == base)
    assert after == _content_version(files)  # anywhere, any mtime: a function of content alone


def test_the_cache_key_follows_the_model_version(tmp_path):
    """A version published from a changed file is a new cache: the same request keys apart."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    old_version = build_manifest(model).version
    (model / "config.json").write_text('{"a": 2}')
    new_version = build_manifest(model).version
    assert old_version != new_version
    dev = STAGES["dev"].edge_cache_settings()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode()
    headers = {"content-type": "application/json"}
    old = cache_decision.decide(CHAT_ROUTE, headers, body, dev._replace(model_version=old_version))
    new = cache_decision.decide(CHAT_ROUTE, headers, body, dev._replace(model_version=new_version))
    assert old.cacheable and new.cacheable
    assert old.key != new.key


# --------------------------------------------------------------------------- CLI


def run_cli(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MODEL_PUBLISH), *map(str, argv)], env=env or {**os.environ, **FAKE_ENV}, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_json_summary_shape(s3_server, bucket, tmp_path):
    src = write_model(tmp_path / "model")
    result = run_cli(src, "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_server.url, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the one object; progress lines go to stderr
    for name, kind in (("version", str), ("uploaded_files", int), ("uploaded_bytes", int), ("skipped_files", int)):
        assert isinstance(summary[name], kind)
    assert len(summary["version"]) == 16 and int(summary["version"], 16) >= 0
    assert summary["manifest_key"] == f"{PREFIX}_manifests/{summary['version']}.json"
    assert summary["prefix"] == f"{PREFIX}{summary['version']}/"
    assert "hashed" in result.stderr  # plain progress lines when not on a terminal


def test_dry_run_moves_nothing_and_says_how_many_bytes(s3_server, s3, bucket, tmp_path):
    src = write_model(tmp_path / "model")
    total = sum(map(len, model_files(src).values()))
    result = run_cli(src, "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_server.url, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"({total} bytes)" in result.stdout and "would upload model-00001-of-00004.safetensors" in result.stdout
    assert keys_under(s3, bucket, PREFIX) == {}
    assert s3_server.checks.stats()["body_bytes"] == 0


def test_local_needs_no_credentials(s3_server, s3, bucket, tmp_path):
    src = write_model(tmp_path / "model")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    result = run_cli(
        src, "--local", "--endpoint-url", s3_server.url, "--bucket", bucket, "--prefix", PREFIX, "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["uploaded_files"] == len(model_files(src))


def _clear_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_clear_error_src_missing(tmp_path):
    _clear_error(run_cli(tmp_path / "nope", "--bucket", "b-models", "--prefix", PREFIX), "no such directory")


def test_clear_error_src_empty(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _clear_error(run_cli(tmp_path / "empty", "--bucket", "b-models", "--prefix", PREFIX), "no files to publish")


def test_clear_error_no_credentials(s3_server, tmp_path):
    src = write_model(tmp_path / "model")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
    }  # an empty environment
    result = run_cli(src, "--bucket", "b-models", "--prefix", PREFIX, "--endpoint-url", s3_server.url, env=env)
    _clear_error(result, "no AWS credentials found")


def test_clear_error_bucket_missing(s3_server, tmp_path):
    src = write_model(tmp_path / "model")
    result = run_cli(src, "--bucket", "no-such-bucket-here", "--prefix", PREFIX, "--endpoint-url", s3_server.url)
    _clear_error(result, "bucket no-such-bucket-here does not exist")


def test_clear_error_unknown_stage(tmp_path):
    src = write_model(tmp_path / "model")
    _clear_error(run_cli(src, "--stage", "nope"), "unknown stage 'nope'")


def test_usage_errors_exit_2(tmp_path):
    for argv in ([tmp_path], [tmp_path, "--bucket", "b"], [tmp_path, "--bucket", "b", "--prefix", "p", "--pin"]):
        assert run_cli(*argv).returncode == 2


# --------------------------------------------------------------------------- stages


def test_stage_target_is_the_stage_bucket_and_the_unversioned_prefix():
    from config.stages import stage

    s = stage("prod")
    bucket, base = stage_target("prod")
    assert bucket == f"inference-cache-prod-models-{s.account}-{s.home_region}"
    assert s.model.s3_prefix.startswith(base) and base.endswith("/") and s.model.s3_prefix != base
    assert base == "models/llama-3.1-8b-instruct/"


def _pinned_copy(tmp_path, stage: str, version: str, **kwargs):
    """A copy of config/stages.py with `version` pinned for `stage`: (the copy, its lines
    after, the (before, after) pairs of the lines that changed)."""
    original = STAGES_FILE.read_bytes()
    copy = tmp_path / "stages.py"
    copy.write_bytes(original)
    assert pin_model_version(copy, stage, version, **kwargs) is True
    before, after = original.decode().splitlines(), copy.read_text().splitlines()
    assert STAGES_FILE.read_bytes() == original
    return copy, after, [(a, b) for a, b in zip(before, after, strict=True) if a != b]


def test_pin_edits_only_that_stages_block(tmp_path):
    copy, after, changed = _pinned_copy(tmp_path, "staging", "0123456789abcdef")
    assert [b.strip() for _, b in changed] == [
        'model_version="0123456789abcdef",',
        's3_prefix="models/llama-3.1-8b-instruct/0123456789abcdef/",',
    ]
    staging = after.index('            name="staging",')
    assert all(staging < after.index(b) < after.index('            name="prod",') for _, b in changed)
    assert pin_model_version(copy, "staging", "0123456789abcdef") is False  # already pinned


def test_pin_embeddings_edits_only_that_stages_embeddings_model(tmp_path):
    copy, after, changed = _pinned_copy(tmp_path, "prod", "fedcba9876543210", embeddings=True)
    assert [b.strip() for _, b in changed] == [
        'model_version="fedcba9876543210",',
        's3_prefix="models/mxbai-embed-large-v1/fedcba9876543210/",',
    ]
    prod = after.index('            name="prod",')
    assert all(prod < after.index(b) and after.index(b) > after.index("            embeddings=EmbeddingsSettings(", prod)
               for _, b in changed)
    # The LLM's version in the same stage is untouched, and pinning it leaves the embeddings one alone.
    assert pin_model_version(copy, "prod", "0123456789abcdef") is True
    assert 'model_version="fedcba9876543210",' in copy.read_text()
    assert pin_model_version(copy, "prod", "fedcba9876543210", embeddings=True) is False


def test_embeddings_target_is_the_embeddings_prefix():
    assert stage_target("dev", embeddings=True)[1] == "models/all-minilm-l6-v2/"
    assert stage_target("prod", embeddings=True)[1] == "models/mxbai-embed-large-v1/"


def test_publish_with_stage_and_pin(s3_server, s3, tmp_path, monkeypatch, capsys):
    bucket, _ = stage_target("dev")
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    copy = tmp_path / "stages.py"
    copy.write_bytes(STAGES_FILE.read_bytes())
    monkeypatch.setattr(model_publish, "STAGES_FILE", copy)  # the real settings file stays as it is
    src = write_model(tmp_path / "model", seed=7)

    code = model_publish.main([str(src), "--stage", "dev", "--endpoint-url", s3_server.url, "--pin", "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["pinned"] == "dev"
    assert summary["prefix"] == f"models/llama-3.1-8b-instruct/{summary['version']}/"
    assert f'model_version="{summary["version"]}"' in copy.read_text()


def test_model_manifest_module_prints_the_version_a_directory_would_get(tmp_path):
    src = write_model(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "cli.model_manifest", str(src)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["format"] == "model-manifest/1" and manifest["version"] == build_manifest(src).version
    assert [f["path"] for f in manifest["files"]] == sorted(model_files(src))


def test_local_without_a_target_publishes_to_the_running_local_run(tmp_path, monkeypatch):
    """`bin/model-publish --local DIR` finds the S3 endpoint, bucket and prefix that a running
    `make serve` wrote down; without one it says so."""
    from cli import serve_state

    state = tmp_path / "serve.json"
    monkeypatch.setattr(serve_state, "SERVE_STATE_FILE", state)
    with pytest.raises(SystemExit):
        model_publish.parse_args([str(tmp_path), "--local"])
    state.write_text(json.dumps({"s3_endpoint_url": "http://127.0.0.1:9", "model_bucket": "b", "model_prefix": "models/m/"}))
    args = model_publish.parse_args([str(tmp_path), "--local"])
    assert (args.endpoint_url, args.bucket, args.prefix) == ("http://127.0.0.1:9", "b", "models/m/")


def test_publish_embeddings_with_stage_and_pin(s3_server, s3, tmp_path, monkeypatch, capsys):
    bucket, _ = stage_target("dev")
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    copy = tmp_path / "stages.py"
    copy.write_bytes(STAGES_FILE.read_bytes())
    monkeypatch.setattr(model_publish, "STAGES_FILE", copy)
    src = write_model(tmp_path / "model", seed=11)

    code = model_publish.main([str(src), "--stage", "dev", "--embeddings", "--endpoint-url", s3_server.url, "--pin", "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["prefix"] == f"models/all-minilm-l6-v2/{summary['version']}/"
    text = copy.read_text()
    assert f's3_prefix="models/all-minilm-l6-v2/{summary["version"]}/"' in text
    assert 's3_prefix="models/llama-3.1-8b-instruct/2026-11-01/"' in text  # dev's LLM pin is untouched


def test_embeddings_needs_a_stage(tmp_path):
    src = write_model(tmp_path / "model")
    assert run_cli(src, "--bucket", "b", "--prefix", "p/", "--embeddings").returncode == 2
