"""Real ``mpiexec`` (MPICH's Hydra) in a Torque job, seen from sister nodes: Torque writes
``PBS_NODEFILE`` on the first node only, so the ranks are placed by their MPI variables
and learn their nodes at the rendezvous (ranks that cannot import numpy)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.fakeenv import clean_environ, free_port
from tests.multiproc import ROOT, TORCH_ONLY
from tests.test_pbs_script import need


def test_ranks_without_the_node_file_are_placed_by_mpiexec_and_train(tmp_path: Path) -> None:
    mpiexec = need("mpiexec.hydra")
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 4)
    environ = clean_environ() | {
        "PBS_JOBID": "77.torque-server",
        "PBS_NODEFILE": str(nodefile),
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": TORCH_ONLY,
    }
    options = json.dumps({"setup": {"federated": 2}, "train": 3})
    # Hydra reads the node file here (the first node); every rank is told a path that
    # does not exist, as on a sister node
    missing = str(tmp_path / "aux" / "77.torque-server")
    worker = [sys.executable, "-m", "tests.dist_worker", options]
    done = subprocess.run(
        [mpiexec, "-n", "4", "-genv", "PBS_NODEFILE", missing, *worker],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = sorted(
        (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
        key=lambda report: report["rank"],
    )
    assert [report["rank"] for report in found] == [0, 1, 2, 3]
    for report in found:
        assert report["numpy_importable"] is False
        assert (report["world_size"], report["node_local_rank"]) == (4, report["rank"])
        assert (report["node_rank"], report["node_world_size"], report["node_local_size"]) == (
            0,
            1,
            4,
        )
        assert report["federated_group_sum"] in (1 + 3, 2 + 4)
        assert report["losses"][-1] < report["losses"][0]
