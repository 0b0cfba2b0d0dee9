"""Access to the emulated SLURM cluster that `.ci/slurm-cluster.sh up` starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: Hard limit on any one SLURM command in the tests.
COMMAND_TIMEOUT = 90


def slurm_env() -> dict[str, str]:
    """This process's environment with SLURM_CONF pointing at the emulated cluster."""
    state = os.environ.get("XFFL_SLURM_DIR", "/tmp/xffl-slurm")
    conf = os.environ.get("SLURM_CONF", f"{state}/etc/slurm.conf")
    return {**os.environ, "SLURM_CONF": conf}


def require_cluster() -> dict[str, str]:
    """The environment to reach the cluster; skip (fail under CI) when there is none."""
    env = slurm_env()
    reason = None
    if shutil.which("sbatch") is None:
        reason = "SLURM is not installed (no sbatch on PATH)"
    elif not Path(env["SLURM_CONF"]).is_file():
        reason = f"no emulated cluster: {env['SLURM_CONF']} is missing (.ci/slurm-cluster.sh up)"
    else:
        try:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15
            )
        except subprocess.TimeoutExpired:
            state = None
        usable = ("idle", "mixed", "allocated", "completing")  # busy with other jobs is fine
        if state is None or state.returncode != 0 or not set(state.stdout.split()) & set(usable):
            reason = "the emulated SLURM cluster does not answer with usable nodes"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the real-SLURM tests: {reason}")
        pytest.skip(reason)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a SLURM command with a hard timeout."""
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )


ENV_COMMAND = [sys.executable, "-m", "xffl_hpc", "env", "--json"]


def placements(text: str) -> list[dict[str, Any]]:
    """The JSON placements printed one per line, sorted by rank."""
    found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return sorted(found, key=lambda p: p["rank"])


#: Job states after which a job runs no more (a requeued job passes through others).
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
#: Hard limit on waiting for one job.
JOB_TIMEOUT = 150


def wait_for_job(
    job: str,
    query: Callable[[list[str]], subprocess.CompletedProcess],
    timeout: float = JOB_TIMEOUT,
) -> int:
    """Poll ``scontrol`` (through ``query``) until ``job`` has finished; its exit status.

    ``sbatch --wait`` polls every 2 to 10 seconds; this answers within a fraction of one.
    A job still running after ``timeout`` seconds is cancelled and the test fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        shown = query(["scontrol", "-o", "show", "job", job]).stdout
        fields = dict(part.split("=", 1) for part in shown.split() if "=" in part)
        if fields.get("JobState") in FINISHED:
            code, signal = (int(part) for part in fields["ExitCode"].split(":"))
            return code if code or not signal else 128 + signal
        if time.monotonic() > deadline:
            query(["scancel", job])
            raise AssertionError(f"job {job} still {fields.get('JobState')} after {timeout} s")
        time.sleep(0.3)


def sbatch_and_wait(
    args: list[str], query: Callable[..., subprocess.CompletedProcess]
) -> tuple[subprocess.CompletedProcess, str]:
    """``sbatch --parsable ARGS`` through ``query``, then :func:`wait_for_job`: sbatch's
    result with the job's exit status as its return code, and the job id."""
    submitted = query(["sbatch", "--parsable", *args])
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0].splitlines()[-1]
    submitted.returncode = wait_for_job(job, query)
    return submitted, job
