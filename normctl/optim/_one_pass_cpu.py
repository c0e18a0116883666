"""AdamWN's step as one pass over memory on the CPU: a C++/OpenMP kernel built at first use.

The same extension holds SGD with momentum after Eq. 3 (``sgd_step_``), which ``NormControl``
takes around torch's own SGD (:mod:`._inner_one_pass`).

Torch's fused AdamW reads and writes every element once; Eq. 3 needs ‖θ‖ of every tensor
before the step, which costs a second read of the weights, and a per-tensor decay costs one
fused call per tensor. The kernel (``csrc/adamwn_one_pass.cpp``) instead multiplies θ by its
tensor's factor, applies Adam's step as torch's fused AdamW does, and adds up θ_new² while it
stores θ_new: the norms of the next step come out of this one (:mod:`._kept_norms`). float32 and
bfloat16 weights (bfloat16 computed in float32 and rounded on store, as torch's fused AdamW).

``torch.utils.cpp_extension`` compiles it once per environment into torch's extension cache,
under a name keyed by everything the binary depends on (about a minute; a C++ compiler with
OpenMP, and ninja — the system's or ``pip install ninja``), and says so on every build.
``make install`` builds it ahead of time (:func:`prepare`). Where the build fails, or with
``NORMCTL_NO_EXTENSION=1``, AdamWN keeps torch's fused AdamW plus a norm pass.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._adam import suit_one_pass

SOURCE = Path(__file__).parent / "csrc" / "adamwn_one_pass.cpp"
_state: dict[str, Any] = {"extension": None, "failed": False}


def _build_flags() -> tuple[str, list[str]]:
    """The extension's name and compiler flags for this CPU. Vector instructions follow torch's
    own dispatch level (AVX512 there means F, BW, VL and DQ), and the name carries it, so a
    shared cache never hands one machine's build to a CPU without its instructions. The name also
    carries a digest of everything the binary depends on — normctl's and torch's versions and
    build, the Python version, the flags and the kernel's source — so environments that share
    torch's extension cache each keep their own build instead of evicting one another's.
    ``-fno-math-errno`` lets sqrt vectorise. 512-bit vectors matter for bfloat16, where the
    step's sqrt and division per element weigh as much as the memory traffic: 0.83× torch's
    fused AdamW against 1.09× with AVX2 (GPT-2 shapes, 2 cores); float32 gains a few %."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if capability == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512"]
    from .. import __version__

    key = [__version__, torch.__version__, str(torch.version.git_version), sys.version, *flags, SOURCE.read_text()]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:12]
    return f"normctl_adamwn_one_pass_{capability.lower()}_{digest}", flags


def kernel() -> Any | None:
    """The compiled extension, or None where it cannot be had (warned once)."""
    if _state["extension"] is None and not _state["failed"]:
        if os.environ.get("NORMCTL_NO_EXTENSION"):
            _state["failed"] = True
            return None
        name, flags = _build_flags()
        try:
            from torch.utils import cpp_extension

            if not _is_built(cpp_extension, name):
                print(
                    f"normctl: building AdamWN's one-pass CPU kernel {name} (once per environment, about a minute) ...",
                    file=sys.stderr,
                    flush=True,
                )
            path = os.environ.get("PATH", "")
            # pip's ninja sits beside this interpreter, which need not be on PATH
            os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
            try:
                _state["extension"] = cpp_extension.load(
                    name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False
                )
            finally:
                os.environ["PATH"] = path
        except Exception as error:  # no compiler, no ninja, a read-only cache: fall back
            _state["failed"] = True
            warnings.warn(
                f"normctl: AdamWN's one-pass CPU kernel could not be built ({type(error).__name__}: {error}); "
                "AdamWN uses torch's fused AdamW plus a norm pass. NORMCTL_NO_EXTENSION=1 skips the attempt.",
                stacklevel=2,
            )
    return _state["extension"]


def _is_built(cpp_extension: Any, name: str) -> bool:
    try:
        directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:
        return False
    return any(directory.glob(f"{name}*.so"))


