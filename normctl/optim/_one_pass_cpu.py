"""The CPU kernel of AdamWN's one-pass step (``csrc/one_pass_cpu.cpp``), built at first use.

``torch.utils.cpp_extension`` compiles it once per machine into torch's extension cache
(about a minute; a C++ compiler and ninja — the system's or ``pip install ninja`` — are
needed). Where that fails, or with ``NORMCTL_NO_EXTENSION=1``, AdamWN keeps torch's fused
AdamW plus a norm pass.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).parent / "csrc" / "one_pass_cpu.cpp"
NAME = "normctl_one_pass_cpu"
_state: dict[str, Any] = {"extension": None, "failed": False}


def kernel() -> Any | None:
    """The compiled extension, or None where it cannot be had."""
    if _state["extension"] is None and not _state["failed"]:
        if os.environ.get("NORMCTL_NO_EXTENSION"):
            _state["failed"] = True
            return None
        try:
            from torch.utils import cpp_extension

            if not _is_built(cpp_extension):
                print("normctl: building the CPU one-pass AdamWN kernel (once per machine) ...", file=sys.stderr)
            path = os.environ.get("PATH", "")
            # the `ninja` of pip's ninja package sits beside this interpreter, maybe not on PATH
            os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
            try:
                _state["extension"] = cpp_extension.load(
                    name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp-simd"], verbose=False
                )
            finally:
                os.environ["PATH"] = path
        except Exception as error:  # no compiler, no ninja, a read-only cache: fall back
            _state["failed"] = True
            warnings.warn(
                f"normctl: the CPU one-pass kernel could not be built ({type(error).__name__}: {error}); "
                "AdamWN uses torch's fused AdamW plus a norm pass. NORMCTL_NO_EXTENSION=1 skips the attempt.",
                stacklevel=2,
            )
    return _state["extension"]


def _is_built(cpp_extension: Any) -> bool:
    try:
        directory = Path(cpp_extension._get_build_directory(NAME, verbose=False))
    except Exception:
        return False
    return any(directory.glob(f"{NAME}*.so"))
