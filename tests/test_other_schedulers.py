"""PBS, LSF, Flux and the MPI launchers: edge cases and errors the fixtures do not cover."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xffl_hpc import PlacementError, detect
from xffl_hpc.schedulers import hostfile


def nodefile(folder: Path, lines: list[str]) -> str:
    folder.mkdir(exist_ok=True)
    path = folder / "nodefile"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def hydra_rank(rank: int, counts: list[int]) -> dict[str, str]:
    """The variables MPICH's Hydra gives ``rank`` with ``counts[i]`` ranks on node i."""
    first = 0
    node = 0
    while rank >= first + counts[node]:
        first += counts[node]
        node += 1
    return {
        "PMI_RANK": str(rank),
        "PMI_SIZE": str(sum(counts)),
        "PMI_FD": "7",
        "MPI_LOCALRANKID": str(rank - first),
        "MPI_LOCALNRANKS": str(counts[node]),
    }


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6))
def test_mpiexec_in_pbs_every_rank_once_and_nodes_from_hostname(counts: list[int]) -> None:
    hosts = [f"x100{i}c0s0b0n0" for i in range(len(counts))]
    lines = [
        f"{host}.hsn.example.org" for host, n in zip(hosts, counts, strict=True) for _ in range(n)
    ]
    with tempfile.TemporaryDirectory() as folder:
        check_mpiexec_layout(nodefile(Path(folder), lines), hosts, counts)


def check_mpiexec_layout(path: str, hosts: list[str], counts: list[int]) -> None:
    seen = []
    for rank in range(sum(counts)):
        env = {"PBS_JOBID": "77.pbs", "PBS_NODEFILE": path, **hydra_rank(rank, counts)}
        node = next(i for i in range(len(counts)) if rank < sum(counts[: i + 1]))
        placement = detect(env, hostname=hosts[node])
        assert (placement.scheduler, placement.launcher) == ("pbs", "pmi")
        assert placement.node_rank == node
        assert placement.local_world_size == counts[node]
        assert placement.num_nodes == len(counts)
        assert placement.hostnames[node].split(".")[0] == hosts[node]
        seen.append((placement.rank, placement.node_rank, placement.local_rank))
    assert sorted(r for r, _, _ in seen) == list(range(sum(counts)))
    for node, count in enumerate(counts):
        assert sorted(local for _, n, local in seen if n == node) == list(range(count))


#: What Hydra's mpiexec gives rank 6 of 8 (4 per node) on a Torque sister node: the job
#: shell's PBS variables, forwarded, and the rank's PMI ones.
TORQUE_SISTER_RANK = {
    "PBS_JOBID": "5678.torque-server",
    "PBS_TASKNUM": "1",
    "PBS_VNODENUM": "0",
    "PMI_RANK": "6",
    "PMI_SIZE": "8",
    "PMI_FD": "9",
    "MPI_LOCALRANKID": "2",
    "MPI_LOCALNRANKS": "4",
}


@pytest.mark.parametrize(
    ("nodefile", "launcher_env", "launcher"),
    [
        ("absent", {}, "pmi"),  # forwarded from the job shell; no such file on this node
        (None, {}, "pmi"),  # not set on the sister node
        # Open MPI's orted started by tm_spawn: Torque's TM variables, no node file.
        (
            None,
            {
                "PBS_TASKNUM": "3",
                "PBS_VNODENUM": "4",
                "OMPI_COMM_WORLD_RANK": "6",
                "OMPI_COMM_WORLD_SIZE": "8",
                "OMPI_COMM_WORLD_LOCAL_RANK": "2",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
            },
            "openmpi",
        ),
        ("absent", {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2"}, "torchrun"),
    ],
)
def test_torque_sister_rank_comes_from_its_launcher_with_hosts_unknown(
    tmp_path: Path, nodefile: str | None, launcher_env: dict[str, str], launcher: str
) -> None:
    env = TORQUE_SISTER_RANK | launcher_env
    if launcher != "pmi":
        env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "MPI_"))}
    if nodefile is not None:
        env["PBS_NODEFILE"] = str(tmp_path / nodefile)
    placement = detect(env, hostname="n02")
    assert (placement.scheduler, placement.launcher) == ("pbs", launcher)
    assert (placement.rank, placement.world_size, placement.local_rank) == (6, 8, 2)
    assert (placement.hostnames, placement.node_rank, placement.num_nodes) == (None, None, None)
    assert placement.master_port is not None


