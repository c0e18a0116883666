"""normctl: control the norm of neural-network weights during training.

* :class:`AdamWN` — Adam with weight norm control (Loshchilov 2023).
* :class:`AdamC`, :class:`SGDC` — corrected weight decay (Defazio 2025).
* :func:`param_groups` — which weights are controlled, decayed and normalised, and why.
* :mod:`normctl.schedules` — target, rate and learning-rate schedules.
"""

from . import schedules
from .groups import format_roles, param_groups, param_roles
from .optim import SGDC, AdamC, AdamWN

__all__ = ["AdamWN", "AdamC", "SGDC", "schedules", "param_groups", "param_roles", "format_roles"]
__version__ = "0.1.0"
