"""The distributed core with real processes on gloo/CPU under fake scheduler environments.

Each test starts 1 to 8 processes (tests/dist_worker.py), each reading its own SLURM or
PBS environment, and checks on every rank the state, the meshes and groups against the
topology, real collectives over each group, FSDP2 training and federated averaging.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakeenv import free_port, srun_task
from tests.multiproc import RankResult, launch
from xffl_hpc.topology import Topology


def slurm_job(counts: list[int], **extra: str) -> list[dict[str, str]]:
    hosts = [f"n{i + 1}" for i in range(len(counts))]
    port = str(free_port())
    rdzv = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **extra}
    return [srun_task(42, hosts, counts, rank) | rdzv for rank in range(sum(counts))]


def pbs_mpiexec_job(tmp_path: Path, counts: list[int]) -> list[dict[str, str]]:
    """mpiexec (Hydra) ranks inside a PBS job whose node file lists every slot."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"x{i}\n" * n for i, n in enumerate(counts)))
    port = str(free_port())
    environments = []
    for count in counts:
        for local in range(count):
            environments.append(
                {
                    "PBS_JOBID": "9.pbs",
                    "PBS_NODEFILE": str(nodefile),
                    "PMI_RANK": str(len(environments)),
                    "PMI_SIZE": str(sum(counts)),
                    "MPI_LOCALRANKID": str(local),
                    "MPI_LOCALNRANKS": str(count),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port,
                }
            )
    return environments


def reports(results: list[RankResult]) -> list[dict]:
    """Every rank's report, once each has succeeded without numpy (tests/torch_only)."""
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank} failed:\n{result.stderr[-3000:]}"
        assert result.report is not None and result.report["numpy_importable"] is False
    return [result.report for result in results]


def check_groups(found: list[dict], topology: Topology) -> None:
    """Groups and meshes on every rank equal the topology's; collectives over them work."""
    for report in found:
        rank = report["rank"]
        averaging = topology.averaging_group(rank)
        assert report["federated_group"] == (list(averaging) if averaging else None)
        if averaging:
            assert report["federated_group_sum"] == sum(r + 1 for r in averaging)
        replica = topology.replica_group(rank)
        assert report["replica_group"] == (list(replica) if replica else None)
        if topology.federated is not None:
            federation = list(topology.federation(topology.group_of(rank)))
            assert report["federation"] == federation
            assert report["federation_sum"] == sum(r + 1 for r in federation)
        shard = list(topology.shard_group(rank))
        mesh = report["hsdp_mesh"] or report["fsdp_mesh"]
        rows = mesh["ranks"] if report["hsdp_mesh"] else [mesh["ranks"]]
        assert shard in rows
        if replica:
            assert list(replica) in [list(column) for column in zip(*rows, strict=True)]


def check_training_and_average(found: list[dict], topology: Topology) -> None:
    """Loss falls; after averaging every rank holds the mean of its averaging group."""
    for report in found:
        assert report["losses"][-1] < report["losses"][0]
    by_rank = {report["rank"]: report for report in found}
    differed = False
    for report in found:
        rank = report["rank"]
        sender = rank if report["receive_from"] is None else report["receive_from"]
        group = topology.averaging_group(sender)
        before = [by_rank[member]["before"] for member in group]
        differed |= any(b != before[0] for b in before)
        for index, values in enumerate(report["after"]):
            columns = zip(*(b[index] for b in before), strict=True)
            expected = [sum(column) / len(group) for column in columns]
            assert values == pytest.approx(expected, rel=1e-5, abs=1e-6), (rank, index)
    assert differed, "the groups trained on different data, so shards must differ before"


def test_fsdp_across_two_slurm_nodes() -> None:
    found = reports(launch(slurm_job([2, 2]), {"train": 4}))
    topology = Topology.build(4)
    check_groups(found, topology)
    for report in found:
        assert (report["node_rank"], report["node_local_rank"]) == divmod(report["rank"], 2)
        assert (report["mode"], report["strategy"]) == ("fsdp", "FULL_SHARD")
        assert report["fsdp_mesh"] == {"ranks": [0, 1, 2, 3], "names": ["shard"]}
        assert report["losses"][-1] < report["losses"][0]
        assert "rank" in report["text"] and "mode fsdp" in report["text"]


def test_hsdp_mesh_and_training() -> None:
    found = reports(launch(slurm_job([2, 2]), {"setup": {"hsdp": 2}, "train": 4}))
    check_groups(found, Topology.build(4, hsdp=2))
    for report in found:
        assert report["hsdp_mesh"] == {"ranks": [[0, 1], [2, 3]], "names": ["replica", "shard"]}
        assert report["strategy"] == "HYBRID_SHARD"
        assert report["replica_local_rank"] == report["rank"] % 2
        assert report["losses"][-1] < report["losses"][0]


