"""`sbatch slurm/xffl.sbatch` on the real two-node SLURM cluster: placement, training,
heterogeneous jobs, preemption with requeue and resume, quoting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_slurm import JOB_TIMEOUT, placements, require_cluster, run, sbatch_and_wait
from tests.multiproc import ROOT, all_gone, printed_pids

pytestmark = pytest.mark.slurm

SBATCH = ROOT / "slurm" / "xffl.sbatch"
EXAMPLE = ROOT / "examples" / "federated_mlp.py"
RANK_SCRIPT = ROOT / "tests" / "rank_script.py"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**require_cluster(), "XFFL_PYTHON": sys.executable}


def sbatch(
    env: dict[str, str], folder: Path, *args: str, wait: bool = True
) -> tuple[subprocess.CompletedProcess, str]:
    """Submit from ``folder``; sbatch's result (with the job's exit status as its return
    code when ``wait``) and the job id."""

    def query(command: list[str]) -> subprocess.CompletedProcess:
        return run(command, env, cwd=folder)

    if wait:
        return sbatch_and_wait(list(args), query)
    done = query(["sbatch", "--parsable", *args])
    return done, done.stdout.strip().split(";")[0]


def job_output(folder: Path, job: str) -> str:
    return (folder / f"xffl-xffl-{job}.out").read_text()


def final_line(text: str) -> str:
    return [line for line in text.splitlines() if " -> " in line and "fingerprint" in line][-1]


def test_outside_a_job_the_script_says_how_to_submit_it() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(
        ["bash", str(SBATCH), "train.py"], env=clean, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "not inside a SLURM job: submit me with sbatch" in done.stderr


def test_two_nodes_two_tasks_placements(env: dict[str, str], tmp_path: Path) -> None:
    done, job = sbatch(env, tmp_path, str(SBATCH), "-m", "xffl_hpc", "env", "--json")
    assert done.returncode == 0, done.stderr
    found = placements(job_output(tmp_path, job))
    assert [(p["rank"], p["local_rank"], p["node_rank"]) for p in found] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 0, 1),
        (3, 1, 1),
    ]
    assert all(
        p["scheduler"] == "slurm"
        and p["launcher"] == "srun"
        and p["job_id"] == job
        and p["world_size"] == 4
        and p["hostnames"] == ["n1", "n2"]
        and p["master_addr"] == "n1"
        and p["cpus_per_task"] == 2
        for p in found
    )
    assert len({p["master_port"] for p in found}) == 1


SHOW_CPUS = [
    "-c",
    "import json, os; print('CPUS ' + json.dumps([len(os.sched_getaffinity(0)),"
    " os.environ.get('OMP_NUM_THREADS')]))",
]


def cpus_seen(output: str) -> list[tuple[int, str | None]]:
    """(CPUs the task may run on, its OMP_NUM_THREADS) printed by every SHOW_CPUS task."""
    found = [json.loads(line[5:]) for line in output.splitlines() if line.startswith("CPUS ")]
    return sorted((cpus, omp) for cpus, omp in found)


# The cluster pins tasks (task/affinity) but its nodes wrap onto this machine's CPUs: a
# node pins 2 CPUs for each of its tasks only where the machine has 2 per task. 1 CPU per
# task shows that tasks are pinned at all.
@pytest.mark.parametrize(("cpus", "per_node"), [(2, 1), (1, 2)])
def test_every_task_runs_on_the_cpus_per_task_asked_for(
    env: dict[str, str], tmp_path: Path, cpus: int, per_node: int
) -> None:
    assert len(os.sched_getaffinity(0)) >= cpus * per_node, "too few CPUs on this machine"
    options = ["--nodes=2", f"--ntasks-per-node={per_node}", f"--cpus-per-task={cpus}"]
    done, job = sbatch(env, tmp_path, *options, str(SBATCH), *SHOW_CPUS)
    output = job_output(tmp_path, job)
    assert done.returncode == 0, output[-3000:]
    assert cpus_seen(output) == [(cpus, str(cpus))] * (2 * per_node), output[-3000:]


def test_each_het_component_runs_on_its_own_cpus_per_task(
    env: dict[str, str], tmp_path: Path
) -> None:
    components = ["-N1", "--ntasks-per-node=1", "-c2", ":", "-N1", "--ntasks-per-node=2", "-c1"]
    done, job = sbatch(env, tmp_path, *components, str(SBATCH), *SHOW_CPUS)
    output = job_output(tmp_path, job)
    assert done.returncode == 0, output[-3000:]
    # OMP_NUM_THREADS is not per component: the batch shell exports one value for all.
    assert [cpus for cpus, _ in cpus_seen(output)] == [1, 1, 2], output[-3000:]


def test_example_trains_with_federated_groups(env: dict[str, str], tmp_path: Path) -> None:
    args = [str(EXAMPLE), "--steps", "30", "--federated", "2"]
    done, job = sbatch(env, tmp_path, str(SBATCH), *args)
    output = job_output(tmp_path, job)
    assert done.returncode == 0, output[-3000:]
    assert "federated: world size 4, 2 federated groups of 2 ranks" in output
    assert "shards agree" in output
    first, last = (float(x) for x in re.findall(r"loss ([\d.]+) -> ([\d.]+)", output)[-1])
    assert last < first
    assert "srun ended with status 0" in output


def test_het_job_components_become_federated_groups(env: dict[str, str], tmp_path: Path) -> None:
    components = ["-N1", "--ntasks-per-node=2", ":", "-N1", "--ntasks-per-node=1"]
    args = [str(EXAMPLE), "--steps", "20", "--federated-from-het", "--hsdp", "1"]
    done, job = sbatch(env, tmp_path, *components, str(SBATCH), *args)
    output = job_output(tmp_path, job)
    assert done.returncode == 0, output[-3000:]
    assert "2 federated groups of (2, 1) ranks" in output, output[-3000:]
    assert "averaging groups (1):  [0 2]" in output
    assert "shards agree" in output


def _wait_for(predicate, what: str, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def test_preempted_job_requeues_and_resumes_without_losing_a_step(
    env: dict[str, str], tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    args = ["--steps", "100", "--every", "10", "--federated", "2"]
    done, job = sbatch(
        env,
        tmp_path,
        str(SBATCH),
        str(EXAMPLE),
        *args,
        "--checkpoint",
        str(checkpoints),
        "--step-time",
        "0.05",
        wait=False,
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / f"xffl-xffl-{job}.out"
    try:
        _wait_for(lambda: log.exists() and "step 20 " in log.read_text(), "step 20")
        warned = run(["scancel", "--batch", "--signal=USR1", job], env)
        assert warned.returncode == 0, warned.stderr
        _wait_for(lambda: not run(["squeue", "-h", "-j", job], env).stdout.strip(), "the job's end")
    finally:
        run(["scancel", job], env)
    output = log.read_text()
    stopped = re.search(r"preempted: checkpointed step (\d+)", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 20 <= step < 100
    assert "requeueing job" in output
    assert f"job {job} (restart 1)" in output
    assert f"resumed from step {step} " in output
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 100
    # The same run without preemption ends with the very same weights: no step was lost
    # or repeated, and the optimizer and data streams were restored exactly.
    whole = subprocess.run(
        [sys.executable, "-m", "xffl_hpc", "emulate", "--nodes", "2", "--tasks-per-node", "2",
         "--", str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
        cwd=ROOT,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stdout[-3000:]
    expected = final_line(whole.stdout).split("] ", 1)[1]
    assert re.sub(r"[\d.]+ s ", "", final_line(output)) == re.sub(r"[\d.]+ s ", "", expected)


def test_requeue_stops_after_the_allowed_restarts(env: dict[str, str], tmp_path: Path) -> None:
    wants_requeue = ["-c", "import sys; sys.exit(75)"]
    run_env = {**env, "XFFL_MAX_RESTARTS": "0"}
    done, job = sbatch(run_env, tmp_path, "-N1", "--ntasks-per-node=1", str(SBATCH), *wants_requeue)
    assert done.returncode == 75
    output = job_output(tmp_path, job)
    assert "already restarted 0 time(s) (XFFL_MAX_RESTARTS=0): stopping" in output
    assert "requeueing" not in output


def test_arguments_reach_the_script_verbatim(env: dict[str, str], tmp_path: Path) -> None:
    hostile = ["$(touch PWNED)", "; touch PWNED2", 'it\'s "quoted"', "two\nlines", "*"]
    show = ["-c", "import json, sys; print('ARGV ' + json.dumps(sys.argv[1:]))", *hostile]
    done, job = sbatch(env, tmp_path, "-N1", "--ntasks-per-node=1", str(SBATCH), *show)
    assert done.returncode == 0, done.stderr
    line = next(x for x in job_output(tmp_path, job).splitlines() if x.startswith("ARGV "))
    assert json.loads(line[5:]) == hostile
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.parametrize(
    ("mode", "named"),
    [
        ("fail", "task 3: Exited with exit code 1"),
        ("kill", "task 3: Killed"),
        ("collective", "task 3: Exited with exit code 1"),
    ],
)
def test_a_dying_rank_ends_the_job_fast_named_and_leaves_nothing(
    env: dict[str, str], tmp_path: Path, mode: str, named: str
) -> None:
    started = time.monotonic()
    done, job = sbatch(env, tmp_path, str(SBATCH), str(RANK_SCRIPT), mode, "3")
    assert time.monotonic() - started < 45  # --kill-on-bad-exit: no waiting for the others
    output = job_output(tmp_path, job)
    # srun's status is the highest of its tasks': the ones it terminated count 143.
    assert done.returncode != 0, output[-3000:]
    assert named in output, output[-3000:]
    assert f"srun ended with status {done.returncode}" in output
    found = printed_pids(output)
    assert len(found) == 8 and all_gone(found), output[-3000:]
