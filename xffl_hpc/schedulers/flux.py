"""Flux: the job allocation (``FLUX_JOB_ID``, F58-encoded such as ``ƒD2e73NP``)."""

from __future__ import annotations

from collections.abc import Mapping

from xffl_hpc.schedulers.records import Allocation
from xffl_hpc.schedulers.variables import read_str


def allocation(environ: Mapping[str, str]) -> Allocation | None:
    """The Flux job of this process, or ``None``. Flux exports no host list."""
    job = read_str(environ, "FLUX_JOB_ID")
    if job is None:
        return None
    return Allocation(scheduler="flux", job_id=job[1], port_key=job[1], sources={"job_id": job[0]})
