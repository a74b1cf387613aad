"""stdout of the local run's processes (service_processes.LineAtomicWriter, and the front's
live_dashboard.EmfTap built on it): the origin adapter's threads print log lines and EMF
records at once, and `print` writes a line and its newline apart. A line cut by another
thread's line is an EMF record the live dashboard never sees (CloudWatch Logs would have
had each as an event of its own)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

from local_run.live_dashboard import EmfTap
from local_run.process import ROOT
from local_run.service_processes import LineAtomicWriter


class _Recorded:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:  # uvicorn's log setup asks
        return False


def _while_a_line_is_half_written(stream) -> None:
    """Thread A writes half a line; thread B prints a whole one; A ends its line."""
    half_written, b_done = threading.Event(), threading.Event()

    def a() -> None:
        stream.write('{"_aws": {}, "a": 1}')
        half_written.set()
        b_done.wait(5)
        stream.write("\n")

    def b() -> None:
        half_written.wait(5)
        print('{"message": "answered"}', file=stream)
        b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_a_line_is_written_whole_while_another_thread_prints():
    recorded = _Recorded()
    _while_a_line_is_half_written(LineAtomicWriter(recorded))
    assert "".join(recorded.writes).splitlines() == ['{"message": "answered"}', '{"_aws": {}, "a": 1}']
    assert all(w.endswith("\n") for w in recorded.writes)  # whole lines only reach the stream


def test_the_front_takes_the_record_whole_while_another_thread_prints():
    """The front's stdout (live_dashboard.EmfTap, the writer that also takes EMF records
    off): the record written in two parts still reaches the dashboard, the other line the
    stream."""
    recorded, records = _Recorded(), []
    _while_a_line_is_half_written(EmfTap(recorded, records.append))
    assert records == [{"_aws": {}, "a": 1}]
    assert recorded.writes == ['{"message": "answered"}\n']


def test_without_it_the_lines_interleave():
    """What the writer prevents, shown on the bare stream: the EMF record's line is cut."""
    recorded = _Recorded()
    _while_a_line_is_half_written(recorded)
    assert "".join(recorded.writes).splitlines()[0] == '{"_aws": {}, "a": 1}{"message": "answered"}'


_PRINTING_THREADS = """
import json, logging, sys, threading
from local_run.service_processes import LineAtomicWriter
sys.stdout = LineAtomicWriter(sys.stdout)
log = logging.getLogger("origin")
log.addHandler(logging.StreamHandler(sys.stdout))
log.setLevel(logging.INFO)
def environment(i):
    for n in range(1000):
        print(json.dumps({"_aws": {"CloudWatchMetrics": []}, "environment": i, "n": n}))
        log.info(json.dumps({"message": "answered", "environment": i}))
threads = [threading.Thread(target=environment, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_concurrent_records_reach_a_pipe_one_json_object_a_line():
    """A process as the local run starts its services (unbuffered, its stdout a pipe), four
    threads printing records and log lines at once: every line is one whole JSON object."""
    done = subprocess.run(
        [sys.executable, "-c", _PRINTING_THREADS], capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 * 1000 * 2
    records = [json.loads(line) for line in lines]  # a cut line fails here
    assert sum("_aws" in r for r in records) == 4000


def test_a_service_process_writes_through_the_writer(monkeypatch):
    """service_processes.main(), as the local run starts the model server (its input closed
    at once: it stops): what it prints goes through a LineAtomicWriter."""
    from local_run import service_processes

    printed = _Recorded()
    monkeypatch.setattr(sys, "stdout", printed)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert service_processes.main(["model", "--endpoint", "e", "--max-model-len", "64"]) == 0
    assert isinstance(sys.stdout, LineAtomicWriter) and sys.stdout._stream is printed
    assert len(printed.writes) == 1 and printed.writes[0].startswith("serving http://127.0.0.1:")
