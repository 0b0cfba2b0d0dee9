"""``xffl_hpc.submit`` and ``xffl-hpc submit``: real jobs on submitit's local executor, the
emulated SLURM cluster, and PBS through SLURM's own ``qsub``/``qstat``/``qdel`` wrappers
(Debian's slurm-wlm-torque) with Open MPI's ``mpiexec``. Every wait has a hard limit and
every job still running at the end of a test is cancelled."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import xffl_hpc
from tests.live_slurm import require_cluster
from xffl_hpc import ConfigurationError, JobFailedError, SubmittedJob
from xffl_hpc.submission.pbs import (
    PbsInfoWatcher,
    parse_qstat_json,
    parse_qstat_text,
    pbs_script,
    rank_command,
)

# A notebook's functions travel by value; so do this module's (the jobs cannot import it).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Hard limit on waiting for one job.
JOB_TIMEOUT = 90
HOSTILE = ["$(touch PWNED)", ";", "touch PWNED2", "'", '"', "a b", "line\nbreak", "--federated", ""]
OPEN_MPI = {"pbs_launcher": "openmpi", "pbs_mpiexec_args": ["--allow-run-as-root"]}


# --- what the jobs run (sent by value) ----------------------------------------------------


def all_reduce_rank(state: Any) -> tuple[int, int, int, float, str | None]:
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(state.rank + 1)])
    dist.all_reduce(total)
    node = os.environ.get("SLURMD_NODENAME")
    return state.rank, state.world_size, state.node_rank, total.item(), node


def break_collective_on_rank_2(state: Any) -> float:
    import torch
    import torch.distributed as dist

    if state.rank == 2:
        time.sleep(1)
        raise ValueError("rank 2 breaks the collective")
    total = torch.ones(1)
    dist.all_reduce(total)
    return total.item()


def raise_on_rank(rank: int) -> int:
    from xffl_hpc import detect

    mine = detect().rank
    if mine == rank:
        raise KeyError(f"rank {rank} has no key")
    return mine


def sleep_long() -> None:
    time.sleep(300)


def rank_1_fails_while_rank_0_hangs() -> None:
    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 gives up")
    time.sleep(300)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def jobs() -> Iterator[list[SubmittedJob]]:
    """Jobs a test submits; any still running at its end is cancelled."""
    submitted: list[SubmittedJob] = []
    yield submitted
    for job in submitted:
        if not job.done():
            job.cancel()


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """The cluster's environment, also in this process (asked once: this module's own
    jobs keep the nodes busy between tests)."""
    env = require_cluster()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", env["SLURM_CONF"])
        yield env


@pytest.fixture(scope="module")
def pbs(slurm: dict[str, str]) -> dict[str, str]:
    missing = [tool for tool in ("qsub", "qstat", "qdel", "mpiexec") if not shutil.which(tool)]
    if missing:
        reason = (
            f"no {', '.join(missing)}: apt-get install slurm-wlm-torque openmpi-bin "
            "(SLURM's PBS wrappers and Open MPI)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PBS tests: {reason}")
        pytest.skip(reason)
    return slurm


def wait_for_state(job: SubmittedJob, wanted: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while job.state != wanted:
        assert time.monotonic() < deadline, f"job {job.job_id} never reached {wanted}"
        time.sleep(0.5)


# --- the package ---------------------------------------------------------------------------


def test_env_imports_neither_torch_nor_submitit_and_submit_stays_a_function() -> None:
    probe = (
        "import sys, xffl_hpc; from xffl_hpc.cli import main; code = main(['env', '--json']);"
        "heavy = {'torch', 'submitit'} & set(sys.modules); assert not heavy, heavy;"
        "import xffl_hpc.submission.task;"  # what unpickling a task imports, in a job
        "assert callable(xffl_hpc.submit) and xffl_hpc.submit is xffl_hpc.submit;"
        "sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --- refused before anything is submitted --------------------------------------------------


def needs_state(x: int, state: Any) -> int:
    return x


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: xffl_hpc.submit(print, nodes=0, cluster="local"), "nodes=0"),
        (lambda: xffl_hpc.submit(print, tasks_per_node=True, cluster="local"), "tasks_per_node"),
        (lambda: xffl_hpc.submit(print, timeout_min=1.5, cluster="local"), "timeout_min=1.5"),
        (lambda: xffl_hpc.submit(print, cluster="debug"), "cluster='debug'"),
        (lambda: xffl_hpc.submit(print, nodes=2, cluster="local"), "nodes=2 with cluster='local'"),
        (lambda: xffl_hpc.submit("no/such/train.py", cluster="local"), "script='no/such/train.py'"),
        (lambda: xffl_hpc.submit(needs_state, 1, state=2, cluster="local"), "state="),
        (lambda: xffl_hpc.submit(needs_state, 1, setup=False, cluster="local"), "setup=False"),
        (lambda: xffl_hpc.submit(needs_state, 1, 2, 3, cluster="local"), "do not fit needs_state"),
        (lambda: xffl_hpc.submit(42, cluster="local"), "fn=42"),
    ],
)
def test_arguments_that_cannot_work_are_refused_naming_them(call: Any, names: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        call()
    assert names in str(error.value)


def test_a_script_takes_strings_numbers_or_paths_and_no_keywords(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    with pytest.raises(ConfigurationError, match=r"script argument 1 = \{'a': 1\}"):
        xffl_hpc.submit(script, "--x", {"a": 1}, cluster="local")
    with pytest.raises(ConfigurationError, match=r"keyword arguments \['epochs'\]"):
        xffl_hpc.submit(script, epochs=2, cluster="local")


# --- the PBS plugin without a PBS server ---------------------------------------------------


def test_pbs_lines_refuse_values_they_cannot_carry() -> None:
    with pytest.raises(ConfigurationError, match=r"folder='/tmp/my jobs/u.pbs.out'.*' '"):
        pbs_script("/tmp/my jobs/%j", "u", ["python"], ".")
    with pytest.raises(ConfigurationError, match=r"name=\"it's\""):
        pbs_script("/tmp/jobs/%j", "u", ["python"], ".", name="it's")
    with pytest.raises(ConfigurationError, match=r"launcher='srun'"):
        pbs_script("/tmp/jobs/%j", "u", ["python"], ".", launcher="srun")
    with pytest.raises(ConfigurationError, match=r"setup='module load x': expected a list"):
        pbs_script("/tmp/jobs/%j", "u", ["python"], ".", setup="module load x")
    with pytest.raises(ConfigurationError, match="directives: '-l a\\\\nrm -rf /'"):
        pbs_script("/tmp/jobs/%j", "u", ["python"], ".", directives=["-l a\nrm -rf /"])


def test_pbs_batch_script_asks_for_the_chunks_and_quotes_every_word(tmp_path: Path) -> None:
    """bash runs the generated script; a test double stands in for mpiexec and records
    the words it gets."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump([os.getcwd(), os.environ['SUBMITIT_EXECUTOR'], sys.argv[1:]], "
        f"open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    workdir = tmp_path / "cwd $(touch PWNED); 'q\""
    workdir.mkdir()
    python = str(tmp_path / "my python $(touch PWNED)")
    folder = tmp_path / "jobs" / "%j"
    text = pbs_script(
        folder,
        "uid1",
        rank_command(python, folder),
        str(workdir),
        name="train",
        timeout_min=90,
        nodes=3,
        tasks_per_node=4,
        cpus_per_task=2,
        gpus_per_node=4,
        queue="debug",
        account="proj-1",
        directives=["-l filesystems=home:eagle"],
        setup=["export FROM_SETUP=1"],
        mpiexec=str(fake),
        mpiexec_args=["--env", "A=$(touch PWNED); B='x'"],
    )
    lines = text.splitlines()
    for directive in (
        "#PBS -N train",
        "#PBS -l select=3:ncpus=8:mpiprocs=4:ngpus=4",
        "#PBS -l place=scatter",
        "#PBS -l walltime=01:30:00",
        "#PBS -V",
        f"#PBS -o {tmp_path}/jobs/uid1.pbs.out",
        f"#PBS -e {tmp_path}/jobs/uid1.pbs.err",
        "#PBS -q debug",
        "#PBS -A proj-1",
        "#PBS -l filesystems=home:eagle",
    ):
        assert directive in lines
    done = subprocess.run(["bash", "-c", text], cwd=tmp_path, timeout=30, capture_output=True)
    assert done.returncode == 0, done.stderr
    cwd, executor, argv = json.loads(record.read_text())
    assert (cwd, executor) == (str(workdir), "pbs")
    assert argv == [
        *["-n", "12", "--ppn", "4", "--env", "A=$(touch PWNED); B='x'"],
        *[python, "-u", "-m", "xffl_hpc.submission.pbs_task", str(folder)],
    ]
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize(
    ("parse", "output", "states"),
    [
        (  # PBS Pro / OpenPBS, qstat -x -f -F json
            parse_qstat_json,
            json.dumps(
                {
                    "pbs_version": "2022.1.1",
                    "Jobs": {
                        "7.pbs": {"job_state": "F", "Exit_status": 0},
                        "8.pbs": {"job_state": "F", "Exit_status": 271},
                        "9.pbs": {"job_state": "R"},
                        "10.pbs": {"job_state": "Q"},
                    },
                }
            ),
            {"7.pbs": "COMPLETED", "8.pbs": "FAILED", "9.pbs": "RUNNING", "10.pbs": "PENDING"},
        ),
        (  # Torque, qstat -f
            parse_qstat_text,
            "Job Id: 548.moab\n    Job_Name = STDIN\n    job_state = C\n    exit_status = 0\n"
            "\nJob Id: 549.moab\n    job_state = H\n    Variable_List = PBS_O_QUEUE=batch,\n"
            "\tPBS_O_HOME=/home/fred\n",
            {"548.moab": "COMPLETED", "549.moab": "HELD"},
        ),
        (  # SLURM's qstat wrapper: no exit status
            parse_qstat_text,
            "Job Id:\t81\n\tJob_Name = xtest\n\tjob_state = C\n\tqueue = debug\n\n",
            {"81": "FINISHED"},
        ),
    ],
)
def test_qstat_outputs_become_job_states(parse: Any, output: str, states: dict) -> None:
    assert {job: info["State"] for job, info in parse(output).items()} == states


