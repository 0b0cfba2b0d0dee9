"""The two-host network bed (`.ci/netns-cluster.sh`) behaves like two real hosts.

Each host has its own name, its own /etc/hosts in which that name is 127.0.1.1, a routed
eth0 and an unrouted eth1; SLURM, Open MPI and Hydra start processes on both; the ssh
stand-in hands the remote side a fresh environment as ssh does; and a plain gloo job with
MASTER_ADDR = first node fails the way it does on such real hosts.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest

from tests.netns import (
    ADDRESSES,
    HOSTS,
    HYDRA_ACROSS_HOSTS,
    INTERFACE,
    OPENMPI_ACROSS_HOSTS,
    OWN_NAME_ADDRESS,
    RSH_AGENT,
    UNROUTED,
    UNROUTED_INTERFACE,
    kill_tree,
    on_host,
    require_bed,
    require_programs,
    start_on_host,
)

pytestmark = pytest.mark.slurm

H1, H2 = HOSTS[0], HOSTS[1]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return require_bed()


def ok(done) -> str:
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


IDENTITY = """
import json, socket
names = {h: socket.gethostbyname(h) for h in %r}
print(json.dumps({"hostname": socket.gethostname(), "names": names}))
"""


@pytest.mark.parametrize("host", HOSTS)
def test_each_host_has_its_own_name_and_hosts_file(env: dict[str, str], host: str) -> None:
    seen = json.loads(ok(on_host(host, [sys.executable, "-c", IDENTITY % (HOSTS,)], env, 20)))
    assert seen["hostname"] == host
    expected = {h: OWN_NAME_ADDRESS if h == host else ADDRESSES[h] for h in HOSTS}
    assert seen["names"] == expected
    assert ok(on_host(host, ["hostname"], env, 10)).strip() == host


def test_interfaces_routed_and_unrouted(env: dict[str, str]) -> None:
    for i, host in enumerate(HOSTS, start=1):
        found = json.loads(ok(on_host(host, ["ip", "-j", "-4", "addr", "show"], env, 10)))
        up = {
            link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]
            for link in found
            if "UP" in link["flags"]
        }
        assert up == {
            "lo": ["127.0.0.1/8"],
            INTERFACE: [f"{ADDRESSES[host]}/24"],
            UNROUTED_INTERFACE: [f"10.99.{i}.1/24"],
        }
        assert ok(on_host(host, ["ip", "route", "show", "default"], env, 10)).strip() == ""


LISTEN = """
import socket, sys
server = socket.create_server(("0.0.0.0", 0))
server.settimeout(20)
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.sendall(socket.gethostname().encode())
connection.close()
"""

CONNECT = """
import socket, sys
port = int(sys.argv[1])
try:
    socket.create_connection((sys.argv[2], port), timeout=3)
    print("unrouted: connected")
except OSError as error:
    print(f"unrouted: {type(error).__name__}: {error}")
with socket.create_connection((sys.argv[3], port), timeout=5) as connection:
    print("routed:", connection.recv(100).decode())
