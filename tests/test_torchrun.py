"""Real ``torchrun`` with an elastic restart: the workers join the agent's store (no
second server on MASTER_PORT) and every attempt checks in under keys of its own."""

from __future__ import annotations

import subprocess
import sys

from tests.fakeenv import clean_environ, free_port
from tests.multiproc import ROOT, TORCH_ONLY

WORKER = str(ROOT / "tests" / "torchrun_worker.py")


def torchrun(mode: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    command += ["--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), WORKER, mode]
    environ = clean_environ() | {"PYTHONPATH": TORCH_ONLY, "XFFL_HPC_TIMEOUT": "6"}
    return subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=240
    )


def test_the_second_attempt_trains_after_a_worker_died_on_the_first() -> None:
    done = torchrun("die")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "attempt 1 rank 0 sum 3" in done.stdout and "attempt 1 rank 1 sum 3" in done.stdout
    assert "attempt 0 rank" not in done.stdout
    assert "failed to bind" not in output and "Address already in use" not in output
    assert "connectFullMesh" not in output


def test_a_rank_missing_on_the_second_attempt_is_named() -> None:
    done = torchrun("absent")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "rank 0 of 2: rank(s) 1 did not reach the rendezvous at 127.0.0.1:" in output, output[
        -4000:
    ]
    assert "within 6 s (1 of 2 arrived)" in output
    assert "failed to bind" not in output