def test_a_job_qstat_no_longer_knows_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test-double qstat: no JSON format (exit 2, as Torque's), unknown job (exit 153)."""
    calls = tmp_path / "calls"
    qstat = tmp_path / "qstat"
    qstat.write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        'case "$1" in -x) echo "usage: qstat [-f]" >&2; exit 2;; esac\n'
        'echo "qstat: Unknown Job Id $2" >&2; exit 153\n'
    )
    qstat.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    watcher = PbsInfoWatcher()
    assert watcher.get_state("12.server", mode="force") == "FINISHED"
    assert watcher.is_done("12.server", mode="cache")
    assert calls.read_text().splitlines() == ["-x -f -F json 12.server", "-f 12.server"]


# --- submitit's local executor -------------------------------------------------------------


def test_local_job_sets_up_every_rank_and_returns_rank_0s_result(
    tmp_path: Path, jobs: list[SubmittedJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "5")  # this process's env:// values never reach the tasks
    job = xffl_hpc.submit(
        all_reduce_rank, tasks_per_node=2, cluster="local", folder=tmp_path / "%j"
    )
    jobs.append(job)
    assert job.result(timeout=JOB_TIMEOUT) == (0, 2, 0, 3.0, None)
    assert job.results() == [(0, 2, 0, 3.0, None), (1, 2, 0, 3.0, None)]


def test_a_failure_is_reported_while_other_ranks_still_hang(
    tmp_path: Path, jobs: list[SubmittedJob]
) -> None:
    job = xffl_hpc.submit(
        rank_1_fails_while_rank_0_hangs,
        tasks_per_node=2,
        cluster="local",
        setup=False,
        folder=tmp_path / "%j",
    )
    jobs.append(job)
    with pytest.raises(JobFailedError) as caught:
        job.result(timeout=JOB_TIMEOUT)
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("rank 1 failed: RuntimeError: rank 1 gives up")
    assert lines[1] == "still running: rank 0 (job.cancel() stops them)"
    assert job.state == "RUNNING"


# --- the emulated SLURM cluster ------------------------------------------------------------


@pytest.mark.slurm
def test_slurm_2x2_sets_up_every_rank_and_returns_rank_0s_result(
    slurm: dict[str, str],
    tmp_path: Path,
    jobs: list[SubmittedJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)  # sbatch exports them; the tasks must not use them
    job = xffl_hpc.submit(
        all_reduce_rank, nodes=2, tasks_per_node=2, cluster="slurm", folder=tmp_path / "%j"
    )
    jobs.append(job)
    assert job.result(timeout=JOB_TIMEOUT) == (0, 4, 0, 10.0, "n1")
    assert job.results() == [
        (0, 4, 0, 10.0, "n1"),
        (1, 4, 0, 10.0, "n1"),
        (2, 4, 1, 10.0, "n2"),
        (3, 4, 1, 10.0, "n2"),
    ]


@pytest.mark.slurm
def test_slurm_names_the_rank_that_failed_first_not_its_victims(
    slurm: dict[str, str], tmp_path: Path, jobs: list[SubmittedJob]
) -> None:
    job = xffl_hpc.submit(
        break_collective_on_rank_2,
        nodes=2,
        tasks_per_node=2,
        cluster="slurm",
        folder=tmp_path / "%j",
    )
    jobs.append(job)
    with pytest.raises(JobFailedError) as caught:
        job.result(timeout=JOB_TIMEOUT)
    error = caught.value
    assert (error.job_id, error.rank, sorted(error.failures)) == (job.job_id, 2, [0, 1, 2, 3])
    lines = str(error).splitlines()
    assert lines[0] == (
        f"job {job.job_id} (slurm, 4 ranks): rank 2 failed first: "
        "ValueError: rank 2 breaks the collective"
    )
    assert lines[1] == "also failed: ranks 0, 1, 3"
    # the frame of the user's function; its source line only where cloudpickle keeps file
    # names (before 3.0: from 3.0 a function pickled by value comes from "<dynamic-code>")
    assert re.search(r'File "[^"]+", line \d+, in break_collective_on_rank_2\n', str(error))
    assert "Connection closed by peer" in error.failures[0]


@pytest.mark.slurm
def test_slurm_refusal_is_an_error_with_sbatchs_reason(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"refused the job: .*partition.*: nope"):
        xffl_hpc.submit(print, cluster="slurm", partition="nope", folder=tmp_path / "%j")


@pytest.mark.slurm
def test_slurm_cancel_ends_the_job_and_result_says_so(
    slurm: dict[str, str], tmp_path: Path, jobs: list[SubmittedJob]
) -> None:
    job = xffl_hpc.submit(sleep_long, cluster="slurm", setup=False, folder=tmp_path / "%j")
    jobs.append(job)
    wait_for_state(job, "RUNNING")
    job.cancel()
    with pytest.raises(JobFailedError, match="rank 0 failed: no result: the job was cancelled"):
        job.result(timeout=JOB_TIMEOUT)
    wait_for_state(job, "CANCELLED")


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xffl_hpc", "submit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
    )


ARGV_SCRIPT = (
    "import json, os, sys\nprint(json.dumps([os.environ['SLURM_PROCID'], sys.argv[1:]]))\n"
)


@pytest.mark.slurm
def test_cli_runs_a_script_on_2_nodes_with_its_arguments_verbatim(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "show_argv.py").write_text(ARGV_SCRIPT)
    done = run_cli(
        *["--cluster", "slurm", "--nodes", "2", "--folder", "jobs/%j", "--wait"],
        *["--", "show_argv.py", *HOSTILE],
        cwd=tmp_path,
        env=slurm,
    )
    assert done.returncode == 0, done.stderr
    job_id, *output = done.stdout.splitlines()
    assert job_id.isdigit()
    assert [json.loads(line) for line in output] == [["0", HOSTILE]]
    assert f"job {job_id}: all 2 ranks exited with status 0" in done.stderr
    assert json.loads((tmp_path / "jobs" / job_id / f"{job_id}_1_log.out").read_text()) == [
        "1",
        HOSTILE,
    ]
    assert not list(tmp_path.rglob("PWNED*"))


def test_cli_reports_a_failing_script_with_its_rank_and_status(tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text(
        "import os, sys\nprint('rank 0 was here')\n"
        "sys.exit(3 if os.environ['RANK'] == '1' else 0)\n"
    )
    done = run_cli(
        "--cluster", "local", "--tasks-per-node", "2", "--wait", "--", "fail.py",
        cwd=tmp_path,
        env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 1
    job_id, *output = done.stdout.splitlines()
    assert output == ["rank 0 was here"]
    assert f"xffl-hpc: job {job_id} (local, 2 ranks): rank 1 failed: " in done.stderr
    assert "fail.py exited with status 3" in done.stderr
    missing = run_cli("--cluster", "local", "--", cwd=tmp_path, env=dict(os.environ))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert "submit needs a script after '--'" in missing.stderr


# --- PBS: the plugin through SLURM's qsub/qstat/qdel, ranks started by Open MPI ------------


@pytest.mark.slurm
def test_pbs_job_through_qsub_returns_rank_0s_result(
    pbs: dict[str, str],
    tmp_path: Path,
    jobs: list[SubmittedJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workdir = tmp_path / "cwd $(touch PWNED); 'q\""
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    job = xffl_hpc.submit(
        all_reduce_rank,
        nodes=2,
        tasks_per_node=2,
        cluster="pbs",
        folder=tmp_path / "jobs" / "%j",
        executor_options=OPEN_MPI,
    )
    jobs.append(job)
    assert job.result(timeout=JOB_TIMEOUT) == (0, 4, 0, 10.0, "n1")
    nodes = ["n1", "n1", "n2", "n2"]  # node_rank: the emulated nodes share one host name
    assert [(r[0], r[1], r[3], r[4]) for r in job.results()] == [
        (rank, 4, 10.0, node) for rank, node in enumerate(nodes)
    ]
    assert job.stdout(3) is not None
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.slurm
def test_pbs_names_the_failed_rank_and_qdel_cancels(
    pbs: dict[str, str],
    tmp_path: Path,
    jobs: list[SubmittedJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # SLURM's qsub leaves the job's own output here
    options = {"cluster": "pbs", "setup": False, "executor_options": OPEN_MPI}
    failing = xffl_hpc.submit(
        raise_on_rank, 3, nodes=2, tasks_per_node=2, folder=tmp_path / "%j", **options
    )
    sleeping = xffl_hpc.submit(sleep_long, folder=tmp_path / "%j", **options)
    jobs.extend([failing, sleeping])
    with pytest.raises(JobFailedError) as caught:
        failing.result(timeout=JOB_TIMEOUT)
    assert caught.value.rank == 3
    assert str(caught.value).splitlines()[0] == (
        f"job {failing.job_id} (pbs, 4 ranks): rank 3 failed: KeyError: 'rank 3 has no key'"
    )
    wait_for_state(sleeping, "RUNNING")
    sleeping.cancel()
    with pytest.raises(JobFailedError, match="rank 0 failed: no result: the job was cancelled"):
        sleeping.result(timeout=JOB_TIMEOUT)
