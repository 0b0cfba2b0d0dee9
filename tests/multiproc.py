"""Start real processes, one per rank, each with its own environment; hard timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.fakeenv import clean_environ

ROOT = Path(__file__).resolve().parent.parent
#: Put first on the ranks' PYTHONPATH: numpy cannot be imported there.
TORCH_ONLY = str(ROOT / "tests" / "torch_only")
#: Hard limit on one multi-process run, start to finish.
RUN_TIMEOUT = 120.0


@dataclass
class RankResult:
    returncode: int
    report: dict[str, Any] | None
    stderr: str


def _kill_tree(process: subprocess.Popen) -> None:
    try:
        tree = psutil.Process(process.pid)
        for child in [*tree.children(recursive=True), tree]:
            child.kill()
    except psutil.NoSuchProcess:
        pass


def launch(
    environments: list[dict[str, str]], options: dict[str, Any], timeout: float = RUN_TIMEOUT
) -> list[RankResult]:
    """Run ``tests.dist_worker`` once per environment and collect each rank's report.

    The ranks cannot import numpy (``TORCH_ONLY``). Every process is killed, with its
    children, once ``timeout`` seconds have passed.
    """
    argument = json.dumps(options)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dist_worker", argument],
            env=clean_environ() | {"PYTHONPATH": TORCH_ONLY} | environ,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for environ in environments
    ]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                out, err = process.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                for other in processes:
                    _kill_tree(other)
                raise AssertionError(f"ranks still running after {timeout} s") from None
            lines = [line for line in out.splitlines() if line.startswith("{")]
            report = json.loads(lines[-1]) if lines else None
            results.append(RankResult(process.returncode, report, err))
    finally:
        for process in processes:
            _kill_tree(process)
    return results


def printed_pids(output: str) -> list[int]:
    """The pids that ``tests/rank_script.py`` ranks print (``pids RANK_PID CHILD_PID``)."""
    return [int(p) for line in output.splitlines() if "pids " in line for p in line.split()[-2:]]


def all_gone(found: list[int], wait: float = 5.0) -> bool:
    """Whether every process in ``found`` has ended (zombies count), within ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for pid in found:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.1)
