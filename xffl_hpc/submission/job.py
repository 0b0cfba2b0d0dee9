"""``SubmittedJob``: a submitit job seen as one distributed run of N ranks."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from xffl_hpc.errors import JobFailedError, JobTimeoutError
from xffl_hpc.submission.task import FAILURE_MARK

R = TypeVar("R")

#: Seconds between looks at the result files.
POLL_S = 0.5
#: The scheduler is asked first after 1 s, then at doubling intervals up to this.
MAX_QUERY_INTERVAL_S = 30.0
#: After a rank failed, how long the others may take to end before the error is raised.
SETTLE_S = 5.0
#: After the scheduler says the job ended, how long result files may take to appear
#: (shared file systems show new files late).
RESULT_GRACE_S = 15.0
#: Lines of a rank's log quoted when it ended without a result.
LOG_TAIL_LINES = 20
#: Scheduler states of a job that runs no more: SLURM's, the PBS plugin's, submitit's local.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "FINISHED",
        "INTERRUPTED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "TIMEOUT",
    }
)
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_FAILED_AT = re.compile(re.escape(FAILURE_MARK) + r" rank \d+ of \d+ at ([0-9.]+)")


def slurm_state(job_id: str) -> str:
    """The job's state from ``squeue`` (``FINISHED`` once SLURM has forgotten the job).

    ``sacct``, which submitit asks, answers only where accounting is configured.
    """
    try:
        done = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.split()[0]
    if "Invalid job id" in done.stderr:
        return "FINISHED"
    return "UNKNOWN"


def _split_trace(text: str) -> tuple[str, float | None]:
    """The user's traceback without the :class:`RankFailed` part, and the failure time."""
    head, separator, tail = text.rpartition(_CAUSE)
    found = _FAILED_AT.search(tail) if separator else None
    if found is None:
        return text.rstrip(), None
    return head.rstrip(), float(found.group(1))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(r) for r in ranks)}"


