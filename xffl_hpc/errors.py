"""The package's exception family."""

from __future__ import annotations


class XfflHpcError(Exception):
    """Root of every error raised by xffl_hpc."""


class PlacementError(XfflHpcError, ValueError):
    """The scheduler or launcher environment is malformed or inconsistent.

    The message names the variable(s) and value(s) at fault and what was expected.
    """


class HostlistError(PlacementError):
    """A SLURM hostlist expression cannot be parsed or is too large."""


class TopologyError(XfflHpcError, ValueError):
    """Sizes that do not fit together (world size, node sizes, hsdp, federated groups)."""


class DistributedError(XfflHpcError):
    """Setting up or using the distributed process groups failed."""


class ConfigurationError(XfflHpcError, ValueError):
    """An argument of the distributed set-up is invalid (backend, device, timeout...)."""


class CheckpointError(XfflHpcError):
    """A checkpoint cannot be written, or does not fit the job that loads it."""


class JobFailedError(XfflHpcError):
    """A rank of a submitted job raised, exited non-zero, or ended without a result.

    ``rank`` is the rank that failed first; ``failures`` maps every failed rank to its
    traceback text (or to what is known of its end).
    """

    def __init__(self, message: str, job_id: str, rank: int, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.rank = rank
        self.failures = failures


class JobTimeoutError(XfflHpcError, TimeoutError):
    """A submitted job did not finish within the time the caller was willing to wait."""
