"""Preemption: notice the scheduler's warning signal and stop every rank at the same step.

``sbatch --signal=B:USR1@120`` (as in ``slurm/xffl.sbatch``) warns the batch shell two
minutes before the end; the script passes the signal on to every rank. A rank sees it in
:meth:`Preemption.requested`, which all ranks call at the same step and which answers the
same everywhere, so they all checkpoint together. The job then exits with
:data:`REQUEUE_EXIT_STATUS`, which the batch script takes as "requeue me".
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any, NoReturn

import torch
import torch.distributed as dist

#: Exit status of a job that checkpointed on a warning and wants to be requeued
#: (``EX_TEMPFAIL`` of sysexits.h: "try again later").
REQUEUE_EXIT_STATUS = 75
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preemption:
    """Catches ``signals`` while active (a context manager); restores the old handlers."""

    def __init__(self, signals: Sequence[signal.Signals] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def __enter__(self) -> Preemption:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, device: torch.device | str = "cpu") -> bool:
        """Whether any rank has received a signal; the same answer on every rank.

        A collective over the default group when the process group is up: call it on
        every rank at the same step (its cost is one all-reduce of one integer).
        """
        flag = self.received is not None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return flag
        vote = torch.tensor([int(flag)], dtype=torch.int32, device=device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item())

    def exit_for_requeue(self) -> NoReturn:
        """End this process now with :data:`REQUEUE_EXIT_STATUS`, its signals still caught.

        Call it after checkpointing and cleaning up, inside the ``with`` block: ``srun
        --kill-on-bad-exit`` sends SIGTERM to the other ranks as soon as the first one exits
        with a non-zero status, and they must end with the same status, not be killed by it.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(REQUEUE_EXIT_STATUS)
