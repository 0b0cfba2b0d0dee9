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
