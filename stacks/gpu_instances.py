"""GPUs per SageMaker GPU instance type.

SageMaker's GPUUtilization and GPUMemoryUtilization are summed over an instance's
GPUs (0-400 % on a 4-GPU instance); the alarms and the dashboard divide by this
count so that thresholds read as "per GPU". Pure Python, like stacks/settings.py.
"""

from __future__ import annotations

from stacks.settings import SettingsError

# (family, size) -> GPUs. Sizes not listed for a family do not exist as SageMaker
# hosting instances, and asking for them is an error rather than a guess.
_SINGLE_GPU_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
GPUS_PER_INSTANCE: dict[tuple[str, str], int] = {
    **{("g4dn", size): 1 for size in _SINGLE_GPU_SIZES},
    ("g4dn", "12xlarge"): 4,
    **{(family, size): 1 for family in ("g5", "g6", "g6e") for size in _SINGLE_GPU_SIZES},
    **{(family, "12xlarge"): 4 for family in ("g5", "g6", "g6e")},
    **{(family, "24xlarge"): 4 for family in ("g5", "g6", "g6e")},
    **{(family, "48xlarge"): 8 for family in ("g5", "g6", "g6e")},
    ("p4d", "24xlarge"): 8,
    ("p4de", "24xlarge"): 8,
    ("p5", "48xlarge"): 8,
    ("p5e", "48xlarge"): 8,
    ("p5en", "48xlarge"): 8,
}


def gpu_count(instance_type: str) -> int:
    """GPUs on one instance of `instance_type` (e.g. "ml.g6e.12xlarge" -> 4)."""
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml" or (parts[1], parts[2]) not in GPUS_PER_INSTANCE:
        raise SettingsError(
            f"{instance_type}: GPU count unknown; add it to stacks/gpu_instances.py so GPU alarms can normalize"
        )
    return GPUS_PER_INSTANCE[(parts[1], parts[2])]
