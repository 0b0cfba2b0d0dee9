"""submitit executor plugin for PBS Pro / OpenPBS (and SLURM's PBS wrappers): ``cluster="pbs"``.

The batch script asks for ``nodes`` chunks of ``tasks_per_node`` MPI ranks
(``-l select=N:ncpus=C:mpiprocs=M``, ``-l place=scatter``) and starts the ranks with
``mpiexec``; each rank runs :mod:`xffl_hpc.submission.pbs_task`, which sends its output to
submitit's per-task logs and runs submitit's task. ``qsub`` submits, ``qstat`` reports
(``-x -f -F json`` on PBS Pro / OpenPBS, else the ``-f`` text of Torque and of SLURM's
wrappers), ``qdel`` cancels. Inside the job, the rank and world size come from
:func:`xffl_hpc.detect`, so the task index is right under any ``mpiexec``.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import typing as tp
from collections.abc import Sequence
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

from xffl_hpc.errors import ConfigurationError
from xffl_hpc.schedulers import Placement, detect

#: How ``mpiexec`` is told the ranks per node: HPE Cray PALS and MPICH / Intel MPI Hydra
#: (``pmi``) take ``--ppn``; Open MPI maps ``ppr:M:node``.
LAUNCHERS = ("pals", "pmi", "openmpi")
#: Values written into ``#PBS`` lines: no blanks, quotes or shell syntax.
_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_./%+,:@=-]+")
#: ``qstat`` exits with this status for an unknown job id (PBSE_UNKJOBID 15001 % 256),
#: and with 35 for a finished one asked without ``-x`` (PBSE_HISTJOBID 15139 % 256).
_QSTAT_GONE = (0, 35, 153)
#: PBS job states (``job_state``) as submitit-style names.
_STATES = {
    "B": "RUNNING",
    "E": "EXITING",
    "H": "HELD",
    "M": "MOVED",
    "Q": "PENDING",
    "R": "RUNNING",
    "S": "SUSPENDED",
    "T": "PENDING",
    "U": "SUSPENDED",
    "W": "PENDING",
}
#: ``job_state`` letters of a job that runs no more: PBS Pro's F and X, Torque's C.
_ENDED = ("C", "F", "X")
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "FINISHED"})


def _state(letter: str, exit_status: str | int | None) -> str:
    if letter not in _ENDED:
        return _STATES.get(letter, "UNKNOWN")
    if exit_status is None or str(exit_status).strip() == "":
        return "FINISHED"
    return "COMPLETED" if str(exit_status).strip() == "0" else "FAILED"


def parse_qstat_json(text: str) -> dict[str, dict[str, str]]:
    """Job id -> ``{"State": ..., "job_state": letter}`` from ``qstat -f -F json``."""
    jobs = json.loads(text).get("Jobs", {}) if text.strip() else {}
    return {
        job_id: {
            "State": _state(str(attrs.get("job_state", "")), attrs.get("Exit_status")),
            "job_state": str(attrs.get("job_state", "")),
        }
        for job_id, attrs in jobs.items()
    }


def parse_qstat_text(text: str) -> dict[str, dict[str, str]]:
    """Job id -> ``{"State": ..., "job_state": letter}`` from ``qstat -f`` text blocks."""
    found: dict[str, dict[str, str]] = {}
    attrs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = {}
            found[line.split(":", 1)[1].strip()] = attrs
        elif " = " in line:
            key, value = line.strip().split(" = ", 1)
            attrs[key.lower()] = value.strip()
    return {
        job_id: {
            "State": _state(attrs.get("job_state", ""), attrs.get("exit_status")),
            "job_state": attrs.get("job_state", ""),
        }
        for job_id, attrs in found.items()
    }


class PbsInfoWatcher(core.InfoWatcher):
    """Job states from ``qstat``, for every registered job at once."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self.json_format = True

    def _query(self, job_ids: list[str]) -> subprocess.CompletedProcess[str]:
        options = ["-x", "-f", "-F", "json"] if self.json_format else ["-f"]
        return subprocess.run(
            ["qstat", *options, *job_ids], capture_output=True, text=True, timeout=60
        )

    def update(self) -> None:
        """Ask ``qstat`` about every unfinished job; a job it no longer knows is finished."""
        job_ids = sorted(self._registered - self._finished)
        if not job_ids:
            return
        self._num_calls += 1
        try:
            done = self._query(job_ids)
            unanswered = not done.stdout.lstrip().startswith("{")
            if self.json_format and unanswered and done.returncode not in _QSTAT_GONE:
                self.json_format = False
                done = self._query(job_ids)
            parse = parse_qstat_json if self.json_format else parse_qstat_text
            if done.returncode not in _QSTAT_GONE:
                raise RuntimeError(f"qstat exited with {done.returncode}: {done.stderr.strip()}")
            info = parse(done.stdout)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
            if isinstance(error, ValueError):  # JSON that some PBS releases write broken
                self.json_format = False
            logger.get_logger().warning(f"qstat failed, job states may be stale: {error}")
            return
        for job_id in job_ids:
            self._info_dict[job_id] = info.get(job_id, {"State": "FINISHED", "job_state": ""})
        self._last_status_check = time.time()
        for job_id in job_ids:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        """``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``FINISHED``... or ``UNKNOWN``."""
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Whether the job has ended."""
        return self.get_state(job_id, mode=mode) in FINAL_STATES


class PbsJob(core.Job[core.R]):
    """A PBS job: cancelled with ``qdel``, followed with ``qstat``."""

    _cancel_command = "qdel"
    watcher = PbsInfoWatcher()


class PbsJobEnvironment(job_environment.JobEnvironment):
    """A task of a PBS job, placed by :func:`xffl_hpc.detect` (PBS or SLURM + any mpiexec)."""

    def _placement(self) -> Placement:
        return detect()

    @property
    def raw_job_id(self) -> str:
        job_id = self._placement().job_id
        if job_id is None:
            raise ConfigurationError(
                "neither PBS_JOBID nor SLURM_JOB_ID is set: this task is not in a PBS job"
            )
        return job_id

    @property
    def num_tasks(self) -> int:
        return self._placement().world_size

    @property
    def num_nodes(self) -> int:
        return self._placement().num_nodes or 1

    @property
    def node(self) -> int:
        return self._placement().node_rank or 0

    @property
    def global_rank(self) -> int:
        return self._placement().rank

    @property
    def local_rank(self) -> int:
        return self._placement().local_rank

    @property
    def hostnames(self) -> list[str]:
        return list(self._placement().hostnames or (self.hostname,))


def _directive_value(name: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_VALUE.fullmatch(text):
        bad = sorted({c for c in text if not _DIRECTIVE_VALUE.fullmatch(c)})
        raise ConfigurationError(
            f"{name}={text!r}: a #PBS line cannot carry {''.join(bad)!r}; use letters, "
            "digits and ._/%+,:@=-"
        )
    return text


def _count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


def _words(name: str, value: Sequence[str]) -> list[str]:
    if isinstance(value, str) or not all(isinstance(word, str) for word in value):
        raise ConfigurationError(f"{name}={value!r}: expected a list of strings")
    return list(value)


def _walltime(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def rank_command(python: str, folder: str | Path) -> list[str]:
    """What ``mpiexec`` starts on every rank: :mod:`xffl_hpc.submission.pbs_task`."""
    return [python, "-u", "-m", "xffl_hpc.submission.pbs_task", str(folder)]


def mpiexec_command(
    launcher: str,
    mpiexec: str,
    ranks: int,
    per_node: int,
    extra: Sequence[str],
    task: Sequence[str],
) -> list[str]:
    """The ``mpiexec`` command line that starts ``task`` on every rank."""
    if launcher not in LAUNCHERS:
        raise ConfigurationError(f"launcher={launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if launcher == "openmpi":
        per_node_flags = ["--map-by", f"ppr:{per_node}:node"]
    else:
        per_node_flags = ["--ppn", str(per_node)]
    return [mpiexec, "-n", str(ranks), *per_node_flags, *extra, *task]


def pbs_script(
    folder: str | Path,
    uid: str,
    task: Sequence[str],
    workdir: str,
    name: str = "xffl",
    timeout_min: int = 60,
    nodes: int = 1,
    tasks_per_node: int = 1,
    cpus_per_task: int | None = None,
    gpus_per_node: int | None = None,
    mem_gb: float | None = None,
    queue: str | None = None,
    account: str | None = None,
    directives: Sequence[str] = (),
    setup: Sequence[str] = (),
    launcher: str = "pals",
    mpiexec: str = "mpiexec",
    mpiexec_args: Sequence[str] = (),
) -> str:
    """The batch script of one job; every value on a command line is shell-quoted.

    ``task`` is the command each rank runs (:func:`rank_command`); ``folder`` is
    submitit's job folder (``%j`` stands for the job id); the job's own
    output goes to ``<folder without %j>/<uid>.pbs.out`` and ``.err``. ``directives`` are
    extra ``#PBS`` options (``"-l filesystems=home"``), ``setup`` shell lines run before
    ``mpiexec``, ``workdir`` the directory the ranks start in; ``mem_gb`` is per node.
    """
    nodes = _count("nodes", nodes)
    per_node = _count("tasks_per_node", tasks_per_node)
    cpus = per_node * _count("cpus_per_task", cpus_per_task or 1)
    chunk = f"{nodes}:ncpus={cpus}:mpiprocs={per_node}"
    if gpus_per_node:
        chunk += f":ngpus={_count('gpus_per_node', gpus_per_node)}"
    if mem_gb is not None:
        if isinstance(mem_gb, bool) or not isinstance(mem_gb, (int, float)) or mem_gb <= 0:
            raise ConfigurationError(f"mem_gb={mem_gb!r}: expected a positive number")
        chunk += f":mem={max(1, round(mem_gb * 1024))}mb"
    logs = utils.JobPaths.get_first_id_independent_folder(folder)
    lines = [
        "#!/bin/bash",
        f"#PBS -N {_directive_value('name', name)}",
        f"#PBS -l select={chunk}",
        "#PBS -l place=scatter",
        f"#PBS -l walltime={_walltime(_count('timeout_min', timeout_min))}",
        "#PBS -V",
        f"#PBS -o {_directive_value('folder', logs / f'{uid}.pbs.out')}",
        f"#PBS -e {_directive_value('folder', logs / f'{uid}.pbs.err')}",
    ]
    if queue is not None:
        lines.append(f"#PBS -q {_directive_value('queue', queue)}")
    if account is not None:
        lines.append(f"#PBS -A {_directive_value('account', account)}")
    for directive in _words("directives", directives):
        if not directive.isprintable():
            raise ConfigurationError(f"directives: {directive!r} is not one printable line")
        lines.append(f"#PBS {directive}")
    if setup:
        lines += ["", *_words("setup", setup)]
    extra = _words("mpiexec_args", mpiexec_args)
    command = mpiexec_command(launcher, mpiexec, nodes * per_node, per_node, extra, task)
    lines += [
        "",
        f"cd -- {shlex.quote(workdir)}",
        "export SUBMITIT_EXECUTOR=pbs",
        f"exec {shlex.join(command)}",
        "",
    ]
    return "\n".join(lines)


#: Parameters of :class:`PbsExecutor` (``update_parameters``): those of :func:`pbs_script`.
PARAMETERS = frozenset(inspect.signature(pbs_script).parameters) - {
    "folder",
    "uid",
    "task",
    "workdir",
}


class PbsExecutor(core.PicklingExecutor):
    """Submits pickled functions as PBS jobs; parameters are ``PARAMETERS``' keys."""

    job_class = PbsJob

    def __init__(
        self, folder: str | Path, max_num_timeout: int = 3, max_pickle_size_gb: float = 1.0
    ) -> None:
        super().__init__(
            folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb
        )
        if self.affinity() < 0:
            raise ConfigurationError("cluster='pbs' needs qsub, which is not on PATH")
        self.python = sys.executable

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "name",
            "timeout_min": "timeout_min",
            "mem_gb": "mem_gb",
            "nodes": "nodes",
            "cpus_per_task": "cpus_per_task",
            "gpus_per_node": "gpus_per_node",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(PARAMETERS)

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        unknown = sorted(set(kwargs) - set(PARAMETERS))
        if unknown:
            raise ConfigurationError(
                f"unknown PBS parameter(s) {unknown}; valid: {', '.join(sorted(PARAMETERS))}"
            )
        task = rank_command(self.python, self.folder)
        pbs_script(self.folder, "check", task, ".", **{**self.parameters, **kwargs})
        super()._internal_update_parameters(**kwargs)

    @property
    def _submitit_command_str(self) -> str:
        return shlex.join(rank_command(self.python, self.folder))

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        task = shlex.split(command)
        return pbs_script(self.folder, uid, task, str(Path.cwd()), **self.parameters)

    def _num_tasks(self) -> int:
        return int(self.parameters.get("nodes", 1)) * int(self.parameters.get("tasks_per_node", 1))

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["qsub", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        text = string.decode() if isinstance(string, bytes) else string
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines or not re.fullmatch(r"\d+(\.[\w.-]+)?", lines[-1]):
            raise utils.FailedSubmissionError(f"qsub printed no job id: {text!r}")
        return lines[-1]

    @classmethod
    def affinity(cls) -> int:
        """-1 without ``qsub``; 1 where ``srun`` is there too (SLURM's PBS wrappers); else 2."""
        if shutil.which("qsub") is None:
            return -1
        return 1 if shutil.which("srun") is not None else 2
