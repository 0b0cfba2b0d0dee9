"""What runs in every task of a submitted job: rendezvous variables, set-up, the user's code.

``RankTask`` is the picklable callable that submitit runs once per task. Its failure is
re-raised as :class:`RankFailed`, whose line in submitit's traceback record names the
rank and the time it failed, so that the caller can tell which rank failed first.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xffl_hpc.schedulers.envrdzv import WORKER_VARIABLES

#: The ``env://`` variables; in a SLURM or PBS job the ones inherited unchanged from the
#: submitting process are dropped, as they describe that process, not this task.
ENV_RENDEZVOUS = (*WORKER_VARIABLES, "MASTER_ADDR", "MASTER_PORT")
#: Starts the message of :class:`RankFailed`; followed by the rank, world size, Unix time.
FAILURE_MARK = "xffl-hpc task failure:"
#: Lines of a failed script's standard error quoted in its error.
SCRIPT_TAIL_LINES = 40


class RankFailed(RuntimeError):
    """A task's function raised or its script failed (the cause is chained)."""


class ScriptFailed(RuntimeError):
    """A task's script exited non-zero; the message is its last stderr lines and status."""


def failure_message(rank: int, world_size: int, when: float) -> str:
    """The :class:`RankFailed` message: ``FAILURE_MARK`` rank, world size, time, host."""
    return f"{FAILURE_MARK} rank {rank} of {world_size} at {when:.6f} on {platform.node()}"


def local_rendezvous(rank: int, local_world_size: int, job_id: str) -> dict[str, str]:
    """The ``env://`` variables of task ``rank`` of a one-node job (submitit's local cluster)."""
    from xffl_hpc.schedulers.rendezvous import derive_port

    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(local_world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(derive_port(job_id)),
    }


def _guarded(call: Callable[[], Any], rank: int, world_size: int) -> Any:
    """Run ``call``; re-raise its failure at once as :class:`RankFailed`.

    The time is taken before the clean-up, which makes the other ranks fail too;
    ``sys.exit(0)`` counts as returning ``None``.
    """
    try:
        return call()
    except (Exception, SystemExit) as error:
        if isinstance(error, SystemExit) and error.code in (None, 0):
            return None
        raise RankFailed(failure_message(rank, world_size, time.time())) from error


@dataclass(frozen=True)
class RankTask:
    """One task's work: ``target(*args, **kwargs)`` or ``python target args...``.

    ``target`` is a callable or the path of a script. With ``setup`` the callable runs
    between ``setup_distributed_process_group()`` and its clean-up, and gets the
    ``DistributedState`` as ``state=`` when ``pass_state``. ``inherited`` holds the
    ``env://`` variables of the submitting process.
    """

    target: Callable[..., Any] | str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    setup: bool = True
    pass_state: bool = False
    inherited: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable

    def __call__(self) -> Any:
        import submitit

        environment = submitit.JobEnvironment()
        rank, world_size = environment.global_rank, environment.num_tasks
        for key, value in self.inherited.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        if environment.cluster == "local":
            os.environ.update(local_rendezvous(rank, world_size, environment.job_id))
        if isinstance(self.target, str):
            return _guarded(self._run_script, rank, world_size)
        call = functools.partial(self.target, *self.args, **self.kwargs)
        if not self.setup:
            return _guarded(call, rank, world_size)
        from xffl_hpc.distributed import (
            cleanup_distributed_process_group,
            setup_distributed_process_group,
        )

        state = _guarded(setup_distributed_process_group, rank, world_size)
        try:
            extra = {"state": state} if self.pass_state else {}
            return _guarded(functools.partial(call, **extra), rank, world_size)
        finally:
            cleanup_distributed_process_group(state)

    def _run_script(self) -> int:
        """Run the script, copying its stderr through; raise :class:`ScriptFailed` on failure."""
        from xffl_hpc.emulate.supervisor import describe_exit

        command = [self.python, str(self.target), *self.args]
        tail: deque[str] = deque(maxlen=SCRIPT_TAIL_LINES)
        with subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
        ) as process:
            assert process.stderr is not None
            for line in process.stderr:
                sys.stderr.write(line)
                tail.append(line)
        if process.returncode != 0:
            raise ScriptFailed(
                f"{''.join(tail)}{self.target} exited with {describe_exit(process.returncode)}"
            )
        return 0
