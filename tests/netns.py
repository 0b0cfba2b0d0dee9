"""Access to the two-host network bed that `.ci/netns-cluster.sh up` builds.

Hosts h1, h2 are network + mount + UTS namespaces on this machine: each has its own host
name, its own /etc/hosts (its own name is 127.0.1.1, the other host its 10.77.0.x
address), eth0 on the shared 10.77.0.0/24 bridge, and eth1 on an unrouted 10.99.N.0/24.
The file system is shared. SLURM (slurmctld on 10.77.0.1, one slurmd per host) is reached
with the environment from `require_bed()`; submit from inside a host, as from a login
node: ``on_host("h1", ["srun", "-N2", ...], env)``.

Multi-host launches without SLURM go through ``RSH_AGENT`` (an ssh stand-in):
``[*OPENMPI_ACROSS_HOSTS, "--host", "h1,h2", ...]`` for ``mpirun.openmpi`` and
``[*HYDRA_ACROSS_HOSTS, "-hosts", "h1,h2", ...]`` for ``mpiexec.hydra``. Like ssh, the
agent gives the remote command a fresh login environment (not the caller's), started
in $HOME; the launchers forward what they forward.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "netns-cluster.sh"
#: ssh stand-in: ``netns-rsh [ssh options] HOST CMD...`` runs CMD inside HOST.
RSH_AGENT = ROOT / ".ci" / "netns-rsh"
STATE_DIR = Path(os.environ.get("XFFL_NETNS_DIR", "/tmp/xffl-netns"))
SLURM_CONF = STATE_DIR / "etc" / "slurm.conf"


def _host_count() -> int:
    """XFFL_NETNS_HOSTS, else the count the last `up` recorded, else 2."""
    if "XFFL_NETNS_HOSTS" in os.environ:
        return int(os.environ["XFFL_NETNS_HOSTS"])
    try:
        return int((STATE_DIR / "etc" / "hosts-count").read_text())
    except (OSError, ValueError):
        return 2


HOSTS: tuple[str, ...] = tuple(f"h{i}" for i in range(1, _host_count() + 1))
#: eth0 of each host, on the bridge every host (and slurmctld, 10.77.0.1) shares.
ADDRESSES = {host: f"10.77.0.{10 + i}" for i, host in enumerate(HOSTS, start=1)}
#: eth1 of each host: up, but no other host has a route to it.
UNROUTED = {host: f"10.99.{i}.1" for i, host in enumerate(HOSTS, start=1)}
INTERFACE = "eth0"
UNROUTED_INTERFACE = "eth1"
#: What a host's own name resolves to on that host (Debian/Ubuntu default /etc/hosts).
OWN_NAME_ADDRESS = "127.0.1.1"

#: Hard limit on any one command run inside a host.
COMMAND_TIMEOUT = 60

#: mpirun.openmpi across the hosts without SLURM (add --host h1,h2 or a hostfile).
OPENMPI_ACROSS_HOSTS = [
    "--allow-run-as-root",
    "--mca",
    "plm_rsh_agent",
    str(RSH_AGENT),
    "--mca",
    "if_base_do_not_resolve",
    "1",
]
#: mpiexec.hydra across the hosts (add -hosts h1,h2); HYDRA_LAUNCHER_EXEC works too.
HYDRA_ACROSS_HOSTS = ["-launcher", "ssh", "-launcher-exec", str(RSH_AGENT)]


def bed_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) pointed at the bed's SLURM."""
    return {
        **(os.environ if base is None else base),
        "SLURM_CONF": str(SLURM_CONF),
        "XFFL_NETNS_DIR": str(STATE_DIR),
    }


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the two-host network tests: {reason}")
    pytest.skip(reason)


def require_programs(*names: str) -> None:
    """Skip (fail under CI) unless every program is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)}")


def require_bed() -> dict[str, str]:
    """The environment for the bed's SLURM; skip (fail under CI) when the bed is not up."""
    reason = None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "the network bed needs root (namespaces)"
    elif missing := [p for p in ("nsenter", "sinfo", "bash") if shutil.which(p) is None]:
        reason = f"not installed: {', '.join(missing)}"
    elif not SLURM_CONF.is_file():
        reason = f"no network bed: {SLURM_CONF} is missing (bash .ci/netns-cluster.sh up)"
    elif down := [h for h in HOSTS if not (STATE_DIR / "run" / f"holder-{h}.pid").is_file()]:
        reason = f"network bed hosts not up: {', '.join(down)} (bash .ci/netns-cluster.sh up)"
    if reason is None:
        env = bed_env()
        try:
            state = on_host(HOSTS[0], ["sinfo", "-h", "-N", "-o", "%N %T"], env, timeout=15)
        except subprocess.TimeoutExpired:
            state = None
        usable = {"idle", "mixed", "allocated", "completing"}
        nodes = {}
        if state is not None and state.returncode == 0:
            nodes = dict(line.split(None, 1) for line in state.stdout.splitlines() if " " in line)
        if not all(nodes.get(h, "").rstrip("*~#") in usable for h in HOSTS):
            detail = state.stdout.strip() + state.stderr.strip() if state else "sinfo timed out"
            reason = f"the network bed's SLURM does not answer with usable nodes: {detail}"
    if reason is not None:
        _unavailable(reason)
    return bed_env()


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, everything below it and its process group."""
    try:
        root = psutil.Process(pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def host_command(host: str, args: Sequence[str]) -> list[str]:
    """The command line that runs ``args`` inside ``host`` (cwd and environment kept)."""
    return ["bash", str(SCRIPT), "exec", host, *map(str, args)]


def on_host(
    host: str,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
    cwd: Path | str | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``args`` inside ``host`` and wait at most ``timeout`` seconds.

    On timeout the whole process tree (mpirun's remote launches included) is killed and
    ``subprocess.TimeoutExpired`` is raised with the output so far.
    """
    command = host_command(host, args)
    process = subprocess.Popen(
        command,
        env=bed_env() if env is None else env,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    except BaseException:
        kill_tree(process.pid)
        process.wait()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def start_on_host(
    host: str, args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``args`` inside ``host`` in the background (stop it with ``kill_tree(p.pid)``)."""
    return subprocess.Popen(
        host_command(host, args),
        env=bed_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
