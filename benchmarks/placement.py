"""Placement resolution: ``detect()`` on large SLURM steps, and topologies of 100k ranks.

``detect`` baseline: a hand-written parser that knows only this one format (four
``int()`` reads, one ``prefix[a-b]`` range, ``N(xR)`` counts) and validates nothing.
Topology baseline: the same per-rank positions and groups by plain arithmetic, groups
as ``range`` objects.
"""

from __future__ import annotations

import re
import time
import timeit
from collections.abc import Callable, Mapping
from typing import Any

from benchmarks.common import Row, Target, interleaved, median
from xffl_hpc.emulate.environments import slurm_task
from xffl_hpc.schedulers import detect
from xffl_hpc.topology import Topology

DETECT_TARGET = Target(5.0, on="ours", unit="ms")
TOPOLOGY_TARGET = Target(1.0, on="ours", unit="s")
_COUNT = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def srun_environment(nodes: int) -> dict[str, str]:
    """The variables of the last task of an srun step on ``nodes`` nodes named
    ``gpu00001``..., 4 tasks on the first half of the nodes and 2 on the rest."""
    hosts = [f"gpu{index:05d}" for index in range(1, nodes + 1)]
    counts = [4] * (nodes - nodes // 2) + [2] * (nodes // 2)
    return slurm_task("4244", hosts, counts, sum(counts) - 1) | {"MASTER_PORT": "29500"}


def plain_detect(environ: Mapping[str, str]) -> tuple[Any, ...]:
    """What a one-format parser reads from the same step: the baseline."""
    nodelist = environ["SLURM_STEP_NODELIST"]
    if "[" in nodelist:
        prefix, body = nodelist.rstrip("]").split("[", 1)
        hosts = []
        for part in body.split(","):
            first, _, last = part.partition("-")
            width = len(first)
            hosts.extend(
                f"{prefix}{i:0{width}d}" for i in range(int(first), int(last or first) + 1)
            )
    else:
        hosts = nodelist.split(",")
    counts: list[int] = []
    for item in environ["SLURM_STEP_TASKS_PER_NODE"].split(","):
        match = _COUNT.fullmatch(item)
        assert match is not None
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return (
        int(environ["SLURM_PROCID"]),
        int(environ["SLURM_STEP_NUM_TASKS"]),
        int(environ["SLURM_LOCALID"]),
        int(environ["SLURM_NODEID"]),
        hosts,
        counts,
        environ["MASTER_PORT"],
    )


def _per_call(function: Callable[[], object], number: int) -> Callable[[], float]:
    """A sample: mean seconds per call over ``number`` calls."""
    timer = timeit.Timer(function)
    return lambda: timer.timeit(number) / number


def _calls_for(function: Callable[[], object], seconds: float) -> int:
    """Calls that take about ``seconds``, at least one."""
    start = time.perf_counter()
    function()
    return max(1, int(seconds / max(time.perf_counter() - start, 1e-7)))


def run_detect(node_counts: list[int], repetitions: int, sample_seconds: float) -> list[Row]:
    """Milliseconds per ``detect()`` call against the plain parser, per node count."""
    rows = []
    for nodes in node_counts:
        environ = srun_environment(nodes)
        placement = detect(environ)
        _, world, _, _, hosts, counts, _ = plain_detect(environ)
        assert (placement.world_size, placement.hostnames) == (world, tuple(hosts))
        assert placement.tasks_per_node == tuple(counts)
        runs: dict[str, Callable[[], object]] = {
            "ours": lambda environ=environ: detect(environ),
            "baseline": lambda environ=environ: plain_detect(environ),
        }
        number = _calls_for(runs["ours"], sample_seconds)
        samples = interleaved(
            {name: _per_call(function, number) for name, function in runs.items()}, repetitions
        )
        samples = {name: [1e3 * value for value in values] for name, values in samples.items()}
        rows.append(
            Row(
                benchmark="detect",
                case=f"srun, {nodes} node{'s' if nodes > 1 else ''}, "
                f"tasks {environ['SLURM_STEP_TASKS_PER_NODE']}",
                ranks=placement.world_size,
                unit="ms",
                ours=median(samples["ours"]),
                baseline=median(samples["baseline"]),
                baseline_name="int() of 4 variables + one-range host list + counts, no checks",
                target=DETECT_TARGET,
                samples=samples,
                details={"calls_per_sample": number, "nodelist": environ["SLURM_STEP_NODELIST"]},
            )
        )
    return rows


def enumerate_ours(world: int, hsdp: int | None, federated: Any) -> int:
    """Build the topology and ask every rank's position and groups; a checksum."""
    topology = Topology.build(world, hsdp=hsdp, federated=federated)
    total = 0
    for rank in range(world):
        info = topology.rank_info(rank)
        averaging = topology.averaging_group(rank)
        replica = topology.replica_group(rank)
        total += (
            info.shard_index
            + len(topology.shard_group(rank))
            + (len(replica) if replica else 0)
            + (len(averaging) if averaging else 0)
        )
    return total


def enumerate_plain(world: int, hsdp: int | None, federated: Any) -> int:
    """The same positions and group sizes by plain arithmetic on ``range`` objects."""
    sizes = (world,) if federated is None else _sizes(world, federated)
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    symmetric = len(set(sizes)) == 1
    total = 0
    for start, size in zip(starts, sizes, strict=True):
        for local in range(size):
            rank = start + local
            h = hsdp or size
            shard = local % h
            block = range(rank - shard, rank - shard + h)
            replica = range(start + shard, start + size, h) if hsdp else range(0)
            if federated is None:
                averaging = range(0)
            elif symmetric:
                averaging = range(local, world, size)
            else:
                replicas = size // h
                sender = start + (shard % replicas) * h + shard
                averaging = range(len(sizes)) if sender == rank else range(0)
            total += shard + len(block) + len(replica) + len(averaging)
    return total


def _sizes(world: int, federated: Any) -> tuple[int, ...]:
    return (federated,) * (world // federated) if isinstance(federated, int) else tuple(federated)


def topology_cases(world: int) -> dict[str, dict[str, Any]]:
    """hsdp, federated, and symmetric and asymmetric federated+hsdp at ``world`` ranks."""
    size = world // 125
    large, small = world * 3 // 250, world * 2 // 250
    return {
        "hsdp 8": {"hsdp": 8, "federated": None},
        f"federated {size}": {"hsdp": None, "federated": size},
        f"federated {size} + hsdp 8": {"hsdp": 8, "federated": size},
        f"federated ({large},{small})x50 + hsdp 8": {"hsdp": 8, "federated": (large, small) * 50},
    }


def run_topology(world: int, repetitions: int) -> list[Row]:
    """Seconds to build each topology and enumerate every rank, against plain arithmetic."""
    rows = []
    for case, layout in topology_cases(world).items():
        assert enumerate_ours(world, **layout) == enumerate_plain(world, **layout)
        samples = interleaved(
            {
                "ours": _per_call(lambda layout=layout: enumerate_ours(world, **layout), 1),
                "baseline": _per_call(lambda layout=layout: enumerate_plain(world, **layout), 1),
            },
            repetitions,
        )
        rows.append(
            Row(
                benchmark="topology",
                case=case,
                ranks=world,
                unit="s",
                ours=median(samples["ours"]),
                baseline=median(samples["baseline"]),
                baseline_name="per-rank arithmetic on range objects, no validation",
                target=TOPOLOGY_TARGET,
                samples=samples,
                details={"layout": layout},
            )
        )
    return rows
