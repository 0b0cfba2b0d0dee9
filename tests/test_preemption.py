"""Preemption under `xffl-hpc emulate`: SIGUSR1 reaches every rank, the ranks checkpoint at
the same step and exit 75, and the rerun resumes to the very weights of an unbroken run
(FSDP2 on a 2-D HSDP mesh inside federated groups)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.multiproc import ROOT, RUN_TIMEOUT, _kill_tree
from xffl_hpc import REQUEUE_EXIT_STATUS

EXAMPLE = ROOT / "examples" / "federated_mlp.py"
LAYOUT = ["--nodes", "2", "--tasks-per-node", "2", "--hsdp", "1", "--federated", "2"]
TRAIN = ["--steps", "60", "--every", "10"]


def emulate(*args: str, warn_after: str | None = None) -> tuple[int, str]:
    """Run the example under the emulator; send it SIGUSR1 once ``warn_after`` is printed."""
    command = [sys.executable, "-m", "xffl_hpc", "emulate", *LAYOUT, "--", str(EXAMPLE), *args]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(RUN_TIMEOUT, _kill_tree, [process])
    timer.start()
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if warn_after is not None and warn_after in line:
                process.send_signal(signal.SIGUSR1)
                warn_after = None
        return process.wait(), "".join(lines)
    finally:
        timer.cancel()
        _kill_tree(process)


def fingerprint(output: str) -> str:
    found = re.search(r"^\[0\] loss .* \(weights fingerprint (\S+)\)$", output, re.MULTILINE)
    assert found, output[-3000:]
    return found.group(1)


def test_warned_job_checkpoints_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    checkpoints = str(tmp_path / "checkpoints")
    resumable = [*TRAIN, "--checkpoint", checkpoints, "--step-time", "0.05"]
    started = time.monotonic()
    status, first = emulate(*resumable, warn_after="step 20 ")
    assert status == REQUEUE_EXIT_STATUS, first[-3000:]
    assert "SIGUSR1 received; passing it on to every rank" in first
    stopped = re.search(r"preempted: checkpointed step (\d+)", first)
    assert stopped, first[-3000:]
    step = int(stopped.group(1))
    assert 20 <= step < 60
    # Every rank ended on its own with the requeue status: none was left to be killed.
    ranks = re.findall(r"rank (\d): (status \d+|killed by \w+)", first.split("summary")[-1])
    assert sorted(ranks) == [(str(r), f"status {REQUEUE_EXIT_STATUS}") for r in range(4)]

    status, second = emulate(*resumable)
    assert status == 0, second[-3000:]
    assert f"resumed from step {step} " in second
    assert f"[0] step {step}  loss" not in second  # no step done twice

    status, unbroken = emulate(*TRAIN)
    assert status == 0, unbroken[-3000:]
    assert fingerprint(second) == fingerprint(unbroken)
    assert time.monotonic() - started < RUN_TIMEOUT
