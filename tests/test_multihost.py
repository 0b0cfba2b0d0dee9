"""Two real hosts (the network-namespace bed): the example trains across them with nothing
set by hand, bad networks fail fast and named, and real MPI launchers place every rank."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_slurm import JOB_TIMEOUT, sbatch_and_wait
from tests.multiproc import ROOT
from tests.netns import (
    HYDRA_ACROSS_HOSTS,
    OPENMPI_ACROSS_HOSTS,
    RSH_AGENT,
    on_host,
    require_bed,
)

pytestmark = pytest.mark.slurm

SBATCH = ROOT / "slurm" / "xffl.sbatch"
PBS = ROOT / "pbs" / "xffl.pbs"
EXAMPLE = ROOT / "examples" / "federated_mlp.py"
TRAIN = [str(EXAMPLE), "--steps", "20", "--every", "10", "--federated", "2"]
#: Set by hand in the usual workaround; none of them may be needed.
BY_HAND = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "XFFL_HPC_IFNAME", "MASTER_ADDR")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    found = require_bed()
    for name in (*BY_HAND, "MASTER_PORT", "XFFL_HPC_AUTO_IFNAME"):
        found.pop(name, None)
    return {**found, "XFFL_PYTHON": sys.executable, "XFFL_HPC_TIMEOUT": "60"}


def sbatch(env: dict[str, str], folder: Path, *args: str) -> tuple[int, str, float]:
    """Submit from h1 in ``folder`` and wait: exit status, the job's output, seconds."""

    def query(command: list[str]) -> subprocess.CompletedProcess:
        return on_host("h1", command, env, 30, folder)

    started = time.monotonic()
    done, job = sbatch_and_wait(list(args), query)
    seconds = time.monotonic() - started
    output = "".join(path.read_text() for path in folder.glob(f"*{job}*.out"))
    return done.returncode, output + done.stderr, seconds


def trained(output: str) -> None:
    assert "shards agree" in output, output[-3000:]
    first, last = (float(x) for x in re.findall(r"loss ([\d.]+) -> ([\d.]+)", output)[-1])
    assert last < first


def test_sbatch_trains_across_hosts_with_nothing_set_by_hand(
    env: dict[str, str], tmp_path: Path
) -> None:
    status, output, _ = sbatch(env, tmp_path, "-N2", "--ntasks-per-node=2", str(SBATCH), *TRAIN)
    assert status == 0, output[-3000:]
    # eth1 is up on every host too, but only eth0 reaches the other host.
    assert "network: eth0 10.77.0.11 (routes to h2 10.77.0.12)" in output
    assert "rank 0/4 on node 0/2" in output
    trained(output)


def test_with_the_choice_off_the_job_fails_fast_naming_127_0_1_1(
    env: dict[str, str], tmp_path: Path
) -> None:
    off = {**env, "XFFL_HPC_AUTO_IFNAME": "0"}
    status, output, seconds = sbatch(
        off, tmp_path, "-N2", "--ntasks-per-node=2", str(SBATCH), *TRAIN
    )
    assert status != 0
    assert seconds < 60, "must not wait for gloo's connect timeout"
    assert re.search(r"h[12] resolves its own name to '127\.0\.1\.1'", output), output[-3000:]
    assert "leave XFFL_HPC_AUTO_IFNAME unset" in output


def test_doctor_names_the_127_0_1_1_problem_and_passes_without_it(env: dict[str, str]) -> None:
    doctor = ["srun", "-N2", "--ntasks-per-node=1", sys.executable, "-m", "xffl_hpc", "doctor"]
    off = on_host("h1", doctor, {**env, "XFFL_HPC_AUTO_IFNAME": "0"}, JOB_TIMEOUT)
    assert off.returncode != 0
    for host in ("h1", "h2"):
        assert f"on {host}: PROBLEM: {host} resolves its own name to '127.0.1.1'" in off.stdout
    healthy = on_host("h1", doctor, env, JOB_TIMEOUT)
    assert healthy.returncode == 0, healthy.stdout[-3000:]
    assert "on h2: interface: eth0 10.77.0.12 (routes to h1 10.77.0.11)" in healthy.stdout
    assert "on h2: reached h1:" in healthy.stdout
    assert healthy.stdout.count("all checks passed") == 2


def test_an_unreachable_interface_fails_every_rank_naming_the_peer(
    env: dict[str, str], tmp_path: Path
) -> None:
    unrouted = {**env, "XFFL_HPC_IFNAME": "eth1"}
    status, output, seconds = sbatch(
        unrouted, tmp_path, "-N2", "--ntasks-per-node=2", str(SBATCH), *TRAIN
    )
    assert status != 0
    assert seconds < 60
    assert re.search(r"cannot reach rank 2 on h2 at 10\.99\.2\.1:\d+", output), output[-3000:]
    assert "set XFFL_HPC_IFNAME to an interface of a network both hosts share" in output


@pytest.mark.parametrize(
    "launcher",
    [
        "mpirun.openmpi --allow-run-as-root -n 4 --map-by ppr:2:node",
        "mpiexec.hydra -n 4 -ppn 2",
    ],
)
def test_mpi_launchers_inside_an_allocation(
    env: dict[str, str], tmp_path: Path, launcher: str
) -> None:
    script = tmp_path / "mpi.sh"
    script.write_text(f"#!/bin/bash\n{launcher} {sys.executable} {' '.join(TRAIN)}\n")
    output_file = tmp_path / "mpi-%j.out"
    status, output, _ = sbatch(
        env, tmp_path, "-N2", "--ntasks-per-node=2", f"--output={output_file}", str(script)
    )
    assert status == 0, output[-3000:]
    # SLURM_PROCID is 0 (Open MPI) or the node index (Hydra) on every rank: the MPI
    # launcher's own variables must win, and the nodes come from the gathered host names.
    assert "rank 0/4 on node 0/2 (local rank 0/2)" in output
    assert "network: eth0 10.77.0.11 (routes to h2 10.77.0.12)" in output
    trained(output)


@pytest.mark.parametrize(
    ("mpiexec", "arguments"),
    [
        ("mpiexec.hydra", HYDRA_ACROSS_HOSTS),
        ("mpirun.openmpi", OPENMPI_ACROSS_HOSTS),
    ],
)
def test_pbs_script_with_a_real_mpiexec_across_the_hosts(
    env: dict[str, str], tmp_path: Path, mpiexec: str, arguments: list[str]
) -> None:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("h1\nh1\nh2\nh2\n")
    job = {
        **env,
        "PBS_JOBID": "77.pbs",
        "PBS_O_WORKDIR": str(tmp_path),
        "PBS_NODEFILE": str(nodefile),
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "XFFL_MPIEXEC": mpiexec,
        "XFFL_MPIEXEC_ARGS": " ".join(arguments),
    }
    done = on_host("h1", ["bash", str(PBS), *TRAIN], job, JOB_TIMEOUT, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "rank 0/4 on node 0/2 (local rank 0/2)" in output
    assert "network: eth0 10.77.0.11 (routes to h2 10.77.0.12)" in output
    assert str(RSH_AGENT) in output  # the launcher really went through the ssh stand-in
    trained(output)
