"""``submit``: run a function or a script as a distributed job of nodes x tasks, via submitit.

From a notebook or a login node: ``cluster="slurm"`` (submitit's SLURM executor),
``"pbs"`` (this package's submitit plugin: ``qsub``/``qstat``/``qdel`` and ``mpiexec``)
or ``"local"`` (processes on this machine). Every task of a function job calls
``setup_distributed_process_group()`` with no arguments before the function, and cleans
up after it, also when it raises.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from xffl_hpc.errors import ConfigurationError
from xffl_hpc.submission.job import SubmittedJob
from xffl_hpc.submission.task import ENV_RENDEZVOUS, RankTask

__all__ = ["CLUSTERS", "SubmittedJob", "submit"]

R = TypeVar("R")
CLUSTERS = ("slurm", "pbs", "local")
#: ``partition`` is this parameter of each cluster's executor.
_PARTITION = {"slurm": "slurm_partition", "pbs": "pbs_queue"}


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


def _check_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], setup: bool
) -> bool:
    """Whether ``fn`` gets ``state=``; raise when the arguments cannot fit its signature.

    ``fn`` gets the ``DistributedState`` when ``setup`` and it has a parameter named
    ``state`` that can be passed by keyword; a signature Python cannot read gets none.
    """
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    parameter = signature.parameters.get("state")
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if parameter is not None and parameter.kind not in keyword:
        parameter = None
    if setup and parameter is not None and "state" in kwargs:
        raise ConfigurationError(
            f"state=: submit passes the DistributedState as {label}'s state argument "
            "when setup=True; rename the keyword argument"
        )
    if not setup and parameter is not None and parameter.default is parameter.empty:
        raise ConfigurationError(
            f"setup=False but {label} needs a state argument (the DistributedState that "
            "setup=True passes): use setup=True or give state a default"
        )
    pass_state = setup and parameter is not None
    try:
        signature.bind(*args, **kwargs, **({"state": None} if pass_state else {}))
    except TypeError as error:
        raise ConfigurationError(f"the arguments do not fit {label}{signature}: {error}") from None
    return pass_state


def _script_task(
    script: str | os.PathLike[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    inherited: dict[str, str],
) -> RankTask:
    path = Path(script)
    if not path.is_file():
        raise ConfigurationError(f"script={str(script)!r}: no such file")
    if kwargs:
        raise ConfigurationError(
            f"keyword arguments {sorted(kwargs)} given with script={str(script)!r}: a script "
            "takes positional arguments (strings) only"
        )
    words = []
    for index, arg in enumerate(args):
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float, os.PathLike)):
            raise ConfigurationError(
                f"script argument {index} = {arg!r}: expected a string, a number or a path"
            )
        words.append(os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg))
    return RankTask(str(path.resolve()), tuple(words), setup=False, inherited=inherited)


def _default_name(fn: object) -> str:
    stem = Path(fn).stem if isinstance(fn, (str, os.PathLike)) else getattr(fn, "__name__", "")
    return "xffl-" + (re.sub(r"[^A-Za-z0-9_.-]", "", str(stem)) or "job")


def submit(
    fn: Callable[..., R] | str | os.PathLike[str],
    /,
    *args: Any,
    nodes: int = 1,
    tasks_per_node: int = 1,
    cluster: str | None = None,
    folder: str | os.PathLike[str] = "xffl-jobs/%j",
    timeout_min: int = 60,
    cpus_per_task: int | None = None,
    gpus_per_node: int | None = None,
    partition: str | None = None,
    name: str | None = None,
    setup: bool = True,
    executor_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SubmittedJob[R]:
    """Run ``fn(*args, **kwargs)`` in each of ``nodes x tasks_per_node`` tasks; return the job.

    ``fn`` is a picklable callable, or the path of a Python script run as
    ``python SCRIPT ARGS...`` (``sys.executable``, arguments as strings, no shell). With
    ``setup`` (the default) each task of a callable calls
    ``setup_distributed_process_group()`` first and passes the ``DistributedState`` as
    ``state=`` when ``fn`` has a parameter named ``state``; the process group is cleaned
    up after ``fn`` returns or raises. A script sets itself up.

    ``cluster``: ``"slurm"``, ``"pbs"`` or ``"local"``; ``None`` lets submitit choose
    (``slurm`` where ``srun`` is, ``pbs`` where only ``qsub`` is, else ``local``).
    ``folder`` holds submitit's pickles and logs (``%j`` is the job id); ``partition`` is
    SLURM's partition or PBS's queue (unused locally). ``executor_options`` passes
    submitit parameters, prefixed by the cluster
    (``{"slurm_setup": ["module load cuda"], "pbs_launcher": "openmpi", "mem_gb": 64}``).
    A scheduler's refusal raises :class:`~xffl_hpc.ConfigurationError` with its reason.
    The ``env://`` variables of this process (``RANK``, ``MASTER_PORT``...) do not reach
    the tasks. ``job.result()`` is rank 0's return value (see :class:`SubmittedJob`).
    """
    nodes = _positive("nodes", nodes)
    tasks_per_node = _positive("tasks_per_node", tasks_per_node)
    timeout_min = _positive("timeout_min", timeout_min)
    if cpus_per_task is not None:
        _positive("cpus_per_task", cpus_per_task)
    if gpus_per_node is not None:
        _positive("gpus_per_node", gpus_per_node, minimum=0)
    inherited = {key: os.environ[key] for key in ENV_RENDEZVOUS if key in os.environ}
    if isinstance(fn, (str, os.PathLike)):
        task = _script_task(fn, args, kwargs, inherited)
    elif callable(fn):
        pass_state = _check_call(fn, args, kwargs, setup)
        task = RankTask(fn, args, kwargs, setup, pass_state, inherited)
    else:
        raise ConfigurationError(f"fn={fn!r}: expected a callable or the path of a script")
    import submitit
    from submitit.core import plugins
    from submitit.core.utils import FailedJobError

    executors = plugins.get_executors()
    if cluster is None:
        cluster = submitit.AutoExecutor.which()
    elif cluster not in CLUSTERS:
        raise ConfigurationError(f"cluster={cluster!r}: expected one of {', '.join(CLUSTERS)}")
    if cluster not in executors:
        raise ConfigurationError(
            f"cluster={cluster!r}: submitit does not know this executor; xffl-hpc registers "
            "'pbs' through its package metadata: reinstall it (pip install -e .)"
        )
    if cluster == "local" and nodes > 1:
        raise ConfigurationError(
            f"nodes={nodes} with cluster='local': a local job runs on this machine only "
            "(nodes=1); use tasks_per_node for more processes"
        )
    parameters: dict[str, Any] = {
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
        "timeout_min": timeout_min,
        "name": name if name is not None else _default_name(fn),
        "cpus_per_task": cpus_per_task,
        "gpus_per_node": gpus_per_node or None,
    }
    if partition is not None and cluster in _PARTITION:
        parameters[_PARTITION[cluster]] = partition
    parameters.update(executor_options or {})
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**parameters)
    except (AssertionError, NameError, RuntimeError, ValueError) as error:
        if isinstance(error, ConfigurationError):
            raise
        raise ConfigurationError(f"cluster={cluster!r}: submitit refused: {error}") from error
    try:
        job = executor.submit(task)
    except FailedJobError as error:
        raise ConfigurationError(
            f"cluster={cluster!r}: the scheduler refused the job: {error}"
        ) from error
    return SubmittedJob(job, cluster, nodes * tasks_per_node)