"""


def test_tcp_from_h1_reaches_h2_on_eth0_only(env: dict[str, str]) -> None:
    # h2 listens on every address: only routing keeps h1 from its eth1 address
    listener = start_on_host(H2, [sys.executable, "-c", LISTEN], env)
    try:
        port = listener.stdout.readline().strip()
        assert port.isdigit(), listener.stderr.read() if listener.poll() is not None else port
        done = on_host(
            H1, [sys.executable, "-c", CONNECT, port, UNROUTED[H2], ADDRESSES[H2]], env, 20
        )
        lines = ok(done).splitlines()
        assert lines[0].startswith("unrouted: OSError"), lines
        assert "unreachable" in lines[0], lines
        assert lines[1] == f"routed: {H2}"
    finally:
        kill_tree(listener.pid)
        listener.communicate()


def test_srun_from_h1_runs_on_both_hosts(env: dict[str, str]) -> None:
    out = ok(on_host(H1, ["srun", f"-N{len(HOSTS)}", "-l", "hostname"], env, 60))
    assert sorted(out.splitlines()) == sorted(f"{i}: {h}" for i, h in enumerate(HOSTS))
    # a task on h2 sees h1 under its real address (MASTER_ADDR = first node works by name)
    out = ok(
        on_host(H1, ["srun", f"-N{len(HOSTS)}", "-l", "getent", "hosts", H1], env, 60)
    ).splitlines()
    assert sorted(line.split()[:2] for line in out) == [
        ["0:", OWN_NAME_ADDRESS],
        *[[f"{i}:", ADDRESSES[H1]] for i in range(1, len(HOSTS))],
    ]


def test_sbatch_from_h1(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    submit = ["sbatch", "--parsable", f"-N{len(HOSTS)}", f"--output={out}"]
    job = ok(on_host(H1, [*submit, "--wrap", "srun hostname"], env, 30)).strip()
    # sbatch --wait polls every 2..10 s; scontrol answers at once
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        shown = ok(on_host(H1, ["scontrol", "-o", "show", "job", job], env, 10))
        state = shown.split("JobState=")[1].split()[0]
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            break
        time.sleep(0.2)
    assert state == "COMPLETED", shown
    assert sorted(out.read_text().split()) == sorted(HOSTS)


SHOW = 'echo "$(hostname) ${PBS_JOBID:-unset}"'


def test_openmpi_over_the_rsh_agent(env: dict[str, str]) -> None:
    require_programs("mpirun.openmpi")
    hosts = ",".join(HOSTS)
    launch = ["mpirun.openmpi", *OPENMPI_ACROSS_HOSTS, "--host", hosts, "-np", str(len(HOSTS))]
    out = ok(on_host(H1, [*launch, "hostname"], env, 30))
    assert sorted(out.split()) == sorted(HOSTS)
    # Open MPI does not forward PBS_*: the rank on h2 must not see it (ssh does not either)
    out = ok(on_host(H1, [*launch, "bash", "-c", SHOW], {**env, "PBS_JOBID": "7.bed"}, 30))
    assert sorted(out.splitlines()) == [f"{H1} 7.bed", *(f"{h} unset" for h in HOSTS[1:])]


def test_hydra_over_the_rsh_agent(env: dict[str, str]) -> None:
    require_programs("mpiexec.hydra")
    launch = ["mpiexec.hydra", *HYDRA_ACROSS_HOSTS, "-hosts", ",".join(HOSTS)]
    launch += ["-n", str(len(HOSTS))]
    out = ok(on_host(H1, [*launch, "hostname"], env, 30))
    assert sorted(out.split()) == sorted(HOSTS)
    # Hydra forwards the whole environment
    out = ok(on_host(H1, [*launch, "bash", "-c", SHOW], {**env, "PBS_JOBID": "7.bed"}, 30))
    assert sorted(out.splitlines()) == [f"{h} 7.bed" for h in HOSTS]


def test_rsh_agent_is_like_ssh(env: dict[str, str]) -> None:
    agent = str(RSH_AGENT)
    # options before the host are ignored, user@ dropped, arguments joined for the shell,
    # a fresh login environment in $HOME, the remote exit status comes back
    command = [agent, "-x", "-o", "BatchMode=yes", "-p", "22", f"root@{H2}"]
    command += ['echo "$(hostname) $PWD ${XFFL_BED_PROBE:-unset}";', "exit", "3"]
    done = on_host(H1, command, {**env, "XFFL_BED_PROBE": "leaked"}, 10)
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == [H2, str(Path.home()), "unset"]
    by_address = on_host(H1, [agent, ADDRESSES[H2], "hostname"], env, 10)
    assert ok(by_address).strip() == H2
    assert on_host(H1, [agent, "no-such-host", "true"], env, 10).returncode == 255


GLOO = """
import datetime, os, socket
import torch, torch.distributed as dist
dist.init_process_group(
    "gloo",
    rank=int(os.environ["SLURM_PROCID"]),
    world_size=int(os.environ["SLURM_NTASKS"]),
    timeout=datetime.timedelta(seconds=15),
)
value = torch.ones(1)
dist.all_reduce(value)
print(socket.gethostname(), int(value.item()), flush=True)
dist.destroy_process_group()
"""


def test_plain_gloo_fails_on_127_0_1_1_and_trains_on_eth0(env: dict[str, str]) -> None:
    """The real-hosts failure: MASTER_ADDR=h1 is 127.0.1.1 on h1, so gloo's address is."""
    pytest.importorskip("torch")
    port = str(random.randint(20000, 30000))
    job = {**env, "MASTER_ADDR": H1, "MASTER_PORT": port}
    srun = ["srun", f"-N{len(HOSTS)}", "--kill-on-bad-exit=1", "-l"]
    failed = on_host(H1, [*srun, sys.executable, "-c", GLOO], job, 60)
    assert failed.returncode != 0
    assert "connectFullMesh failed" in failed.stderr, failed.stderr[-3000:]
    assert f"remote=[{OWN_NAME_ADDRESS}]" in failed.stderr, failed.stderr[-3000:]

    job["MASTER_PORT"] = str(int(port) + 1)
    job["GLOO_SOCKET_IFNAME"] = INTERFACE
    done = on_host(H1, [*srun, sys.executable, "-c", GLOO], job, 60)
    assert sorted(ok(done).splitlines()) == sorted(
        f"{i}: {h} {len(HOSTS)}" for i, h in enumerate(HOSTS)
    )
