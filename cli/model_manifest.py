"""A model directory's manifest: every file's relative path, size and SHA-256, and the
model version, a digest of that list.

The version is the first 16 hex digits of the SHA-256 of the canonical JSON of the
files list (sorted keys, compact separators): the same content always gives the same
version, and any change of a file's content, path or presence gives a new one. Nothing
time-dependent goes in (no mtime, no date), so a fresh checkout publishes as itself.

  python -m cli.model_manifest DIR    # prints the manifest (what version DIR would be)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_FORMAT = "model-manifest/1"
VERSION_HEX_DIGITS = 16
# Directories that are never model content: git's store, and the download metadata
# `huggingface-cli download --local-dir` leaves beside the files.
IGNORED_TOP_DIRS = frozenset((".git", ".cache"))
# Reads of 1 MiB: large enough that hashlib releases the GIL for most of the time, so
# threads hash files in parallel; small enough for a smooth progress bar.
READ_BYTES = 1 << 20


class ModelSourceError(Exception):
    """The model directory cannot be published as it is (a one-line message for the user)."""


class FileChangedError(ModelSourceError):
    """A file changed while it was hashed or uploaded: its hash would not describe it."""


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative, "/"-separated
    size: int
    sha256: str  # hex
    # When it was hashed (not part of the manifest): a later change is detectable.
    mtime_ns: int = field(default=0, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    files: tuple[ModelFile, ...]  # sorted by path
    # What the model's own files say about its size (config.settings.ModelArchitecture,
    # as a dict), when it has a config.json and safetensors: the GPU-fit check's facts.
    # Derived from the files, so not part of the version.
    architecture: dict | None = field(default=None, compare=False)

    @property
    def version(self) -> str:
        return model_version(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def as_dict(self) -> dict:
        doc = {"format": MANIFEST_FORMAT, "version": self.version, "files": [f.as_dict() for f in self.files]}
        if self.architecture is not None:
            doc["architecture"] = self.architecture
        return doc

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        doc = json.loads(raw)
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {doc.get('format')!r} is not {MANIFEST_FORMAT}")
        files = tuple(ModelFile(f["path"], int(f["size"]), f["sha256"]) for f in doc["files"])
        return cls(files, doc.get("architecture"))


def model_version(files) -> str:
    canonical = json.dumps([f.as_dict() for f in files], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:VERSION_HEX_DIGITS]


def list_model_files(src: Path) -> list[tuple[str, Path]]:
    """(relative path, absolute path) of every file under src, sorted; symlinks are
    followed (a Hugging Face cache snapshot is a directory of links to blobs)."""
    if not src.exists():
        raise ModelSourceError(f"{src}: no such directory")
    if not src.is_dir():
        raise ModelSourceError(f"{src}: not a directory")
    found = []
    for root, dirs, names in os.walk(src, followlinks=True):
        here = Path(root)
        if here == src:
            dirs[:] = [d for d in dirs if d not in IGNORED_TOP_DIRS]
        dirs.sort()
        for name in names:
            absolute = here / name
            if absolute.is_file():
                found.append((absolute.relative_to(src).as_posix(), absolute))
    if not found:
        raise ModelSourceError(f"{src}: no files to publish")
    return sorted(found)


def _stat_mark(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def hash_file(relative: str, path: Path, progress: Callable[[str, int], None] | None = None) -> ModelFile:
    """Streamed SHA-256. The file's size and mtime (ns) are read before and after: if
    either moved, the file was written while it was read and the digest describes no
    version of it. (Re-stat rather than hashing twice: one read of a 5 GB shard, and
    a writer always moves the mtime on the file systems a model is published from.)"""
    before = _stat_mark(path)
    digest = hashlib.sha256()
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    read = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            read += n
            if progress is not None:
                progress(relative, n)
    if read != before[0] or _stat_mark(path) != before:
        raise FileChangedError(f"{relative} changed while it was hashed; publish again once it is written")
    return ModelFile(relative, read, digest.hexdigest(), before[1])


def build_manifest(
    src: Path,
    workers: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    on_file: Callable[[ModelFile], None] | None = None,
) -> Manifest:
    """Hashes every file of src, in parallel across files (hashlib releases the GIL).
    progress(path, n) after each read of n bytes; on_file(file) once a file is hashed."""
    entries = list_model_files(src)
    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        # Largest first: the longest hash starts at once instead of finishing last.
        order = sorted(entries, key=lambda e: -e[1].stat().st_size)
        futures = {rel: pool.submit(hash_file, rel, path, progress) for rel, path in order}
        if on_file is not None:
            for future in futures.values():
                future.add_done_callback(lambda done: done.exception() or on_file(done.result()))
        files = tuple(futures[rel].result() for rel, _ in entries)
    return Manifest(files, model_architecture(src, [path for _, path in entries]))


def safetensors_parameters(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its header alone (8 bytes of
    little-endian length, then JSON: {name: {"dtype", "shape", "data_offsets"}})."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= 100 * 1024 * 1024:
            raise ModelSourceError(f"{path.name}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    return sum(math.prod(tensor["shape"]) for name, tensor in header.items() if name != "__metadata__")


def model_architecture(src: Path, files: list[Path]) -> dict | None:
    """ModelArchitecture of a model directory as a dict: its config.json and the parameters
    in its safetensors; None when it has no config.json or no safetensors, or a config
    this project cannot read (not a decoder of the families it knows)."""
    from config.settings import ModelArchitecture, SettingsError

    config_path = src / "config.json"
    shards = [path for path in files if path.suffix == ".safetensors"]
    if not config_path.is_file() or not shards:
        return None
    try:
        config = json.loads(config_path.read_text())
    except ValueError:
        return None
    if not isinstance(config, dict) or not all(key in config for key in ModelArchitecture.CONFIG_KEYS):
        return None
    # A decoder's config: its shards must be readable safetensors (a broken one fails the publish).
    parameters = sum(safetensors_parameters(p) for p in shards)
    try:
        return dataclasses.asdict(ModelArchitecture.from_config(config, parameters))
    except (TypeError, ValueError, SettingsError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m cli.model_manifest DIR", file=sys.stderr)
        return 2
    try:
        manifest = build_manifest(Path(args[0]))
    except ModelSourceError as e:
        print(f"model-manifest: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(manifest.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
