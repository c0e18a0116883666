"""normctl's optimizers: one file each, sharing the Adam step and the input checks."""

from ._auto_target import AutoTarget
from ._base import peak_lr
from .adamc import AdamC
from .adamwn import AdamWN
from .lion import Lion
from .muon import MuonAdamW, MuonC
from .sgdc import SGDC
from .wrapper import CorrectedDecay, NormControl

__all__ = [
    "AdamWN",
    "AdamC",
    "SGDC",
    "Lion",
    "MuonAdamW",
    "MuonC",
    "NormControl",
    "CorrectedDecay",
    "AutoTarget",
    "peak_lr",
]
