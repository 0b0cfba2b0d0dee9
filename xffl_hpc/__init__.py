"""xffl_hpc: PyTorch distributed training that starts right on HPC batch schedulers.

The scheduler adapters import no torch; the distributed API is loaded on first use.
"""

import warnings
from typing import Any

from xffl_hpc.errors import (
    CheckpointError,
    ConfigurationError,
    DistributedError,
    HostlistError,
    JobFailedError,
    JobTimeoutError,
    PlacementError,
    TopologyError,
    XfflHpcError,
)
from xffl_hpc.schedulers import Placement, detect

_DISTRIBUTED = (
    "REQUEUE_EXIT_STATUS",
    "Checkpoint",
    "DistributedState",
    "Preemption",
    "cleanup_distributed_process_group",
    "federated_average",
    "get_appropriate_sharding_strategy",
    "init_distributed_process_group",
    "load_checkpoint",
    "save_checkpoint",
    "setup_distributed_process_group",
)
#: ``submit`` lives in ``xffl_hpc.submission`` (a module named ``submit`` would replace
#: this function as an attribute of the package once imported).
_SUBMISSION = ("SubmittedJob", "submit")

__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "DistributedError",
    "HostlistError",
    "JobFailedError",
    "JobTimeoutError",
    "Placement",
    "PlacementError",
    "TopologyError",
    "XfflHpcError",
    "detect",
    *_DISTRIBUTED,
    *_SUBMISSION,
]
__version__ = "0.1.0"
#: What torch warns at import when numpy is missing: nothing in xffl_hpc needs numpy, so
#: the warning is silenced once xffl_hpc is imported (emulated ranks get it through
#: PYTHONWARNINGS, as scripts often import torch first).
NUMPY_WARNING = "Failed to initialize NumPy"
warnings.filterwarnings("ignore", message=NUMPY_WARNING, category=UserWarning)


def __getattr__(name: str) -> Any:
    if name in _DISTRIBUTED:
        from xffl_hpc import distributed

        return getattr(distributed, name)
    if name in _SUBMISSION:
        from xffl_hpc import submission

        return getattr(submission, name)
    raise AttributeError(f"module 'xffl_hpc' has no attribute {name!r}")
