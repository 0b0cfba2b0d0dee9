"""Bootstrap: process start to a ready ``DistributedState``, against bare torch calls.

Each run starts W gloo ranks on this host with the variables of an ``srun`` step of W // 2
tasks on each of 2 (emulated) nodes. Ours calls
``setup_distributed_process_group``; the baseline calls ``init_process_group`` with a
``tcp://`` rendezvous, ``init_device_mesh`` and the same ``new_group`` calls. A run's
time is its slowest rank's, from its spawn to its ready state.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from benchmarks.common import Row, Target, free_port, interleaved, median, run_ranks
from xffl_hpc.emulate.environments import host_names, slurm_task

TARGET = Target(1.15)


def layouts(world: int) -> dict[str, dict[str, int | None]]:
    """hsdp and federated (group size in ranks) of each mode at ``world`` ranks."""
    return {
        "fsdp": {"hsdp": None, "federated": None},
        "hsdp": {"hsdp": max(world // 2, 1), "federated": None},
        "federated+hsdp": {"hsdp": max(world // 4, 1), "federated": world // 2},
    }


def run_once(
    variant: str, world: int, layout: dict[str, int | None], timeout: float
) -> dict[str, float]:
    """One job of ``world`` ranks; its slowest rank's phases, in seconds since spawn."""
    port = free_port()
    counts = [world // 2, world - world // 2]
    hosts = host_names(2)
    options: list[dict[str, Any]] = []
    environments = []
    for rank in range(world):
        options.append(
            {"task": f"bootstrap_{variant}", "rank": rank, "world_size": world, "port": port}
            | layout
        )
        environments.append(
            slurm_task("4242", hosts, counts, rank)
            | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        )
    results = run_ranks(options, environments, timeout)
    return {phase: max(result[phase] for result in results) for phase in results[0]}


def _case(
    world: int, mode: str, layout: dict[str, int | None], repetitions: int, timeout: float
) -> Row:
    phases: dict[str, list[dict[str, float]]] = {"ours": [], "baseline": []}

    def job(name: str) -> float:
        found = run_once("ours" if name == "ours" else "bare", world, layout, timeout)
        phases[name].append(found)
        return found["ready"]

    samples = interleaved({name: partial(job, name) for name in phases}, repetitions)
    return Row(
        benchmark="bootstrap",
        case=mode,
        ranks=world,
        unit="s",
        ours=median(samples["ours"]),
        baseline=median(samples["baseline"]),
        baseline_name="init_process_group(tcp://) + init_device_mesh + new_group",
        target=TARGET,
        samples=samples,
        details={
            "layout": layout,
            "median_phases": {
                name: {phase: median([found[phase] for found in runs]) for phase in runs[0]}
                for name, runs in phases.items()
            },
        },
    )


def run(sizes: list[int], repetitions: int, timeout: float) -> list[Row]:
    """Every mode at every size, ours and the baseline interleaved."""
    return [
        _case(world, mode, layout, repetitions, timeout)
        for world in sizes
        for mode, layout in layouts(world).items()
    ]
