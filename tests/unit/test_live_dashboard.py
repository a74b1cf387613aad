"""The live dashboard's plumbing without a browser: EmfTap takes the EMF records the real
origin adapter prints (Powertools' own serializer) off stdout and passes every other line
on; LiveMetrics counts answers per interval and sums every EMF metric."""

from __future__ import annotations

import io
import json
import threading

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from lambdas.contract import METRICS_NAMESPACE, ORIGIN_ADAPTER_SERVICE, Metric
from local_run.live_dashboard import BUCKET_SECONDS, EmfTap, LiveMetrics


def emf_record(**metrics: tuple[float, str]) -> dict:
    emitter = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=ORIGIN_ADAPTER_SERVICE)
    for name, (value, unit) in metrics.items():
        emitter.add_metric(name=name, unit=getattr(MetricUnit, unit), value=value)
    return emitter.serialize_metric_set()


def test_emf_tap_takes_emf_lines_and_passes_the_rest_whole():
    out, records = io.StringIO(), []
    tap = EmfTap(out, records.append)
    record = emf_record(Requests=(1, "Count"))
    print("GET /v1/models -> 200", file=tap)
    print(json.dumps(record, separators=(",", ":")), file=tap)  # as Powertools' flush_metrics prints it
    tap.write('{"cacheable":true,"outcome":"hit"')  # the edge's log line, written in two parts
    tap.write("}\n")
    print('{"_aws": broken', file=tap)
    assert records == [record]
    assert out.getvalue() == 'GET /v1/models -> 200\n{"cacheable":true,"outcome":"hit"}\n{"_aws": broken\n'


def test_emf_tap_keeps_each_threads_lines_apart():
    out, records = io.StringIO(), []
    tap = EmfTap(out, records.append)
    line = json.dumps(emf_record(Requests=(1, "Count")), separators=(",", ":"))

    def write():
        for _ in range(200):
            print(line, file=tap)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(records) == 800 and out.getvalue() == ""


def test_metrics_count_answers_steps_and_emf_per_interval():
    now = [1_000_000.0]
    metrics = LiveMetrics(clock=lambda: now[0])
    metrics.observe_answer(200, {"x-inference-cache": "MISS", "server-timing": "origin;dur=900"}, 905)
    metrics.observe_answer(200, {"x-inference-cache": "HIT", "server-timing": "decision;dur=0.2, lookup;dur=4"}, 6)
    metrics.observe_answer(401, {"x-inference-cache": "BYPASS"}, 1)  # the key check's refusal says BYPASS
    record = emf_record(Requests=(1, "Count"), CacheMiss=(1, "Count"), GpuSecondsOnMiss=(0.9, "Seconds"),
                        InferenceLatency=(900, "Milliseconds"))
    record["_aws"]["Timestamp"] = int(now[0] * 1000)
    metrics.observe_emf(record)
    now[0] += 3 * BUCKET_SECONDS
    metrics.observe_answer(200, {"x-inference-cache": "HIT", "server-timing": "decision;dur=0.3, lookup;dur=2"}, 4)
    snapshot = metrics.snapshot()
    s = snapshot["summary"]
    assert (s["answers"], s["hit"], s["miss"], s["bypass"], s["4xx"]) == (4, 2, 1, 0, 1)
    assert s["hit_ratio"] == round(2 / 3, 4) and s["steps"] == ["origin", "decision", "lookup"]
    assert s["emf_records"] == 1 and s["gpu_seconds_spent"] == 0.9 and s["gpu_seconds_saved"] == 1.8
    requests = {series["name"]: series["data"] for series in snapshot["charts"]["live-requests"]["series"]}
    assert sum(requests["HIT"]) == 2 and requests["HIT"][-1] == 1 and requests["MISS"][-4] == 1
    latency = {series["name"]: series["data"] for series in snapshot["charts"]["live-latency"]["series"]}
    assert latency["origin p50"][-4] == 900 and latency["lookup p50"][-1] == 2
    gpu = {series["name"]: series["data"] for series in snapshot["charts"]["live-gpu"]["series"]}
    assert gpu["GPU seconds saved by hits, cumulative (estimate)"][-1] == 1.8
    assert sum(gpu["GPU seconds spent on misses"]) == 0.9
    ttft = {series["name"]: series["data"] for series in snapshot["charts"]["live-ttft"]["series"]}
    assert ttft["model call p50 (InferenceLatency)"][-4] == 900
    assert Metric.COALESCED in {series["name"] for series in snapshot["charts"]["live-coalesced"]["series"]}
