"""Run one process per rank, prefix their output, and bring the job down as one.

When a rank exits non-zero or is killed, every other rank gets SIGTERM, then SIGKILL
after a grace period; the job's status is that rank's. Each rank runs in a session of
its own, and when the job ends every rank's process group is killed, so nothing a rank
started outlives the job, whatever the rank's own end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from xffl_hpc.errors import ConfigurationError

#: How often the supervisor looks at its ranks.
_POLL = 0.05
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: be killed if the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class RankExit:
    """How one rank ended: its exit status (negative: killed by that signal)."""

    rank: int
    returncode: int
    seconds: float


@dataclass
class JobResult:
    """The job's exit status, the rank that caused it (if any) and every rank's end."""

    returncode: int
    failed_rank: int | None
    ranks: list[RankExit]


def status_of(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """``status 1`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


def _signal_rank(pid: int, sig: signal.Signals) -> None:
    """Signal a rank, its process group (which outlives it) and its descendants."""
    try:
        root = psutil.Process(pid)
        members = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        members = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)


class Supervisor:
    """Start, watch and stop the ranks of one emulated job."""

    def __init__(
        self,
        command: Sequence[str],
        environments: Sequence[dict[str, str]],
        console: TextIO,
        log_dir: Path | None = None,
        grace: float = 5.0,
    ) -> None:
        self.command = list(command)
        self.environments = environments
        self.console = console
        self.log_dir = log_dir
        self.grace = grace
        self.lock = threading.Lock()
        self.stop_signal: int | None = None
        self.processes: list[subprocess.Popen] = []

    def _say(self, text: str) -> None:
        with self.lock:
            self.console.write(f"[emulate] {text}\n")
            self.console.flush()

    def _pump(self, rank: int, stream: TextIO, log: TextIO | None) -> None:
        for line in stream:
            with self.lock:
                self.console.write(f"[{rank}] {line}")
                self.console.flush()
            if log is not None:
                log.write(line)
                log.flush()

    def _request_stop(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def _forward(self, signum: int, _frame: object) -> None:
        """Pass SIGUSR1/SIGUSR2 on to every running rank, as srun does."""
        self._say(f"{signal.Signals(signum).name} received; passing it on to every rank")
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def run(self) -> JobResult:
        """Run every rank to its end, or until one fails or we are interrupted."""
        if shutil.which(self.command[0]) is None:
            raise ConfigurationError(
                f"cannot start {self.command[0]!r}: not an executable file or a program on "
                "PATH (a Python script needs its .py name, a module -m MODULE)"
            )
        count = len(self.environments)
        self._say(f"starting {count} ranks: {' '.join(self.command)}")
        started = time.monotonic()
        logs: list[TextIO | None] = []
        if self.log_dir is not None:
            self.log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            logs = [open(self.log_dir / f"rank-{r}.log", "w") for r in range(count)]  # noqa: SIM115
        self.processes = processes = [
            subprocess.Popen(
                self.command,
                env=environ,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            for environ in self.environments
        ]
        self._say(f"all {count} ranks started in {time.monotonic() - started:.2f} s")
        pumps = [
            threading.Thread(
                target=self._pump,
                args=(rank, process.stdout, logs[rank] if logs else None),
                daemon=True,
            )
            for rank, process in enumerate(processes)
        ]
        for pump in pumps:
            pump.start()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, self._request_stop)
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            previous |= {
                sig: signal.signal(sig, self._forward) for sig in (signal.SIGUSR1, signal.SIGUSR2)
            }
        try:
            result = self._watch(processes, started)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for process in processes:
                _signal_rank(process.pid, signal.SIGKILL)
                process.wait()
            for pump in pumps:
                pump.join(timeout=5)
            for log in logs:
                if log is not None:
                    log.close()
        self._summary(result)
        return result

    def _watch(self, processes: list[subprocess.Popen], started: float) -> JobResult:
        ended: dict[int, RankExit] = {}
        failed: int | None = None
        status = 0
        stopping = False
        while len(ended) < len(processes):
            for rank, process in enumerate(processes):
                code = process.poll()
                if code is None or rank in ended:
                    continue
                ended[rank] = RankExit(rank, code, time.monotonic() - started)
                if code != 0 and not stopping:
                    failed, status, stopping = rank, status_of(code), True
                    running = len(processes) - len(ended)
                    self._say(
                        f"rank {rank} {describe_exit(code)}; stopping the other {running} ranks"
                    )
                    self._stop(processes, ended, started)
            if self.stop_signal is not None and not stopping:
                self._say(f"{signal.Signals(self.stop_signal).name} received; stopping all ranks")
                status, stopping = 128 + self.stop_signal, True
                self._stop(processes, ended, started)
            time.sleep(_POLL)
        return JobResult(status, failed, sorted(ended.values(), key=lambda e: e.rank))

    def _stop(
        self, processes: list[subprocess.Popen], ended: dict[int, RankExit], started: float
    ) -> None:
        """SIGTERM every running rank's tree, SIGKILL what is left after the grace period."""
        live = [(rank, p) for rank, p in enumerate(processes) if p.poll() is None]
        for _, process in live:
            _signal_rank(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(p.poll() is None for _, p in live):
            time.sleep(_POLL)
        for _, process in live:
            if process.poll() is None:
                _signal_rank(process.pid, signal.SIGKILL)
            process.wait()
        for rank, process in live:
            ended.setdefault(rank, RankExit(rank, process.returncode, time.monotonic() - started))

    def _summary(self, result: JobResult) -> None:
        lines = [
            f"rank {e.rank}: {describe_exit(e.returncode)} after {e.seconds:.1f} s"
            for e in result.ranks
        ]
        verdict = (
            "all ranks succeeded"
            if result.returncode == 0
            else f"job failed with status {result.returncode}"
        )
        if result.failed_rank is not None:
            verdict += f" (rank {result.failed_rank} first)"
        self._say("summary: " + verdict + "\n" + "\n".join(f"[emulate]   {line}" for line in lines))