def test_torque_sister_process_without_a_rank_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    env = {"PBS_JOBID": "1.srv", "PBS_NODEFILE": str(missing)}
    with pytest.raises(PlacementError) as error:
        detect(env)
    message = str(error.value)
    assert message.startswith(f"PBS_NODEFILE='{missing}' does not exist on this node")
    assert message.endswith("start the tasks with mpiexec, or set RANK, WORLD_SIZE and LOCAL_RANK")


def _unreadable(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"n1\n\xff\xfe\n")
    elif kind == "huge":
        with path.open("wb") as handle:
            handle.truncate(hostfile.MAX_BYTES + 1)
    else:
        path.write_text("n1\n")
        path.chmod(0)
    return path


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("folder", "cannot read the host file (Is a directory)"),
        ("binary", "host file is not UTF-8 text"),
        ("huge", "host file larger than"),
        pytest.param(
            "private",
            "cannot read the host file (Permission denied)",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"),
        ),
    ],
)
def test_pbs_nodefile_unreadable_but_present_is_an_error(
    tmp_path: Path, kind: str, named: str
) -> None:
    path = _unreadable(tmp_path, kind)
    for env in ({"PBS_JOBID": "1.srv"}, TORQUE_SISTER_RANK):
        with pytest.raises(PlacementError) as error:
            detect(env | {"PBS_NODEFILE": str(path)})
        assert str(error.value).startswith(f"PBS_NODEFILE='{path}': {named}")


def test_pbs_nodefile_line_with_spaces_is_refused(tmp_path: Path) -> None:
    env = {"PBS_JOBID": "1.srv", "PBS_NODEFILE": nodefile(tmp_path, ["n1", "n2 n3"])}
    with pytest.raises(PlacementError, match=r"PBS_NODEFILE=.*'n2 n3' is not a single host"):
        detect(env)


def test_pbs_job_shell_is_a_single_process(tmp_path: Path) -> None:
    env = {
        "PBS_JOBID": "1.srv",
        "PBS_NODEFILE": nodefile(tmp_path, ["n1", "n1", "n2", "n2"]),
        "PBS_TASKNUM": "1",
        "PBS_NODENUM": "0",
    }
    placement = detect(env, hostname="n1")
    assert (placement.scheduler, placement.launcher, placement.world_size) == ("pbs", "none", 1)
    assert placement.master_port == detect(env, hostname="n2").master_port


def test_torque_pbsdsh_rank_beyond_nodefile(tmp_path: Path) -> None:
    env = {
        "PBS_JOBID": "1.srv",
        "PBS_NODEFILE": nodefile(tmp_path, ["n1", "n1"]),
        "PBS_TASKNUM": "5",
        "PBS_VNODENUM": "2",
    }
    with pytest.raises(PlacementError, match=r"PBS_VNODENUM=2 but PBS_NODEFILE lists 2 slot"):
        detect(env)


@pytest.mark.parametrize(
    ("nodefile", "named"),
    [
        (None, "PBS_VNODENUM=4 is set but PBS_NODEFILE is not set: "),
        ("absent", "PBS_VNODENUM=4 is set but PBS_NODEFILE='{path}' does not exist on this node"),
        ("empty", "PBS_VNODENUM=4 is set but PBS_NODEFILE='{path}' lists no host"),
    ],
)
def test_torque_pbsdsh_without_node_file_names_it(
    tmp_path: Path, nodefile: str | None, named: str
) -> None:
    env = {"PBS_JOBID": "1.srv", "PBS_TASKNUM": "3", "PBS_VNODENUM": "4"}
    path = tmp_path / "nodefile"
    if nodefile == "empty":
        path.write_text("\n")
    if nodefile is not None:
        env["PBS_NODEFILE"] = str(path)
    with pytest.raises(PlacementError) as error:
        detect(env)
    assert named.format(path=path) in str(error.value)
    assert "a pbsdsh task needs the job's node file" in str(error.value)


def test_torque_pbsdsh_placement(tmp_path: Path) -> None:
    env = {
        "PBS_JOBID": "1.srv",
        "PBS_NODEFILE": nodefile(tmp_path, ["n1", "n1", "n1", "n2", "n2"]),
        "PBS_TASKNUM": "5",
        "PBS_VNODENUM": "4",
    }
    placement = detect(env, hostname="n2")
    assert (placement.launcher, placement.rank, placement.world_size) == ("pbsdsh", 4, 5)
    assert (placement.node_rank, placement.local_rank, placement.local_world_size) == (1, 1, 2)
    assert placement.tasks_per_node == (3, 2)


