"""normctl: control the norm of neural-network weights during training.

* :class:`AdamWN` — Adam with weight norm control (Loshchilov 2023).
* :class:`AdamC`, :class:`SGDC` — corrected weight decay (Defazio 2025).
* :class:`NormControl`, :class:`CorrectedDecay` — the same for any torch optimizer.
* :class:`AutoTarget` — ``target="auto"``: AdamWN's target measured by the run itself.
* :func:`param_groups` — which weights are controlled, decayed and normalised, and why.
* :func:`create_optimizer` — any of them by name (``"adamwn"``, ``"lion+wn"``, ``"adamw+c"`` …).
* :mod:`normctl.schedules` — target, rate and learning-rate schedules.
* :class:`NormMonitor` — what weight decay and norm control do to a run (``normctl.monitor``).
* :func:`check` — what weight decay will do to a run, said before it starts.
"""

import warnings

with warnings.catch_warnings():  # torch without NumPy warns at import; normctl never needs NumPy
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from . import schedules  # noqa: E402
from .checks import check  # noqa: E402
from .groups import format_roles, param_groups, param_roles  # noqa: E402
from .monitor import NormMonitor  # noqa: E402
from .optim import SGDC, AdamC, AdamWN, AutoTarget, CorrectedDecay, Lion, MuonAdamW, MuonC, NormControl  # noqa: E402
from .registry import available_optimizers, create_optimizer  # noqa: E402
from .serialization import allow_normctl_objects  # noqa: E402

allow_normctl_objects()

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
    "schedules",
    "param_groups",
    "param_roles",
    "format_roles",
    "create_optimizer",
    "available_optimizers",
    "NormMonitor",
    "check",
]
__version__ = "0.1.0"