def test_federated_fsdp_groups_average() -> None:
    found = reports(launch(slurm_job([2, 2]), {"setup": {"federated": 2}, "train": 4}))
    topology = Topology.build(4, federated=2)
    check_groups(found, topology)
    check_training_and_average(found, topology)


def test_federated_hsdp_symmetric_eight_ranks() -> None:
    setup = {"setup": {"federated": 4, "hsdp": 2}, "train": 3}
    found = reports(launch(slurm_job([2, 2, 2, 2]), setup))
    topology = Topology.build(8, hsdp=2, federated=4)
    check_groups(found, topology)
    check_training_and_average(found, topology)
    assert found[5]["hsdp_mesh"] == {"ranks": [[4, 5], [6, 7]], "names": ["replica", "shard"]}


def test_asymmetric_groups_under_pbs_mpiexec_reach_non_senders(tmp_path: Path) -> None:
    setup = {"setup": {"federated": [2, 4], "hsdp": 2}, "train": 3}
    found = reports(launch(pbs_mpiexec_job(tmp_path, [2, 2, 2]), setup))
    topology = Topology.build(6, hsdp=2, federated=(2, 4))
    check_groups(found, topology)
    check_training_and_average(found, topology)
    senders = sorted(report["rank"] for report in found if report["is_sender"])
    assert senders == [0, 1, 2, 5]
    assert {r["rank"]: r["receive_from"] for r in found if not r["is_sender"]} == {3: 5, 4: 2}
    # Hydra gives no node index: gathered host names say all six run on this one host.
    assert {(r["node_rank"], r["node_world_size"]) for r in found} == {(0, 1)}


def test_federated_groups_in_nodes_from_the_reference_variable() -> None:
    environments = slurm_job([2, 2], XFFL_FEDERATED_LOCAL_WORLD_SIZE="1,1")
    found = reports(launch(environments, {}))
    for report in found:
        assert report["federated_local_size"] == [2, 2]
        assert report["federated_rank"] == report["node_rank"]


def test_the_reference_variable_that_does_not_fit_the_nodes_is_named() -> None:
    environments = slurm_job([1, 1, 1, 1], XFFL_FEDERATED_LOCAL_WORLD_SIZE="1,1")
    for result in launch(environments, {}, timeout=90):
        assert result.returncode == 3 and result.report is not None
        assert result.report["message"] == (
            "XFFL_FEDERATED_LOCAL_WORLD_SIZE=1,1: the groups add up to 2 nodes but there "
            "are 4 nodes"
        )


def test_an_explicit_group_local_size_that_the_ranks_contradict_is_named() -> None:
    port = str(free_port())
    environments = [
        {"RANK": str(rank), "WORLD_SIZE": "4", "LOCAL_RANK": str(rank % 2)}
        | {"GROUP_RANK": str(rank // 2), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        for rank in range(4)
    ]
    results = launch(environments, {"setup": {"group_local_size": 4}}, timeout=90)
    for rank, result in enumerate(results):
        assert result.returncode == 3 and result.report is not None, result.stderr[-2000:]
        assert result.report["message"].startswith(
            f"group_local_size=4 but the ranks found 2 rank(s) on node {rank // 2} "
        )


def test_federated_groups_from_het_job_components() -> None:
    het = {
        "SLURM_HET_SIZE": "2",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "n1",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "n2",
    }
    setup = {"setup": {"federated_from_het": True, "hsdp": 1}, "train": 2}
    found = reports(launch(slurm_job([2, 1], **het), setup))
    assert [report["federated_rank"] for report in found] == [0, 0, 1]
    assert all(report["federated_local_size"] == [2, 1] for report in found)


def test_bad_hsdp_fails_on_every_rank_naming_it() -> None:
    results = launch(slurm_job([2, 2]), {"setup": {"hsdp": 3}}, timeout=90)
    for result in results:
        assert result.returncode == 3
        assert result.report["error"] == "TopologyError"
        assert "hsdp=3" in result.report["message"]


def test_single_process_without_scheduler() -> None:
    found = reports(launch([{}], {"train": 3}))
    report = found[0]
    assert (report["rank"], report["world_size"], report["mode"]) == (0, 1, "fsdp")
    assert report["fsdp_mesh"] == {"ranks": [0], "names": ["shard"]}
    assert report["losses"][-1] < report["losses"][0]
