"""The ``xffl-hpc`` command line, run as a user runs it: a separate process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fakeenv import clean_environ, srun_task


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xffl_hpc", *args],
        env=clean_environ() | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_env_json_is_one_object_on_stdout() -> None:
    done = run_cli("env", "--json", env=srun_task(4242, ["gpu001", "gpu002"], [4, 4], 5))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    data = json.loads(done.stdout)
    assert (data["rank"], data["world_size"], data["node_rank"], data["local_rank"]) == (5, 8, 1, 1)
    assert data["hostnames"] == ["gpu001", "gpu002"]
    assert list(data)[:12] == [
        "scheduler",
        "launcher",
        "job_id",
        "rank",
        "world_size",
        "local_rank",
        "local_world_size",
        "node_rank",
        "num_nodes",
        "master_addr",
        "master_port",
        "hostnames",
    ]


def test_env_table_lists_the_same_fields() -> None:
    done = run_cli("env", env=srun_task(4242, ["gpu001", "gpu002"], [4, 4], 5))
    assert done.returncode == 0, done.stderr
    table = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert table["rank"] == "5"
    assert table["hostnames"] == "gpu001,gpu002"
    assert table["het_group"] == "-"


def test_env_prints_only_the_placement() -> None:
    secret = {"AWS_SECRET_ACCESS_KEY": "do-not-print"}
    done = run_cli("env", "--json", env=secret)
    table = run_cli("env", env=secret)
    assert "do-not-print" not in done.stdout + table.stdout


def test_env_answers_without_importing_torch() -> None:
    probe = (
        "import sys; from xffl_hpc.cli import main; code = main(['env', '--json']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0", "SLURM_PROCID": "x"}, "SLURM_PROCID='x'"),
        ({"RANK": "0"}, "RANK='0' is set but WORLD_SIZE is not"),
        ({"PBS_JOBID": "1.srv", "PBS_NODEFILE": "/nonexistent/nodefile"}, "PBS_NODEFILE="),
        ({"OMPI_COMM_WORLD_RANK": "1"}, "OMPI_COMM_WORLD_SIZE is not"),
        ({"PMIX_RANK": "3"}, "PMIX_RANK='3'"),
        ({"MASTER_PORT": "line\nbreak"}, "MASTER_PORT='line\\nbreak'"),
    ],
)
def test_broken_environment_exits_2_with_one_line(env: dict[str, str], named: str) -> None:
    done = run_cli("env", "--json", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr


def test_hostlist_expand_and_compress() -> None:
    expanded = run_cli("hostlist", "expand", "gpu[001-003,010],login-[1-2]a")
    assert expanded.stdout.split() == [
        "gpu001",
        "gpu002",
        "gpu003",
        "gpu010",
        "login-1a",
        "login-2a",
    ]
    compressed = run_cli("hostlist", "compress", "gpu001,gpu002", "gpu003")
    assert compressed.stdout.strip() == "gpu[001-003]"


def test_hostlist_bad_expression_exits_2() -> None:
    done = run_cli("hostlist", "expand", "gpu[1-")
    assert done.returncode == 2
    assert "argument='gpu[1-'" in done.stderr
