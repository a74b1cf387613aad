"""Publish a model directory to S3 as an immutable, content-addressed version.

  bin/model-publish SRC --stage NAME [--embeddings] [--pin]
  bin/model-publish SRC --bucket B --prefix P [--endpoint-url URL] [--local]
  options: --dry-run, --json, --concurrency N, --part-size-mib N

Layout under the base prefix P (e.g. models/llama-3.1-8b-instruct/):
  P{version}/...               the model directory's files, relative paths kept: the
                               S3Prefix the endpoint loads (it loads every object there)
  P_manifests/{version}.json   the manifest, written last: a version is published iff
                               its manifest exists, so a half-published one is never pinned

Each file is skipped when it is already under P{version}/ with the same SHA-256 (object
metadata `sha256`, written at upload: this is what makes an interrupted publish resume),
copied server-side when an earlier version holds the same content, and uploaded
otherwise (boto3's transfer manager: multipart, in parallel, every part checksummed
with SHA-256 so S3 verifies it). Exit status: 0 published (or nothing to do), 2 a clear
error (one line on stderr), 1 a transfer that failed (run again: it resumes).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cli.model_manifest import FileChangedError, Manifest, ModelFile, ModelSourceError, build_manifest, list_model_files
from cli.model_stage import STAGES_FILE, StageError, pin_model_version, stage_region, stage_target
from cli.serve_state import SERVE_STATE_FILE, read_serve_state

MANIFESTS_DIR = "_manifests/"
SHA256_METADATA = "sha256"
# Every part carries its SHA-256 and S3 refuses a part whose body does not match.
# (CRC64NVME full-object checksums would need awscrt; SHA-256 needs nothing more and,
# for single-part uploads, is our own manifest hash, so S3 checks the file we hashed.)
CHECKSUM_ALGORITHM = "SHA256"
DEFAULT_CONCURRENCY = 10
DEFAULT_PART_SIZE_MIB = 8  # the AWS CLI's; S3 allows 5 MiB..5 GiB and 10,000 parts
LOCAL_CREDENTIALS = ("local", "local")  # an S3-compatible local server checks no signature


class PublishError(Exception):
    """A clear, expected failure: one line for the user, exit status 2."""


class TransferFailed(Exception):
    """An upload or copy failed mid-way: exit status 1; the next run resumes."""


@dataclass
class Plan:
    version: str
    manifest_key: str
    version_prefix: str
    already_published: bool
    uploads: list[ModelFile] = field(default_factory=list)
    copies: list[tuple[ModelFile, str]] = field(default_factory=list)  # (file, source key)
    skips: list[ModelFile] = field(default_factory=list)

    def summary(self, bucket: str, dry_run: bool) -> dict:
        return {
            "version": self.version,
            "uploaded_files": len(self.uploads),
            "uploaded_bytes": sum(f.size for f in self.uploads),
            "skipped_files": len(self.skips),
            "copied_files": len(self.copies),
            "copied_bytes": sum(f.size for f, _ in self.copies),
            "bucket": bucket,
            "prefix": self.version_prefix,
            "manifest_key": self.manifest_key,
            "dry_run": dry_run,
        }


# --------------------------------------------------------------------------- output


class Reporter:
    """Progress on stderr: tqdm bars on a terminal, one plain line per file otherwise."""

    def __init__(self, quiet_stdout: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet_stdout = quiet_stdout  # --json: stdout carries the summary alone
        self._bar = None
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        print(line, file=sys.stderr if self.quiet_stdout else sys.stdout, flush=True)

    def start(self, what: str, total_bytes: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes, desc=what, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
            )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def file_done(self, verb: str, f: ModelFile) -> None:
        if self._bar is None:
            with self._lock:
                print(f"{verb} {f.path} ({_size(f.size)})", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --------------------------------------------------------------------------- S3


def s3_client(endpoint_url: str | None, region: str | None, concurrency: int, local: bool):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    if session.get_credentials() is None:
        if not local:
            raise PublishError(
                "no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        session = boto3.session.Session(
            aws_access_key_id=LOCAL_CREDENTIALS[0], aws_secret_access_key=LOCAL_CREDENTIALS[1]
        )
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=concurrency + 4,
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1", config=config
    )


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def check_bucket(client, bucket: str) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise PublishError(
            "no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from None
    except EndpointConnectionError as e:
        raise PublishError(f"cannot reach S3 at {e.kwargs.get('endpoint_url', '?')}") from None
    except ClientError as e:
        code = _error_code(e)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise PublishError(
                f"bucket {bucket} does not exist (deploy the stage's ModelStorage stack first)"
            ) from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise PublishError(f"access to bucket {bucket} denied for these credentials") from None
        raise PublishError(f"bucket {bucket}: {code or e}") from None


def _list_keys(client, bucket: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            sizes[obj["Key"]] = obj["Size"]
    return sizes


def plan_publish(client, bucket: str, base_prefix: str, manifest: Manifest, concurrency: int) -> Plan:
    """What moves: compares the manifest with the version prefix and earlier manifests."""
    version = manifest.version
    plan = Plan(version, f"{base_prefix}{MANIFESTS_DIR}{version}.json", f"{base_prefix}{version}/", False)
    manifests = _list_keys(client, bucket, f"{base_prefix}{MANIFESTS_DIR}")
    if plan.manifest_key in manifests:
        plan.already_published = True
        plan.skips = list(manifest.files)
        return plan

    # Resume: objects of this version already up, confirmed by their recorded SHA-256.
    present = _list_keys(client, bucket, plan.version_prefix)
    candidates = [f for f in manifest.files if present.get(plan.version_prefix + f.path) == f.size]

    def confirmed(f: ModelFile) -> bool:
        head = client.head_object(Bucket=bucket, Key=plan.version_prefix + f.path)
        return head.get("Metadata", {}).get(SHA256_METADATA) == f.sha256

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = {f.path for f, ok in zip(candidates, pool.map(confirmed, candidates), strict=True) if ok}

    # Earlier versions: content already in the bucket is copied server-side.
    earlier: dict[str, str] = {}
    for key in sorted(manifests):
        if not key.endswith(".json"):
            continue
        try:
            old = Manifest.from_json(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ValueError:
            continue  # not a manifest this tool wrote; ignore it
        old_prefix = f"{base_prefix}{old.version}/"
        for f in old.files:
            earlier.setdefault(f.sha256, old_prefix + f.path)

    for f in manifest.files:
        if f.path in done:
            plan.skips.append(f)
        elif f.sha256 in earlier:
            plan.copies.append((f, earlier[f.sha256]))
        else:
            plan.uploads.append(f)
    return plan


def _file_progress(reporter: Reporter, verb: str, f: ModelFile):
    """s3transfer subscriber: sent bytes to the progress bar (uploads only: a copy sends
    none), a line once the file is done."""
    from s3transfer.subscribers import BaseSubscriber

    class FileProgress(BaseSubscriber):
        def on_progress(self, bytes_transferred, **kwargs):
            if verb == "uploaded":
                reporter.advance(bytes_transferred)

        def on_done(self, future, **kwargs):
            try:
                future.result()
            except Exception:  # noqa: BLE001 - collected and reported by execute()
                return
            reporter.file_done(verb, f)

    return FileProgress()


def execute(client, bucket: str, src: Path, plan: Plan, concurrency: int, part_size: int, reporter: Reporter) -> None:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=concurrency,
        use_threads=True,
        preferred_transfer_client="classic",  # s3transfer: the same code on every machine
    )
    paths = dict(list_model_files(src))
    futures = []
    reporter.start("upload", sum(f.size for f in plan.uploads))
    try:
        with create_transfer_manager(client, config) as manager:
            for f, source_key in plan.copies:
                extra = {
                    "Metadata": {SHA256_METADATA: f.sha256},
                    "MetadataDirective": "REPLACE",
                    "ChecksumAlgorithm": CHECKSUM_ALGORITHM,
                }
                futures.append(("copy", f, manager.copy(
                    copy_source={"Bucket": bucket, "Key": source_key}, bucket=bucket, key=plan.version_prefix + f.path,
                    extra_args=extra, subscribers=[_file_progress(reporter, "copied", f)],
                )))  # fmt: skip
            for f in plan.uploads:
                extra = {"Metadata": {SHA256_METADATA: f.sha256}, "ChecksumAlgorithm": CHECKSUM_ALGORITHM}
                if f.size < part_size:
                    # One PUT: send the manifest's own SHA-256, so S3 stores exactly the bytes we hashed.
                    extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(f.sha256)).decode()
                futures.append(("upload", f, manager.upload(
                    str(paths[f.path]), bucket, plan.version_prefix + f.path,
                    extra_args=extra, subscribers=[_file_progress(reporter, "uploaded", f)],
                )))  # fmt: skip
            failures = []
            for verb, f, future in futures:
                try:
                    future.result()
                except Exception as e:  # noqa: BLE001 - collected, reported once
                    failures.append(f"{verb} {f.path}: {_error_code(e) or type(e).__name__}: {_one_line(e)}")
    finally:
        reporter.stop()
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise TransferFailed(f"{failures[0]}{more}; nothing was published, run again to resume")
    # A file written during its upload: S3 holds bytes the manifest does not describe.
    for f in plan.uploads:
        st = paths[f.path].stat()
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            client.delete_object(Bucket=bucket, Key=plan.version_prefix + f.path)
            raise FileChangedError(f"{f.path} changed while it was uploaded; publish again once it is written")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def write_manifest(client, bucket: str, plan: Plan, manifest: Manifest) -> None:
    from botocore.exceptions import ClientError

    try:
        client.put_object(
            Bucket=bucket, Key=plan.manifest_key, Body=manifest.to_json(), ContentType="application/json",
            ChecksumAlgorithm=CHECKSUM_ALGORITHM, IfNoneMatch="*",  # a published manifest is never overwritten
        )  # fmt: skip
    except ClientError as e:
        # Another publisher of the same content got there first: same version, same manifest.
        if _error_code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model-publish",
        description="Publish a model directory to S3, by content.",
        epilog=__doc__.split("\n\n")[1],
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", type=Path, help="the model directory (e.g. a Hugging Face snapshot)")
    parser.add_argument("--stage", help="publish to this stage's model bucket and prefix")
    parser.add_argument("--bucket", help="target bucket (instead of --stage)")
    parser.add_argument("--prefix", help="the model's base prefix, e.g. models/llama-3.1-8b-instruct/")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint instead of AWS")
    parser.add_argument(
        "--local",
        action="store_true",
        help="a local S3-compatible server: --endpoint-url, --bucket, --prefix, else the running make serve's",
    )
    parser.add_argument(
        "--embeddings",
        action="store_true",
        help="with --stage: the stage's embeddings model (its prefix; --pin writes its version), not the LLM",
    )
    parser.add_argument("--pin", action="store_true", help="with --stage: write the version into the stage settings")
    parser.add_argument("--dry-run", action="store_true", help="print what would move; move nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="parallel requests (default %(default)s)"
    )
    parser.add_argument(
        "--part-size-mib", type=int, default=DEFAULT_PART_SIZE_MIB, help="multipart part size (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.stage and args.local:
        parser.error("--local publishes to the local run's S3, not to a stage")
    if args.stage and (args.bucket or args.prefix):
        parser.error("give --stage, or --bucket and --prefix, not both")
    if not args.stage and not args.local and not (args.bucket and args.prefix):
        parser.error("give --stage NAME, or --bucket B and --prefix P")
    if args.local and not (args.endpoint_url and args.bucket and args.prefix):
        _fill_from_running_local_run(args, parser)
    if args.pin and not args.stage:
        parser.error("--pin needs --stage")
    if args.embeddings and not args.stage:
        parser.error("--embeddings needs --stage")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be 1..64")
    if not 5 <= args.part_size_mib <= 5120:
        parser.error("--part-size-mib must be 5..5120 (S3's part size limits)")
    return args


def _fill_from_running_local_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--local without a full target: the S3 endpoint, model bucket and prefix that a
    running `make serve` wrote down (build/local/serve.json)."""
    try:
        state = read_serve_state()
    except (OSError, ValueError):
        parser.error(f"--local: no running make serve found ({SERVE_STATE_FILE}); or give --endpoint-url, --bucket, --prefix")
    args.endpoint_url = args.endpoint_url or state["s3_endpoint_url"]
    args.bucket = args.bucket or state["model_bucket"]
    args.prefix = args.prefix or state["model_prefix"]