def test_pbs_job_ids_of_two_jobs_give_two_ports(tmp_path: Path) -> None:
    path = nodefile(tmp_path, ["n1"])
    ports = {detect({"PBS_JOBID": f"{j}.srv", "PBS_NODEFILE": path}).master_port for j in (8, 9)}
    assert len(ports) == 2


JSRUN_RANK_7 = {
    "JSM_NAMESPACE_RANK": "7",
    "JSM_NAMESPACE_SIZE": "12",
    "JSM_NAMESPACE_LOCAL_RANK": "1",
    "JSM_NAMESPACE_LOCAL_SIZE": "6",
}
OPENMPI_RANK_7 = {
    "OMPI_COMM_WORLD_RANK": "7",
    "OMPI_COMM_WORLD_SIZE": "13",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "6",
}


@pytest.mark.parametrize(
    ("allocation", "launcher_env", "hosts"),
    [
        # Summit: the launch node batch2 is listed first with one slot.
        ({"LSB_MCPU_HOSTS": "batch2 1 h22n07 42 h22n08 42"}, JSRUN_RANK_7, ("h22n07", "h22n08")),
        ({"LSB_HOSTS": "batch2 " + "h1 " * 6 + "h2 " * 6}, JSRUN_RANK_7, ("h1", "h2")),
        # No launch node listed: the first host has as many slots as the others.
        ({"LSB_MCPU_HOSTS": "h1 6 h2 6"}, JSRUN_RANK_7, ("h1", "h2")),
        # A first host listed again later holds two slots: a node of the job.
        ({"LSB_HOSTS": "h1 " + "h2 " * 6 + "h1 " * 5}, JSRUN_RANK_7, ("h1", "h2")),
        # One host only: nothing to drop.
        (
            {"LSB_MCPU_HOSTS": "h1 1"},
            {
                "JSM_NAMESPACE_RANK": "0",
                "JSM_NAMESPACE_SIZE": "1",
                "JSM_NAMESPACE_LOCAL_RANK": "0",
                "JSM_NAMESPACE_LOCAL_SIZE": "1",
            },
            ("h1",),
        ),
        # mpirun (not jsrun) on a CORAL machine starts a rank on the launch node too.
        ({"LSB_MCPU_HOSTS": "batch2 1 h1 6 h2 6"}, OPENMPI_RANK_7, ("batch2", "h1", "h2")),
    ],
)
def test_lsf_launch_node_dropped_only_under_jsrun_when_listed(
    allocation: dict[str, str], launcher_env: dict[str, str], hosts: tuple[str, ...]
) -> None:
    env = {"LSB_JOBID": "779469"} | allocation | launcher_env
    placement = detect(env, hostname=hosts[-1])
    assert placement.hostnames == hosts
    assert (placement.node_rank, placement.master_addr) == (len(hosts) - 1, hosts[0])


