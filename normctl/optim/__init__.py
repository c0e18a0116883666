"""normctl's optimizers: one file each, sharing the Adam step and the input checks."""

from ._base import peak_lr
from .adamc import AdamC
from .adamwn import AdamWN
from .sgdc import SGDC

__all__ = ["AdamWN", "AdamC", "SGDC", "peak_lr"]
