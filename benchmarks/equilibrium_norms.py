"""The norm decoupled decay settles at, against what the equilibrium rule predicts from the update.

Three measurements, each written to ``results/bench/equilibrium_norms.json`` (quoted by
docs/math.md):

* ``newton_schulz``: ‖O‖_F / sqrt(min(m, n)) of Muon's 5-step Newton–Schulz output for Gaussian
  matrices of GPT shapes, and for a rank-4 matrix plus 1 % noise (whose small singular values
  the iteration does not lift to 1).
* ``muon_noise``: Muon (normctl.MuonAdamW, torch.optim.Muon's step) on one 256 × 128 matrix with
  independent N(0, 1) gradients, γ = 0.02, λ = 0.1 (decay's time scale 1/(2γλ) = 250 steps), for
  4000 steps at momentum 0 and 0.95: the settled norm (mean of the last half), the update's size
  and cosine with the weight there, the orthogonal closed form sqrt(γ/2λ)·‖u‖ and the fixed point
  with the measured cosine; and ``target="auto"`` (NormControl over the same Muon, λ_ref = λ, a
  200-step window, the run's length given) with and without its measured alignment.
* ``adam_layernorm``: the same comparison for AdamW on a LayerNorm MLP (the normalised matrix),
  3 seeds, γ = 0.01, λ = 0.1 (time scale 500 steps), 3000 steps at a constant lr.

``python benchmarks/equilibrium_norms.py`` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from common import machine, write_json
from torch import nn

import normctl
from normctl import AutoTarget, MuonAdamW, NormControl, rules
from normctl.optim.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, newton_schulz

SHAPES = [(256, 128), (768, 768), (3072, 768)]


def newton_schulz_sizes() -> dict:
    """‖O‖_F / sqrt(min(m, n)) for Gaussian and rank-4-plus-noise inputs."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for rows, columns in SHAPES:
        gaussian = torch.randn(rows, columns, generator=g)
        low_rank = torch.randn(rows, 4, generator=g) @ torch.randn(4, columns, generator=g)
        low_rank += 0.01 * low_rank.norm() / math.sqrt(rows * columns) * torch.randn(rows, columns, generator=g)
        for name, matrix in (("gaussian", gaussian), ("rank4_plus_noise", low_rank)):
            orthogonal = newton_schulz(matrix, NS_COEFFICIENTS, NS_STEPS, NS_EPS).float()
            out[f"{name} {rows}x{columns}"] = float(orthogonal.norm()) / math.sqrt(min(rows, columns))
    return out


def muon_noise_run(momentum: float, steps: int, lr: float, decay: float, target: AutoTarget | None = None) -> dict:
    """One 256 × 128 matrix under Muon with N(0, 1) gradients; with ``target`` under NormControl
    (the window is Muon with decay λ_ref, then the target is set)."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(256, 128) * 0.02)
    grads = torch.Generator().manual_seed(1)
    inner = MuonAdamW(
        [{"params": [weight], "muon": True}], lr=lr, weight_decay=0.0 if target else decay, momentum=momentum
    )
    optimizer = NormControl(inner, target=target, rate=0.01) if target else inner
    sizes, cosines, norms = [], [], []
    for _ in range(target.steps if target else steps):
        weight.grad = torch.randn(weight.shape, generator=grads)
        before = weight.detach().clone()
        optimizer.step()
        step = weight.detach() - (1 - lr * decay) * before  # −γu
        sizes.append(float(step.norm()) / lr)
        cosines.append(float((before * step).sum() / (before.norm() * step.norm())))
        norms.append(float(weight.detach().norm()))
    if target:
        return {"target": float(optimizer.state[weight]["auto_target"])}
    settled = slice(steps // 2, None)
    update_norm = math.sqrt(statistics.mean(u * u for u in sizes[settled]))
    cosine = statistics.mean(cosines[settled])
    return {
        "settled_norm": statistics.mean(norms[settled]),
        "update_norm": update_norm,
        "cosine": cosine,
        "orthogonal_form": rules.decayed_steady_norm(update_norm, lr, decay),
        "fixed_point_with_cosine": rules.decayed_steady_norm(update_norm, lr, decay, cosine),
    }


def muon_noise(steps: int = 4000, lr: float = 0.02, decay: float = 0.1) -> dict:
    out = {}
    for momentum in (0.0, 0.95):
        run = muon_noise_run(momentum, steps, lr, decay)
        for aligned in (True, False):
            auto = AutoTarget(weight_decay=decay, steps=200, total_steps=steps, alignment=aligned)
            target = muon_noise_run(momentum, steps, lr, decay, auto)["target"]
            suffix = "" if aligned else "_without_alignment"
            run[f"auto_target{suffix}"] = target
            run[f"auto_target{suffix}_over_settled"] = target / run["settled_norm"]
        out[f"momentum {momentum}"] = run
    return out


class LayerNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(32, 128)
        self.norm = nn.LayerNorm(128)
        self.out = nn.Linear(128, 1)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.hidden(x))))


def adam_layernorm(seeds=(0, 1, 2), steps: int = 3000, lr: float = 0.01, decay: float = 0.1) -> dict:
    """AdamW's end norm of the normalised matrix, against ``target="auto"`` from a 200-step window."""
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for method in ("adamw", "auto", "auto_without_alignment"):
            torch.manual_seed(seed)
            model = LayerNormMLP()
            data = torch.Generator().manual_seed(100 + seed)
            x, teacher = torch.randn(4096, 32, generator=data), torch.randn(32, generator=data)
            y = torch.sin(x @ teacher).unsqueeze(1)
            groups = [
                {"params": [model.hidden.weight], "control": True},
                {"params": [p for n, p in model.named_parameters() if n != "hidden.weight"], "control": False},
            ]
            if method == "adamw":
                optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=decay)
            else:
                auto = AutoTarget(weight_decay=decay, steps=200, total_steps=steps, alignment=method == "auto")
                groups[1]["weight_decay"] = decay
                optimizer = normctl.AdamWN(groups, lr=lr, target=auto, rate=0.01)
            batches = torch.Generator().manual_seed(200 + seed)
            for _step in range(steps if method == "adamw" else 200):
                index = torch.randint(0, 4096, (64,), generator=batches)
                loss = (model(x[index]) - y[index]).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if method == "adamw":
                row["adamw_end_norm"] = float(model.hidden.weight.detach().norm())
            else:
                row[f"{method}_target"] = float(optimizer.state[model.hidden.weight]["auto_target"])
        for method in ("auto", "auto_without_alignment"):
            row[f"{method}_over_adamw"] = row[f"{method}_target"] / row["adamw_end_norm"]
        rows.append(row)
    return {
        "by_seed": rows,
        **{
            f"{key}_mean": statistics.mean(r[key] for r in rows)
            for key in ("auto_over_adamw", "auto_without_alignment_over_adamw")
        },
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    began = time.perf_counter()
    results = {"newton_schulz": newton_schulz_sizes()}
    print("Newton–Schulz ‖O‖/sqrt(min):", {k: round(v, 3) for k, v in results["newton_schulz"].items()}, flush=True)
    results["muon_noise"] = muon_noise()
    print("Muon on noise:", results["muon_noise"], flush=True)
    results["adam_layernorm"] = adam_layernorm()
    print("AdamW on a LayerNorm MLP:", {k: v for k, v in results["adam_layernorm"].items() if k != "by_seed"})
    path = write_json(
        "equilibrium_norms", {"machine": machine(), "seconds": time.perf_counter() - began, "results": results}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
