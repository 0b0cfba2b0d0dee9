"""xffl_hpc: PyTorch distributed training that starts right on HPC batch schedulers."""

from xffl_hpc.errors import HostlistError, PlacementError, XfflHpcError
from xffl_hpc.schedulers import Placement, detect

__all__ = ["HostlistError", "Placement", "PlacementError", "XfflHpcError", "detect"]
__version__ = "0.1.0"