@pytest.mark.parametrize(
    ("variables", "hosts"),
    [
        (("LSB_DJOB_RANKFILE", "LSB_DJOB_HOSTFILE", "LSB_MCPU_HOSTS", "LSB_HOSTS"), ("r1", "r2")),
        (("LSB_DJOB_HOSTFILE", "LSB_MCPU_HOSTS", "LSB_HOSTS"), ("f1", "f2")),
        (("LSB_MCPU_HOSTS", "LSB_HOSTS"), ("m1", "m2")),
        (("LSB_HOSTS",), ("w1", "w2")),
    ],
)
def test_lsf_host_sources_in_order(
    tmp_path: Path, variables: tuple[str, ...], hosts: tuple[str, ...]
) -> None:
    """Each source lists other hosts, so the answer shows which one was read: the first."""
    values = {
        "LSB_DJOB_RANKFILE": nodefile(tmp_path / "rank", ["r1", "r1", "r2", "r2"]),
        "LSB_DJOB_HOSTFILE": nodefile(tmp_path / "host", ["f1", "f1", "f2", "f2"]),
        "LSB_MCPU_HOSTS": "m1 2 m2 2",
        "LSB_HOSTS": "w1 w1 w2 w2",
    }
    env = {"LSB_JOBID": "5"} | {name: values[name] for name in variables}
    env |= {
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    placement = detect(env, hostname=hosts[1])
    assert (placement.hostnames, placement.node_rank) == (hosts, 1)
    assert placement.sources["hostnames"] == variables[0]


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("LSB_MCPU_HOSTS", "h1 4 h2", "LSB_MCPU_HOSTS='h1 4 h2': expected pairs"),
        ("LSB_MCPU_HOSTS", "h1 four", "LSB_MCPU_HOSTS='four': expected a whole number"),
        ("LSB_MCPU_HOSTS", "h1 0", "LSB_MCPU_HOSTS='0': expected a whole number >= 1"),
        (
            "LSB_MCPU_HOSTS",
            "h1 600000 h2 600000",
            "LSB_MCPU_HOSTS='h1 600000 h2 600000': describes more than 1000000 slots",
        ),
        ("LSB_JOBID", "12a", "LSB_JOBID='12a'"),
        ("LSB_DJOB_RANKFILE", "{tmp}/absent", "LSB_DJOB_RANKFILE='{tmp}/absent': cannot read"),
        (
            "LSB_DJOB_RANKFILE",
            "{tmp}/openmpi",
            "LSB_DJOB_RANKFILE='{tmp}/openmpi': line 'rank 0=h1 slot=0' is not a single host",
        ),
        ("LSB_DJOB_HOSTFILE", "{tmp}/absent", "LSB_DJOB_HOSTFILE='{tmp}/absent': cannot read"),
        ("LSB_DJOB_HOSTFILE", "a\x00b", "LSB_DJOB_HOSTFILE='a\\x00b': not a file name (NUL byte)"),
    ],
)
def test_lsf_malformed_allocation_names_variable(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    (tmp_path / "openmpi").write_text("rank 0=h1 slot=0\n")
    env = {"LSB_JOBID": "5", variable: value.format(tmp=tmp_path)}
    with pytest.raises(PlacementError) as error:
        detect(env | JSRUN_RANK_7)
    assert named.format(tmp=tmp_path) in str(error.value)


def test_flux_has_no_host_list_but_a_node_count() -> None:
    env = {
        "FLUX_JOB_ID": "ƒD2e73NP",
        "FLUX_TASK_RANK": "5",
        "FLUX_JOB_SIZE": "8",
        "FLUX_TASK_LOCAL_ID": "1",
        "FLUX_JOB_NNODES": "2",
        "PMI_RANK": "5",
        "PMI_SIZE": "8",
    }
    placement = detect(env, hostname="node02")
    assert (placement.launcher, placement.num_nodes, placement.hostnames) == ("flux", 2, None)
    assert placement.master_addr is None
    assert placement.master_port is not None


def test_pals_without_pmi_size_asks_for_world_size() -> None:
    env = {"PALS_RANKID": "3", "PALS_LOCAL_RANKID": "3", "PMIX_RANK": "3"}
    with pytest.raises(PlacementError, match="PALS_RANKID=3 is set but PMI_SIZE is not"):
        detect(env)


def test_mpi_rank_without_local_rank_names_it() -> None:
    with pytest.raises(PlacementError, match="PMI_RANK=1 is set but MPI_LOCALRANKID is not"):
        detect({"PMI_RANK": "1", "PMI_SIZE": "2"})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"PALS_RANKID": "1", "PMI_SIZE": "4", "PALS_LOCAL_RANKID": "1", "PALS_NODEID": "5"},
            "PALS_NODEID=5 with the host count of PBS_NODEFILE=2: the node rank must be in 0..1",
        ),
        (
            {
                "FLUX_JOB_ID": "f1",
                "FLUX_TASK_RANK": "1",
                "FLUX_JOB_SIZE": "2",
                "FLUX_TASK_LOCAL_ID": "4",
                "FLUX_JOB_NNODES": "1",
            },
            "FLUX_TASK_LOCAL_ID=4 with FLUX_JOB_SIZE=2: the local rank must be in 0..1",
        ),
        (
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "GROUP_WORLD_SIZE": "1"},
            "LOCAL_RANK=3 with WORLD_SIZE=2: the local rank must be in 0..1",
        ),
    ],
)
def test_derived_counts_are_named_by_the_variables_they_come_from(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """A count the adapters derive (hosts in a node file, ranks on the only node) is named
    by the variable it comes from, never by a field name."""
    if env.get("PALS_RANKID"):
        env = env | {"PBS_JOBID": "1.srv", "PBS_NODEFILE": nodefile(tmp_path, ["a", "a", "b"])}
    with pytest.raises(PlacementError) as error:
        detect(env, hostname="a")
    assert str(error.value) == named


def test_srun_pmi2_agrees_and_stays_srun() -> None:
    env = {
        "SLURM_JOB_ID": "3",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_STEP_NODELIST": "n1",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "PMI_RANK": "1",
        "PMI_SIZE": "2",
    }
    placement = detect(env)
    assert (placement.launcher, placement.local_rank) == ("srun", 1)
