"""IBM Spectrum LSF: the job allocation.

Variables read (LSF sets them in the job's environment):

``LSB_JOBID``
    The job id.
``LSB_DJOB_RANKFILE``
    A file of host names, one line per slot [7]; with ``bsub -hostfile`` it is made from
    the user's file, which "specifies the order in which to launch tasks, ranking the
    slots" [2].
``LSB_DJOB_HOSTFILE``
    The same form, in LSF's allocation order [4, 5].
``LSB_MCPU_HOSTS``
    ``host count host count ...``, one pair per host: IBM's advice "for running large
    parallel jobs" [3].
``LSB_HOSTS``
    "The list of hosts that are used to run the batch job" [1], one word per slot (a
    host with 42 slots is written 42 times [6]), so it grows with the job.

The hosts and slots come from the first of these that is set, in the order above: the
rank file (it keeps the user's order), the host file, the compact pairs, ``LSB_HOSTS``.
The batch script runs on the first host. On CORAL machines (Summit, Lassen) that is a
launch node listed first with one slot, on which ``jsrun`` starts no task; other LSF
clusters list no such node, and no variable tells the two apart [4].
``mpi.jsrun_launch`` drops it.

[1] https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=variables-environment-set-job-execution
[2] https://www.hpc.dtu.dk/lsf931/lsf_command_ref/bsub.hostfile.1.html
[3] https://www.hpc.dtu.dk/lsf931/lsf_admin/parallel_jobs_about.html
[4] https://github.com/openpmix/prrte/pull/800 (IBM: the CORAL batch node has one slot)
[5] radical-cybertools/radical.pilot src/radical/pilot/agent/resource_manager/lsf.py
[6] charmplusplus/charm examples/ampi/cuda/gpudirect/jacobi3d/scripts/create_rankfile.py
[7] Lightning-AI/pytorch-lightning src/lightning/fabric/plugins/environments/lsf.py
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.hostfile import read_slots, unique_hosts
from xffl_hpc.schedulers.hostlist import MAX_HOSTS
from xffl_hpc.schedulers.records import Allocation
from xffl_hpc.schedulers.variables import parse_int, quote, read_str

#: Most slots ``LSB_MCPU_HOSTS`` or ``LSB_HOSTS`` may describe (as hostlist.MAX_HOSTS).
_MAX_SLOTS = MAX_HOSTS


def _check_size(name: str, text: str, slots: int) -> None:
    """Refuse ``slots`` beyond ``_MAX_SLOTS`` before any list of them is built."""
    if slots > _MAX_SLOTS:
        raise PlacementError(f"{name}={quote(text)}: describes more than {_MAX_SLOTS} slots")


def _mcpu_hosts(name: str, text: str) -> tuple[str, ...]:
    """``LSB_MCPU_HOSTS`` (``host count host count ...``) as one entry per slot."""
    words = text.split()
    if len(words) % 2:
        raise PlacementError(f"{name}={quote(text)}: expected pairs of host name and slot count")
    counts = [parse_int(name, count, minimum=1) for count in words[1::2]]
    _check_size(name, text, sum(counts))
    pairs = zip(words[0::2], counts, strict=True)
    return tuple(host for host, count in pairs for _ in range(count))


def _lsb_hosts(name: str, text: str) -> tuple[str, ...]:
    """``LSB_HOSTS``: one word per slot."""
    words = tuple(text.split())
    _check_size(name, text, len(words))
    return words


#: Where the hosts come from, most trusted first (see the module docstring).
_SLOT_LISTS: tuple[tuple[str, Callable[[str, str], tuple[str, ...]]], ...] = (
    ("LSB_DJOB_RANKFILE", read_slots),
    ("LSB_DJOB_HOSTFILE", read_slots),
    ("LSB_MCPU_HOSTS", _mcpu_hosts),
    ("LSB_HOSTS", _lsb_hosts),
)


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The LSF job of this process, or ``None``: hosts in LSF's order, and one slot entry
    per slot (a launch node is kept here)."""
    job = read_str(environ, "LSB_JOBID")
    if job is None:
        return None
    parse_int(job[0], job[1])
    sources = {"job_id": job[0]}
    slots: tuple[str, ...] = ()
    for name, read in _SLOT_LISTS:
        found = read_str(environ, name)
        if found is not None:
            slots = read(*found)
            sources["hostnames"] = name
            break
    return Allocation(
        scheduler="lsf",
        job_id=job[1],
        hostnames=unique_hosts(slots) or None,
        slots=slots or None,
        port_key=job[1],
        sources=sources,
    )
