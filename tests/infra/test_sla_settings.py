"""SLA settings are validated when a stage is built, like the other settings; the GPU
table the alarms normalize with refuses instance types it does not know."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, SlaSettings, gpu_count
from config.stages import STAGES


def test_every_stage_has_valid_sla_settings_and_a_known_gpu_count():
    for settings in STAGES.values():
        assert isinstance(settings.sla, SlaSettings)
        assert gpu_count(settings.endpoint.instance_type) >= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        # A 14.4x burn of an 8 % budget is above 100 % errors: the alarm could never fire.
        {"availability_target": 0.92},
        {"edge_function_error_rate_max": 0},
        {"edge_function_error_rate_max": 1},
        {"min_requests_per_5_min": 0},
        {"gpu_utilization_high_pct": 0},
        {"gpu_utilization_high_pct": 101},
        {"gpu_memory_high_pct": 150},
        {"gpu_high_minutes": 7},  # not a whole number of 5-minute periods
        {"gpu_high_minutes": 0},
        {"capacity_pinned_minutes": 1445},  # beyond the one day CloudWatch evaluates
        {"fsx_free_capacity_floor": 0},
        {"fsx_free_capacity_floor": 1},
        {"model_latency_p99_ms": 0, "origin_adapter_duration_p99_ms": 1, "edge_origin_latency_p99_ms": 1},
    ],
)
def test_invalid_sla_settings_are_refused(kwargs):
    with pytest.raises(SettingsError):
        SlaSettings(**kwargs)


def test_error_budget_is_the_complement_of_the_availability_target():
    assert SlaSettings(availability_target=0.999).error_budget == pytest.approx(0.001)
    assert SlaSettings(availability_target=0.95).error_budget == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("instance_type", "gpus"),
    [
        ("ml.g5.2xlarge", 1),
        ("ml.g5.12xlarge", 4),
        ("ml.g6e.48xlarge", 8),
        ("ml.g4dn.12xlarge", 4),
        ("ml.p4d.24xlarge", 8),
        ("ml.p5.48xlarge", 8),
    ],
)
def test_gpu_count(instance_type, gpus):
    assert gpu_count(instance_type) == gpus


@pytest.mark.parametrize("instance_type", ["ml.g5.3xlarge", "ml.p5.2xlarge", "g5.2xlarge", "ml.c5.2xlarge"])
def test_unknown_gpu_instance_types_are_refused(instance_type):
    with pytest.raises(SettingsError):
        gpu_count(instance_type)
