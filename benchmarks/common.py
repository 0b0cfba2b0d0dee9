"""What every benchmark shares: result rows, targets, medians, and rank launching."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import psutil

from xffl_hpc.emulate.environments import clean_environ

ROOT = Path(__file__).resolve().parent.parent
#: Variable carrying the launcher's ``time.time()`` taken just before it spawned a rank.
SPAWN_VARIABLE = "XFFL_BENCH_SPAWN"


class BenchmarkError(RuntimeError):
    """A benchmark run failed: a rank exited non-zero, printed no result, or ran too long."""


@dataclass(frozen=True)
class Target:
    """A goal on the ratio (``on="ratio"``) or on our own value (``on="ours"``)."""

    limit: float
    on: Literal["ratio", "ours"] = "ratio"
    at_least: bool = False
    unit: str = ""

    def met(self, ours: float, ratio: float) -> bool:
        value = ratio if self.on == "ratio" else ours
        return value >= self.limit if self.at_least else value <= self.limit

    def __str__(self) -> str:
        sign = ">=" if self.at_least else "<="
        if self.on == "ratio":
            return f"ratio {sign} {self.limit:g}"
        return f"{sign} {self.limit:g} {self.unit}"


@dataclass
class Row:
    """One line of the table: our median against the baseline's, in ``unit``.

    For a throughput (``higher_is_better``) the ratio is still ours / baseline, so a
    ratio above 1 is better there and worse for a time.
    """

    benchmark: str
    case: str
    ranks: int | None
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    target: Target | None = None
    higher_is_better: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline

    @property
    def best_ratio(self) -> float:
        """Ours against the baseline, each at its best sample: what noise cannot inflate."""
        best = max if self.higher_is_better else min
        return best(self.samples["ours"]) / best(self.samples["baseline"])

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ours, self.ratio)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = None if self.target is None else str(self.target)
        data["ratio"] = self.ratio
        data["best_ratio"] = self.best_ratio
        data["met"] = self.met
        return data


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def interleaved(runs: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Call each run ``repetitions`` times, alternating them and rotating who goes first."""
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repetitions):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runs[name]())
    return samples


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` and everything it started."""
    try:
        tree = psutil.Process(process.pid)
        for child in [*tree.children(recursive=True), tree]:
            child.kill()
    except psutil.NoSuchProcess:
        pass


def run_ranks(
    options: Sequence[dict[str, Any]], environments: Sequence[dict[str, str]], timeout: float
) -> list[dict[str, Any]]:
    """Run ``python -m benchmarks.worker OPTIONS`` once per rank; each rank's JSON result.

    Each rank gets a clean environment plus its own variables and the time it was
    spawned, and (unless set here) ``OMP_NUM_THREADS`` of its share of the usable cores,
    as torchrun gives it: more threads than cores make the ranks' spinning OpenMP
    threads steal the cores the others' collectives need. When a rank fails, or
    ``timeout`` seconds pass, every rank is killed.
    """
    threads = str(max(1, len(os.sched_getaffinity(0)) // len(options)))
    base = {"OMP_NUM_THREADS": threads} | clean_environ()
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        outputs = [
            (
                files.enter_context(tempfile.TemporaryFile()),
                files.enter_context(tempfile.TemporaryFile()),
            )
            for _ in options
        ]
        try:
            for option, environ, (out, err) in zip(options, environments, outputs, strict=True):
                env = base | environ | {SPAWN_VARIABLE: repr(time.time())}
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.worker", json.dumps(option)],
                        env=env,
                        cwd=ROOT,
                        stdout=out,
                        stderr=err,
                    )
                )
            deadline = time.monotonic() + timeout
            while None in (states := [process.poll() for process in processes]):
                if any(state not in (None, 0) for state in states):
                    raise BenchmarkError(_failure(processes, outputs, "a rank failed"))
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        _failure(processes, outputs, f"ranks ran past {timeout} s")
                    )
                time.sleep(0.02)
            if any(process.returncode != 0 for process in processes):
                raise BenchmarkError(_failure(processes, outputs, "a rank failed"))
            return [_result(out) for out, _ in outputs]
        finally:
            for process in processes:
                kill_tree(process)
                process.wait()


def _result(stream: Any) -> dict[str, Any]:
    stream.seek(0)
    lines = [line for line in stream.read().decode().splitlines() if line.startswith("{")]
    if not lines:
        raise BenchmarkError("a rank printed no result")
    return json.loads(lines[-1])


def _failure(processes: Sequence[subprocess.Popen[bytes]], outputs: Sequence[Any], why: str) -> str:
    """``why``, with the exit status and the end of stderr of the first failed rank."""
    for rank, (process, (_, err)) in enumerate(zip(processes, outputs, strict=True)):
        if process.returncode not in (None, 0):
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            return f"{why}: rank {rank} exited with status {process.returncode}:\n{tail}"
    return why


def machine() -> dict[str, Any]:
    """The machine and software the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": version("torch"),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
