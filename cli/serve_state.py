"""What a running `make serve` writes down for the commands beside it
(build/local/serve.json): where its S3 listens, and the model bucket and prefix it
published into, so that `bin/model-publish --local` needs no flags. The local run writes
it; the commands read it. Named here, once, so neither imports the other for it."""

from __future__ import annotations

import json
from pathlib import Path

SERVE_STATE_FILE = Path(__file__).resolve().parent.parent / "build" / "local" / "serve.json"


def write_serve_state(**state) -> None:
    SERVE_STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    SERVE_STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def read_serve_state() -> dict:
    """The running local run's record; OSError or ValueError when there is none."""
    return json.loads(SERVE_STATE_FILE.read_text())
