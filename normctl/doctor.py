"""``normctl doctor``: which kernel each optimizer's step takes on this machine, and why.

Each line comes from the optimizers' own choice (``AdamWN.step_paths``, ``NormControl.step_path``,
``_use_fused``) on a
small tensor of each dtype and device, after one step has created its state — not from a copy of
their rules.
"""

from __future__ import annotations

import platform
import sys

import torch

from . import __version__
from .optim import SGDC, AdamC, AdamWN, NormControl, _one_pass, _one_pass_cpu


def report() -> str:
    lines = [
        f"normctl {__version__}, torch {torch.__version__}, Python {sys.version.split()[0]}, {platform.machine()}",
        f"CPU vector level (torch's dispatch): {torch.backends.cpu.get_cpu_capability()}",
        _cpu_kernel_line(),
        f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; "
        f"Triton one-pass kernel: {'available' if _one_pass.available('cuda') else 'not available'}",
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for scope in ("tensor", "global"):
                choice = _adamwn_choice(device, dtype, scope)
                lines.append(f"AdamWN {device} {str(dtype).removeprefix('torch.')} {scope}: {choice}")
            for name, optimizer in (("AdamC", AdamC), ("SGDC", SGDC)):
                lines.append(
                    f"{name} {device} {str(dtype).removeprefix('torch.')}: {_fused_line(optimizer, device, dtype)}"
                )
            for name, inner in (("Adam", torch.optim.Adam), ("SGD", torch.optim.SGD)):
                line = _wrapper_line(inner, device, dtype)
                lines.append(f"NormControl(torch {name}) {device} {str(dtype).removeprefix('torch.')}: {line}")
    return "\n".join(lines)


def _cpu_kernel_line() -> str:
    name, _ = _one_pass_cpu._build_flags()
    extension = _one_pass_cpu.kernel()
    if extension is None:
        return f"one-pass CPU kernel: not available (NORMCTL_NO_EXTENSION set or the build failed); build name {name}"
    return f"one-pass CPU kernel: built ({name})"


def _param(device: str, dtype: torch.dtype) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.randn(8, 8, device=device).to(dtype))
    p.grad = torch.zeros_like(p)
    return p


def _adamwn_choice(device: str, dtype: torch.dtype, scope: str) -> str:
    p = _param(device, dtype)
    optimizer = AdamWN([p], lr=1e-3, target=1.0, scope=scope)
    optimizer.step()  # creates the state the choice looks at
    (choice,) = optimizer.step_paths()
    assert choice is not None
    return f"{choice.path.value} — {choice.reason}"


def _wrapper_line(inner_class, device: str, dtype: torch.dtype) -> str:
    kwargs = {"momentum": 0.9} if inner_class is torch.optim.SGD else {}
    optimizer = NormControl(inner_class([_param(device, dtype)], lr=1e-3, **kwargs), target=1.0)
    optimizer.step()  # creates the state the choice looks at
    return optimizer.step_path()


def _fused_line(optimizer_class, device: str, dtype: torch.dtype) -> str:
    optimizer = optimizer_class([_param(device, dtype)], lr=1e-3, normalized=True)
    group = optimizer.param_groups[0]
    if optimizer._use_fused(group, group["params"]):
        return "torch_fused — torch's fused kernel with the corrected λ"
    return "foreach — torch's fused kernels do not take these tensors"
