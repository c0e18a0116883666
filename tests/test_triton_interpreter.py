"""AdamWN's CUDA kernel, run by Triton's interpreter on CPU tensors against the reference path.

The Triton kernel computes Eq. 3's factor itself (from its kept norms) and Adam's step in one
pass; ``TRITON_INTERPRET=1`` runs the same kernel source with numpy on the CPU, so its arithmetic,
its pointer tables and the optimizer's bookkeeping around it (kept norms, scope norms, tables
rebuilt after an in-place change) are checked without a GPU. The interpreter is chosen when
Triton is imported, hence a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import json, torch, normctl
    from normctl.optim import _one_pass
    _one_pass.available = lambda device_type="cuda": True  # CPU tensors through the interpreter

    SHAPES = [(300,), (7, 5), (40000,), (3, 4, 5)]  # 40000 spans two kernel programs (CHUNK 32768)
    results = {}
    for dtype in ("float32", "bfloat16"):
        for scope in ("tensor", "group", "global"):
            g = torch.Generator().manual_seed(0)
            start = [torch.randn(s, generator=g).to(getattr(torch, dtype)) for s in SHAPES]
            kernel = [p.clone().requires_grad_() for p in start]
            reference = [p.clone().requires_grad_() for p in start]
            exact = [p.double().requires_grad_() for p in start]  # the same steps in float64
            kw = dict(lr=1e-2, target=normctl.schedules.linear_ramp(1.0, 1.5, 4), rate=0.2, scope=scope)
            groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:]}]
            opt_k = normctl.AdamWN(groups(kernel), **kw)
            opt_r = normctl.AdamWN(groups(reference), foreach=False, **kw)
            opt_e = normctl.AdamWN(groups(exact), foreach=False, **kw)
            paths = set()
            for step in range(6):
                for p, q, e in zip(kernel, reference, exact):
                    p.grad = q.grad = torch.randn(p.shape, generator=g).to(p.dtype)
                    e.grad = p.grad.double()
                paths |= {c.path.value for c in opt_k.step_paths()}
                opt_k.step()
                opt_r.step()
                opt_e.step()
                if step == 2:  # zeroed in place: no direction, so Eq. 3 leaves it; tables rebuilt
                    with torch.no_grad():
                        kernel[1].zero_()
                        reference[1].zero_()
                        exact[1].zero_()
            results[f"{dtype}/{scope}"] = {
                "paths": sorted(paths),
                "error": max(float((p.float() - q.float()).abs().max()) for p, q in zip(kernel, reference)),
                "kernel_vs_float64": max(float((p.double() - e).abs().max()) for p, e in zip(kernel, exact)),
                "reference_vs_float64": max(float((q.double() - e).abs().max()) for q, e in zip(reference, exact)),
                "scale": max(float(q.float().abs().max()) for q in reference),
            }
    print(json.dumps(results))
    """
)


def test_the_cuda_kernel_steps_as_the_reference_path_does():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    for case, result in results.items():
        assert result["paths"] == ["cuda_one_pass"], case
        if case.startswith("float32"):  # the same arithmetic in another order
            assert result["error"] <= 1e-5 * result["scale"], (case, result)
        else:  # bfloat16: the kernel rounds θ, m, v once per step, the reference after every op
            assert result["kernel_vs_float64"] <= result["reference_vs_float64"], (case, result)