class SubmittedJob(Generic[R]):
    """A job of ``world_size`` ranks submitted by :func:`xffl_hpc.submit`.

    ``result()`` is rank 0's return value and ``results()`` every rank's, in rank order;
    both raise :class:`~xffl_hpc.errors.JobFailedError` naming the rank that failed
    first, with its traceback, as soon as a rank has failed and the others have ended
    (or had ``SETTLE_S`` seconds to), and :class:`~xffl_hpc.errors.JobTimeoutError`
    after ``timeout`` seconds. The submitit job is ``submitit_job``.
    """

    def __init__(self, job: Any, cluster: str, world_size: int) -> None:
        self.submitit_job = job
        self.cluster = cluster
        self.world_size = world_size
        self._ended_kinds: dict[int, str] = {}
        self._errors: dict[int, str] = {}
        self._cancelled = False

    @property
    def job_id(self) -> str:
        """The scheduler's job id (the controller's process id for ``cluster="local"``)."""
        return str(self.submitit_job.job_id)

    @property
    def state(self) -> str:
        """The scheduler's state of the job, e.g. ``PENDING``, ``RUNNING``, ``COMPLETED``."""
        if self.cluster == "slurm":
            return slurm_state(self.job_id)
        return str(self.submitit_job.state).upper()

    def _task(self, rank: int) -> Any:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank}: the job has ranks 0..{self.world_size - 1}")
        return self.submitit_job.task(rank)

    def stdout(self, rank: int = 0) -> str | None:
        """What ``rank`` printed so far, or ``None`` before its log exists."""
        return self._task(rank).stdout()

    def stderr(self, rank: int = 0) -> str | None:
        """What ``rank`` wrote to its standard error so far, or ``None``."""
        return self._task(rank).stderr()

    def _result_path(self, rank: int) -> Path:
        return Path(self._task(rank).paths.result_pickle)

    def _collect(self) -> None:
        """Read the outcome of every rank whose result file has appeared."""
        from submitit.core.utils import pickle_load

        for rank in range(self.world_size):
            if rank in self._ended_kinds:
                continue
            path = self._result_path(rank)
            if path.exists():
                kind, value = pickle_load(path)
                self._ended_kinds[rank] = kind
                if kind == "error":
                    self._errors[rank] = str(value)

    def done(self) -> bool:
        """Whether every rank has ended (with a result or without)."""
        self._collect()
        return len(self._ended_kinds) == self.world_size or self.state in ENDED_STATES

    def cancel(self) -> None:
        """Ask the scheduler to stop the job (``scancel``, ``qdel``, or a signal locally)."""
        self._cancelled = True
        self.submitit_job.cancel(check=False)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every rank has ended; raise ``JobTimeoutError`` after ``timeout`` s."""
        self._wait(timeout, settle=None)

    def _wait(self, timeout: float | None, settle: float | None) -> None:
        start = time.monotonic()
        next_query, interval = start, 1.0
        ended_at = failed_at = None
        while True:
            self._collect()
            if len(self._ended_kinds) == self.world_size:
                return
            now = time.monotonic()
            if settle is not None and self._errors:
                failed_at = failed_at or now
                if now - failed_at >= settle:
                    return
            if ended_at is None and now >= next_query:
                if self.state in ENDED_STATES:
                    ended_at = now
                next_query = now + (1.0 if self._cancelled else interval)
                interval = min(2 * interval, MAX_QUERY_INTERVAL_S)
            if ended_at is not None and (self._cancelled or now - ended_at >= RESULT_GRACE_S):
                return
            if timeout is not None and now - start >= timeout:
                if ended_at is not None:
                    return
                running = self.world_size - len(self._ended_kinds)
                raise JobTimeoutError(
                    f"job {self.job_id} ({self.cluster}): {running} of {self.world_size} "
                    f"ranks still running after timeout={timeout} s "
                    f"(state {self.state}); job.cancel() stops it"
                )
            time.sleep(POLL_S)

    def results(self, timeout: float | None = None) -> list[R]:
        """Every rank's return value, in rank order (see the class for errors)."""
        from submitit.core.utils import pickle_load

        self._wait(timeout, settle=SETTLE_S)
        if self._errors or len(self._ended_kinds) < self.world_size:
            raise self._failure()
        return [pickle_load(self._result_path(rank))[1] for rank in range(self.world_size)]

    def result(self, timeout: float | None = None) -> R:
        """Rank 0's return value, once every rank has succeeded (see the class for errors)."""
        return self.results(timeout)[0]

    def _failure(self) -> JobFailedError:
        """The error naming the first failed rank, the other failed ones, the running ones."""
        missing = [r for r in range(self.world_size) if r not in self._ended_kinds]
        state = self.state
        over = state in ENDED_STATES or self._cancelled
        failures: dict[int, str] = {}
        summaries: dict[int, str] = {}
        first: tuple[float, int] | None = None
        for rank, text in sorted(self._errors.items()):
            trace, when = _split_trace(text)
            failures[rank], summaries[rank] = trace, _last_line(trace)
            key = (when if when is not None else float("inf"), rank)
            first = key if first is None or key < first else first
        if over:
            why = "was cancelled" if self._cancelled else f"ended in state {state}"
            for rank in missing:
                summaries[rank] = f"no result: the job {why}"
                failures[rank] = f"{summaries[rank]}\n{self._log_tail(rank)}"
        rank = first[1] if first is not None else min(failures)
        ranks = f"{self.world_size} rank{'s' if self.world_size > 1 else ''}"
        lines = [
            f"job {self.job_id} ({self.cluster}, {ranks}): rank {rank} failed"
            f"{' first' if len(failures) > 1 else ''}: {summaries[rank]}"
        ]
        others = sorted(set(failures) - {rank})
        if others:
            lines.append(f"also failed: {_ranks(others)}")
        if not over and missing:
            lines.append(f"still running: {_ranks(missing)} (job.cancel() stops them)")
        lines.append(f"rank {rank} (log: {self._task(rank).paths.stderr}):")
        lines.append(failures[rank])
        return JobFailedError("\n".join(lines), self.job_id, rank, failures)

    def _log_tail(self, rank: int) -> str:
        text = self.stderr(rank)
        if not text:
            return "(its log is empty or missing)"
        return "".join(text.splitlines(keepends=True)[-LOG_TAIL_LINES:]).rstrip()

    def __repr__(self) -> str:
        return (
            f"SubmittedJob(job_id={self.job_id!r}, cluster={self.cluster!r}, "
            f"world_size={self.world_size})"
        )