def eligible(params: Sequence[Tensor], states: Sequence[dict], group: dict) -> bool:
    """Whether a batch can take the kernel: controlled before the step, CPU tensors that suit
    a one-pass kernel (:func:`._adam.suit_one_pass`), and the kernel at hand."""
    if not (params and group["control"] and group["control_at"] == "pre_step") or torch.compiler.is_compiling():
        return False  # (dynamo cannot trace the C++ kernel: the foreach path, which inductor fuses)
    return params[0].device.type == "cpu" and suit_one_pass(params, states) and kernel() is not None


def adamwn_step_(params: list[Tensor], grads: list[Tensor], states: list[dict], group: dict, factors: Tensor) -> Tensor:
    """θ_i ← f_i·θ_i then Adam's step, for every tensor in one pass; returns ‖θ_i‖² after it
    (float64). ``factors`` holds f_i (float64, one per tensor)."""
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    step = torch.stack(steps).double()
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    extension = kernel()
    assert extension is not None, "eligible() checked that the kernel is available"
    return extension.adamwn_step(
        params,
        [g if g.is_contiguous() else g.contiguous() for g in grads],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        factors,
        lr / (1 - beta1**step),
        (1 - beta2**step).sqrt(),
        beta1,
        beta2,
        group["eps"],
    )


def sgd_step_(
    params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], starts: list[bool], group: dict, factors: Tensor
) -> Tensor:
    """θ_i ← f_i·θ_i then SGD's momentum step as torch's SGD takes it, for every tensor in one
    pass; returns ‖θ_i‖² after it (float64). ``starts[i]``: the buffer is new (zeros), and torch
    starts it at the gradient itself, whatever the dampening."""
    extension = kernel()
    assert extension is not None, "the caller checked that the kernel is available"
    momentum, dampening = float(group["momentum"]), float(group["dampening"])
    keep = torch.tensor([0.0 if s else momentum for s in starts], dtype=torch.float64)
    take = torch.tensor([1.0 if s else 1.0 - dampening for s in starts], dtype=torch.float64)
    return extension.sgd_step(
        params,
        [g if g.is_contiguous() else g.contiguous() for g in grads],
        buffers,
        factors,
        keep,
        take,
        float(group["lr"]),
        momentum,
        bool(group["nesterov"]),
    )


def alike(tensors: list[Any]) -> bool | None:
    """Whether every item is a contiguous CPU tensor of the first one's dtype, in one C++ call
    (False where an item is not a tensor); None where the kernel is not at hand."""
    if _state["extension"] is None:
        return None  # never builds the kernel: asked only on the way to using it
    try:
        return bool(_state["extension"].alike(tensors))
    except TypeError:  # an item that is not a tensor (a state yet to be made)
        return False


def first_elements(tensors: Sequence[Tensor]) -> Tensor | None:
    """Each tensor's first element (float32, 0 for an empty tensor) in one call, for contiguous
    CPU tensors of one dtype the kernel takes; None otherwise, or where the kernel is not at hand."""
    if not tensors or _state["extension"] is None:
        return None  # never builds the kernel: only a kernel's own kept norms ask
    try:  # the kernel checks device, dtype and layout itself, faster than a test per tensor here
        return _state["extension"].first_elements(list(tensors))
    except (RuntimeError, TypeError):
        return None


def bfloat16_norms(tensors: Sequence[Tensor]) -> list[Tensor] | None:
    """‖x‖ of contiguous CPU bfloat16 tensors, accumulated in float32 as the kernel reads them
    (float32, one 0-d tensor each); None where the kernel is not at hand. torch accumulates a
    bfloat16 norm in float32 only through a float32 copy of the tensor, about ten times the time
    of the norm itself on 2 cores (GPT-2 shapes)."""
    if not all(t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.is_contiguous() for t in tensors):
        return None
    extension = kernel()
    if extension is None:
        return None
    return list(extension.square_sums(list(tensors)).sqrt().to(torch.float32).unbind())


def prepare() -> bool:
    """Build the kernel now (``make install`` does) and say whether AdamWN will use it."""
    ready = kernel() is not None
    print(
        "normctl: AdamWN's one-pass CPU kernel is ready"
        if ready
        else "normctl: no one-pass CPU kernel; AdamWN uses torch's fused AdamW plus a norm pass",
        file=sys.stderr,
    )
    return ready