def _base_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix or ".." in prefix.split("/"):
        raise PublishError(f"prefix {prefix!r} must name a folder, e.g. models/my-model/")
    return prefix + "/"


def publish(args: argparse.Namespace) -> dict:
    reporter = Reporter(quiet_stdout=args.json)
    list_model_files(args.src)  # SRC missing or empty: fail before any network call
    region = None
    if args.stage:
        bucket, base_prefix = stage_target(args.stage, embeddings=args.embeddings)
        region = stage_region(args.stage)
    else:
        bucket, base_prefix = args.bucket, _base_prefix(args.prefix)
    client = s3_client(args.endpoint_url, region, args.concurrency, args.local)
    check_bucket(client, bucket)

    total = sum(path.stat().st_size for _, path in list_model_files(args.src))
    reporter.start("hash", total)
    try:
        manifest = build_manifest(
            args.src, progress=lambda _path, n: reporter.advance(n), on_file=lambda f: reporter.file_done("hashed", f)
        )
    finally:
        reporter.stop()
    if not reporter.tty:
        reporter.say(f"hashed {len(manifest.files)} files ({_size(manifest.total_bytes)})")
    plan = plan_publish(client, bucket, base_prefix, manifest, args.concurrency)
    summary = plan.summary(bucket, args.dry_run)

    if args.dry_run:
        for f in plan.uploads:
            reporter.say(f"would upload {f.path} ({_size(f.size)})")
        for f, source in plan.copies:
            reporter.say(f"would copy   {f.path} from {source} (server-side, 0 bytes sent)")
        reporter.say(
            f"dry run: version {plan.version}: {summary['uploaded_files']} files to upload "
            f"({summary['uploaded_bytes']} bytes), {summary['copied_files']} to copy, {summary['skipped_files']} already there"
        )
        return summary

    if not plan.already_published:
        execute(client, bucket, args.src, plan, args.concurrency, args.part_size_mib << 20, reporter)
        write_manifest(client, bucket, plan, manifest)
    reporter.say(
        f"version {plan.version}: uploaded {summary['uploaded_files']} files ({_size(summary['uploaded_bytes'])}), "
        f"copied {summary['copied_files']} server-side, skipped {summary['skipped_files']} already there"
    )
    reporter.say(f"model prefix: s3://{bucket}/{plan.version_prefix}")
    if args.pin:
        changed = pin_model_version(STAGES_FILE, args.stage, plan.version, embeddings=args.embeddings)
        summary["pinned"] = args.stage
        which = "embeddings " if args.embeddings else ""
        reporter.say(
            f"{'pinned' if changed else 'already pinned'}: stage {args.stage} {which}model_version={plan.version!r} "
            f"in {STAGES_FILE.name}"
        )
    else:
        reporter.say(
            f'put it in the stage settings: model_version="{plan.version}" (or run again with --stage NAME --pin)'
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = publish(args)
    except (PublishError, ModelSourceError, StageError) as e:
        print(f"model-publish: {e}", file=sys.stderr)
        return 2
    except TransferFailed as e:
        print(f"model-publish: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("model-publish: interrupted; nothing was published, run again to resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
