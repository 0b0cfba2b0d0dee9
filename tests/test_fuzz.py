"""Hostile and malformed environments: `detect()` either answers a consistent placement or
raises the package's own error naming a variable; nothing hangs, nothing grows unbounded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xffl_hpc import Placement, XfflHpcError, detect
from xffl_hpc.schedulers import hostfile, hostlist

NAMES = [
    "FLUX_JOB_ID",
    "FLUX_JOB_NNODES",
    "FLUX_JOB_SIZE",
    "FLUX_TASK_LOCAL_ID",
    "FLUX_TASK_RANK",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "JSM_NAMESPACE_LOCAL_RANK",
    "JSM_NAMESPACE_LOCAL_SIZE",
    "JSM_NAMESPACE_RANK",
    "JSM_NAMESPACE_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "LSB_DJOB_HOSTFILE",
    "LSB_JOBID",
    "LSB_MCPU_HOSTS",
    "MASTER_ADDR",
    "MASTER_PORT",
    "MPI_LOCALNRANKS",
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PALS_LOCAL_RANKID",
    "PALS_LOCAL_SIZE",
    "PALS_NODEID",
    "PALS_RANKID",
    "PBS_JOBID",
    "PBS_NODEFILE",
    "PBS_TASKNUM",
    "PBS_VNODENUM",
    "PMIX_RANK",
    "PMI_ID",
    "PMI_LOCAL_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "RANK",
    "SLURMD_NODENAME",
    "SLURM_CPUS_PER_TASK",
    "SLURM_GPUS_PER_TASK",
    "SLURM_HET_SIZE",
    "SLURM_JOBID",
    "SLURM_JOB_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NODELIST",
    "SLURM_NPROCS",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_STEPID",
    "SLURM_STEP_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_NUM_NODES",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "WORLD_SIZE",
    "XFFL_HPC_IFNAME",
    "SLURM_JOB_NODELIST_HET_GROUP_0",
    "SLURM_JOB_NODELIST_HET_GROUP_1",
    "SLURM_HET_GROUP",
    "SLURM_JOB_ID_HET_GROUP_0",
    "SLURM_TASKS_PER_NODE_HET_GROUP_0",
]

_FOLDER = Path(tempfile.mkdtemp(prefix="xffl-fuzz-"))
(_FOLDER / "nodes").write_text("n1\nn1\nn2\nn2\n")
(_FOLDER / "garbage").write_bytes(b"\xff\xfe\x00binary\n")
(_FOLDER / "spaced").write_text("n1 slots=4\n")
FILES = [str(_FOLDER / name) for name in ("nodes", "garbage", "spaced", "absent")] + [str(_FOLDER)]

HUGE = [
    "9" * 40,
    "n[0-999999999]",
    "n[0-65536]",
    "a[1-65535]b[1-65535]",
    "n" * (hostlist.MAX_EXPRESSION_LENGTH + 1),
    "x" * (1 << 20),
    "1(x99999999999)",
    "4(x1000000000)",
    "[" * 5000,
]

values = st.one_of(
    st.integers(min_value=-3, max_value=12).map(str),
    st.integers(min_value=0, max_value=2**70).map(str),
    st.sampled_from(["n[1-2]", "n1,n2", "n[01-04],gpu7", "2(x2),1", "4", "n[2-1]", "n[1-"]),
    st.text(alphabet="n0123456789[]-,(x) ", max_size=24),
    st.text(max_size=16),
    st.sampled_from(FILES),
    st.sampled_from(HUGE),
)
environments = st.dictionaries(st.sampled_from(NAMES), values, max_size=10)


def consistent(placement: Placement) -> None:
    assert 0 <= placement.rank < placement.world_size
    assert 0 <= placement.local_rank < (placement.local_world_size or placement.world_size)
    if placement.hostnames is not None and placement.node_rank is not None:
        assert placement.node_rank < len(placement.hostnames)
    if placement.master_port is not None:
        assert 1 <= placement.master_port <= 65535


@settings(
    max_examples=3000,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(environments)
def test_only_the_package_error_escapes_and_it_names_a_variable(environ: dict[str, str]) -> None:
    try:
        placement = detect(environ, hostname="n1")
    except XfflHpcError as error:
        message = str(error)
        assert any(name in message for name in NAMES), message
        assert len(message) < 2000, "an error message must not echo a huge value"
        return
    consistent(placement)


def _run_env(extra: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """`xffl-hpc env --json` with ``extra`` set; its result, seconds and peak RSS in KiB."""
    code = (
        "import resource, subprocess, sys, json\n"
        "done = subprocess.run([sys.executable, '-m', 'xffl_hpc', 'env', '--json'],"
        " capture_output=True, text=True, timeout=60)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([done.returncode, done.stdout, done.stderr, peak]))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBS_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean | extra,
        capture_output=True,
        text=True,
        timeout=90,
    )
    seconds = time.monotonic() - started
    returncode, stdout, stderr, peak = json.loads(done.stdout)
    return subprocess.CompletedProcess([], returncode, stdout, stderr), seconds, peak


SRUN_TASK = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def test_megabyte_values_are_refused_quickly_with_bounded_memory() -> None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE", "SLURM_PROCID"):
        environ = SRUN_TASK | {"SLURM_STEP_NODELIST": "n[1-2]", name: "1" * (4 << 20)}
        tracemalloc.start()
        started = time.monotonic()
        try:
            detect(environ, hostname="n1")
        except XfflHpcError as error:
            message = str(error)
        else:
            raise AssertionError(f"a 4 MiB {name} was accepted")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - started < 1
        assert peak < 16 << 20, f"{name}: {peak} bytes allocated"
        assert message.startswith(name) and len(message) < 300, message


def test_an_oversized_node_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    nodefile = tmp_path / "nodefile"
    with nodefile.open("wb") as handle:
        handle.truncate(hostfile.MAX_BYTES + 1)  # sparse: no time spent writing it
    done, seconds, peak_kib = _run_env({"PBS_JOBID": "9.pbs", "PBS_NODEFILE": str(nodefile)})
    assert done.returncode == 2
    assert f"PBS_NODEFILE='{nodefile}': host file larger than" in done.stderr
    assert seconds < 10
    assert peak_kib < 100 * 1024, f"peak memory {peak_kib} KiB"


def test_a_billion_host_range_is_refused_before_any_allocation() -> None:
    done, seconds, peak_kib = _run_env(SRUN_TASK | {"SLURM_STEP_NODELIST": "n[0-999999999]"})
    assert done.returncode == 2
    assert re.search(r"SLURM_STEP_NODELIST=.*\[0-999999999\]", done.stderr), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert seconds < 10
    assert peak_kib < 100 * 1024, f"peak memory {peak_kib} KiB"


def test_env_prints_the_placement_and_nothing_else_of_the_environment() -> None:
    secret = {"AWS_SECRET_ACCESS_KEY": "hunter2-secret", "MY_TOKEN": "tok-123456"}
    done, _, _ = _run_env(secret)
    assert done.returncode == 0
    data = json.loads(done.stdout)
    assert "hunter2-secret" not in done.stdout and "tok-123456" not in done.stdout
    assert set(data) - {"interface"} <= set(Placement.__dataclass_fields__)
    table = subprocess.run(
        [sys.executable, "-m", "xffl_hpc", "env"],
        env=os.environ | secret,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0
    assert "hunter2-secret" not in table.stdout + table.stderr
    assert "tok-123456" not in table.stdout + table.stderr
