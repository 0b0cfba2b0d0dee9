"""Scheduler and launcher adapters: from an environment to a :class:`Placement`.

No torch here: ``xffl-hpc env`` answers without importing it.
"""

from xffl_hpc.schedulers.detect import detect
from xffl_hpc.schedulers.placement import Placement

__all__ = ["Placement", "detect"]
