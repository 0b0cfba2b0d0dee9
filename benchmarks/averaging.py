"""Federated averaging: bytes per second of ``federated_average`` against one flat
``all_reduce`` of the same bytes on the same group.

Two ranks in two federated groups of one rank each, so the averaging group is both
ranks. Cases: one large tensor, and the parameters of a model of many small layers.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import Row, Target, free_port, median, run_ranks
from xffl_hpc.emulate.environments import host_names, slurm_task

TARGET = Target(0.9, at_least=True)
WORLD = 2


def cases(tiny: bool) -> dict[str, list[list[int]]]:
    """Tensor shapes of each case: 64 MiB (one default bucket) in one tensor, and 200
    Linear(256, 256) layers (weight and bias, 400 tensors, 52.6 MB); tiny with ``tiny``."""
    if tiny:
        return {"one large tensor": [[2**16]], "200 small layers": [[8, 8], [8]] * 200}
    return {"one large tensor": [[2**24]], "200 small layers": [[256, 256], [256]] * 200}


def _run(shapes: list[list[int]], warmup: int, repetitions: int, timeout: float) -> dict[str, Any]:
    port = free_port()
    hosts = host_names(WORLD)
    options = [
        {
            "task": "average",
            "shapes": shapes,
            "federated": 1,
            "warmup": warmup,
            "repetitions": repetitions,
        }
    ] * WORLD
    environments = [
        slurm_task("4243", hosts, [1] * WORLD, rank)
        | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        for rank in range(WORLD)
    ]
    return run_ranks(options, environments, timeout)[0]


def run(tiny: bool, warmup: int, repetitions: int, timeout: float) -> list[Row]:
    """Both cases; MB/s (10^6 bytes per second) of the medians of each."""
    rows = []
    for case, shapes in cases(tiny).items():
        found = _run(shapes, warmup, repetitions, timeout)
        megabytes = found["bytes"] / 1e6
        rates = {name: [megabytes / t for t in times] for name, times in found["times"].items()}
        rows.append(
            Row(
                benchmark="averaging",
                case=case,
                ranks=found["group_size"],
                unit="MB/s",
                ours=megabytes / median(found["times"]["ours"]),
                baseline=megabytes / median(found["times"]["baseline"]),
                baseline_name="dist.all_reduce of one flat tensor of the same bytes",
                target=TARGET,
                higher_is_better=True,
                samples=rates,
                details={"bytes": found["bytes"], "tensors": len(shapes)},
            )
        )
    return rows
