"""Benchmark: bin/model-publish vs `aws s3 sync`, and manifest hashing vs sha256sum.

A synthetic model of 20 files (18 shards of 16 MiB, a 9 MiB tokenizer.json and a
config.json: about 297 MiB), made in a temp dir, published to a local S3 server
(`python -m local_run.s3`: moto, on 127.0.0.1) in four steps, each by both tools in the
same run: first publish, no change, a fresh checkout (same bytes, new mtimes), and one
shard changed in place with the same size and an older mtime.

Bytes sent are counted at the server: the request body bytes that reached it, the same
measure for both clients (uploads, plus the small XML bodies that complete multipart
uploads; a server-side copy sends none). "correct" says whether S3 then holds the
directory's current bytes (for model-publish: under the new version's prefix).

The AWS CLI v1 runs from its own venv, build/bench-awscli/ (created on first run with
pip, awscli==AWS_CLI_VERSION): its pinned botocore must not replace the project's.
Both tools use 8 MiB parts and 10 parallel requests (the AWS CLI's defaults).

Prints a table; asserts nothing. Run: .venv/bin/python bench/bench_model_publish.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_PUBLISH = ROOT / "bin" / "model-publish"
AWS_CLI_VENV = ROOT / "build" / "bench-awscli"
AWS_CLI_VERSION = "1.46.3"
MIB = 1 << 20
SHARDS, SHARD_BYTES = 18, 16 * MIB
BUCKET = "bench-models"
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


def make_model(root: Path) -> None:
    rng = random.Random(14)
    root.mkdir(parents=True)
    for i in range(1, SHARDS + 1):
        (root / f"model-{i:05d}-of-{SHARDS:05d}.safetensors").write_bytes(rng.randbytes(SHARD_BYTES))
    (root / "tokenizer.json").write_bytes(rng.randbytes(9 * MIB))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}))


def aws_cli() -> Path | None:
    aws = AWS_CLI_VENV / "bin" / "aws"
    if not aws.exists():
        print(f"installing awscli=={AWS_CLI_VERSION} into {AWS_CLI_VENV.relative_to(ROOT)} ...", flush=True)
        try:
            venv.create(AWS_CLI_VENV, with_pip=True, clear=True)
            subprocess.run(
                [
                    AWS_CLI_VENV / "bin" / "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    f"awscli=={AWS_CLI_VERSION}",
                ],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as e:
            print(f"no AWS CLI ({e}); the sync rows are left out")
            return None
    return aws


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "local_run.s3"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
        )
        self.url = self.proc.stdout.readline().strip()

    def _call(self, route: str, method: str = "GET") -> dict:
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/_local_s3/{route}", method=method)) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self._call("reset", "POST")

    def body_bytes(self) -> int:
        return self._call("stats")["body_bytes"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def timed(argv: list) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, the client's CPU seconds (user + system), and the result."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run([str(a) for a in argv], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), result


def digests(src: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(src.iterdir())}


def s3_digests(s3, prefix: str) -> dict[str, str]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", ()):
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix) :]] = hashlib.sha256(body).hexdigest()
    return out


def main() -> None:
    import boto3

    aws = aws_cli()
    server = Server()
    s3 = boto3.client(
        "s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )
    s3.create_bucket(Bucket=BUCKET)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        src = Path(tmp) / "model"
        make_model(src)
        total = sum(p.stat().st_size for p in src.iterdir())
        files = len(list(src.iterdir()))

        def publish(directory: Path, step: str) -> None:
            server.reset()
            argv = [
                MODEL_PUBLISH,
                directory,
                "--bucket",
                BUCKET,
                "--prefix",
                "models/bench/",
                "--endpoint-url",
                server.url,
            ]
            seconds, cpu, result = timed([*argv, "--json"])
            summary = json.loads(result.stdout)
            correct = s3_digests(s3, summary["prefix"]) == digests(directory)
            rows.append((step, "model-publish", seconds, cpu, server.body_bytes(), correct,
                         f"up {summary['uploaded_files']}, copied {summary['copied_files']}, skipped {summary['skipped_files']}"))  # fmt: skip

        def sync(directory: Path, step: str) -> None:
            if aws is None:
                return
            server.reset()
            seconds, cpu, result = timed([aws, "s3", "sync", directory, f"s3://{BUCKET}/sync/", "--endpoint-url", server.url, "--no-progress"])  # fmt: skip
            correct = s3_digests(s3, "sync/") == digests(directory)
            uploads = sum(1 for line in result.stdout.splitlines() if line.startswith("upload:"))
            rows.append((step, "aws s3 sync", seconds, cpu, server.body_bytes(), correct, f"up {uploads}"))

        def copy_all(directory: Path, step: str) -> None:
            """What it takes the AWS CLI to be correct here: send everything again."""
            if aws is None:
                return
            server.reset()
            seconds, cpu, result = timed([aws, "s3", "cp", "--recursive", directory, f"s3://{BUCKET}/sync/", "--endpoint-url", server.url, "--no-progress"])  # fmt: skip
            correct = s3_digests(s3, "sync/") == digests(directory)
            uploads = sum(1 for line in result.stdout.splitlines() if line.startswith("upload:"))
            rows.append((step, "aws s3 cp -r", seconds, cpu, server.body_bytes(), correct, f"up {uploads}"))

        for step, directory in (("first publish", src), ("no change", src)):
            publish(directory, step)
            sync(directory, step)
        checkout = Path(tmp) / "checkout"
        shutil.copytree(src, checkout, copy_function=shutil.copyfile)  # the same bytes, every mtime new
        publish(checkout, "fresh checkout")
        sync(checkout, "fresh checkout")
        shard = checkout / f"model-00007-of-{SHARDS:05d}.safetensors"
        data = bytearray(shard.read_bytes())
        data[SHARD_BYTES // 2] ^= 0xFF
        st = shard.stat()
        shard.write_bytes(bytes(data))
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns - 86_400 * 10**9))
        publish(checkout, "1 shard, same size, older mtime")
        sync(checkout, "1 shard, same size, older mtime")
        copy_all(checkout, "1 shard, same size, older mtime")

        hashing = hash_rows(src)

    server.stop()
    print(f"\nmodel: {files} files, {total / MIB:.0f} MiB; local S3 (moto) on 127.0.0.1; {os.cpu_count()} CPUs")
    print(f"{'step':34} {'tool':14} {'seconds':>8} {'client CPU s':>12} {'MiB sent':>9} {'correct':>8}  files")
    for step, tool, seconds, cpu, sent, correct, note in rows:
        print(
            f"{step:34} {tool:14} {seconds:8.2f} {cpu:12.2f} {sent / MIB:9.1f} {'yes' if correct else 'NO':>8}  {note}"
        )
    by = {(r[0], r[1]): r for r in rows}
    print("\nratio model-publish / AWS CLI (wall seconds; bytes sent):")
    for step in dict.fromkeys(r[0] for r in rows):
        mine = by.get((step, "model-publish"))
        for tool in ("aws s3 sync", "aws s3 cp -r"):
            theirs = by.get((step, tool))
            if mine and theirs:
                sent = f"{mine[4] / theirs[4]:.3f}" if theirs[4] else ("0 / 0" if not mine[4] else "inf")
                print(f"  {step:34} vs {tool:13} {mine[2] / theirs[2]:6.2f}x time   {sent} bytes")
    print(f"\nhashing {total / MIB:.0f} MiB (files in the page cache: CPU, not disk):")
    for name, seconds in hashing:
        print(f"  {name:52} {seconds:6.2f} s  {total / MIB / seconds:7.0f} MiB/s")


def hash_rows(src: Path) -> list[tuple[str, float]]:
    paths = sorted(src.iterdir())
    rows = []
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", *paths], check=True, capture_output=True)
    rows.append(("sha256sum (one process, sequential)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    subprocess.run(["xargs", "-P", str(os.cpu_count()), "-n", "1", "sha256sum"], input="\n".join(map(str, paths)).encode(), check=True, capture_output=True)  # fmt: skip
    rows.append((f"xargs -P {os.cpu_count()} sha256sum (one per file)", time.perf_counter() - t0))
    for workers in (1, None):
        code = (
            "import sys, time; from pathlib import Path; from cli.model_manifest import build_manifest\n"
            f"t0 = time.perf_counter(); build_manifest(Path(sys.argv[1]), workers={workers}); print(time.perf_counter() - t0)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(src)], env=ENV, check=True, capture_output=True, text=True
        ).stdout
        label = "1 thread" if workers else f"{min(8, (os.cpu_count() or 1) + 1)} threads, default"
        rows.append((f"cli.model_manifest build_manifest ({label})", float(out)))
    return rows


if __name__ == "__main__":
    main()
