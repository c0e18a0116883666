"""The "Voronoi" 2-D classification environment and model of Yu (2022).

Environment: points x uniform in [−100, 100]^D; 100–150 centres c_j uniform in the same box,
each with a class drawn uniformly from C; the label of x is the class of the centre that
minimises (x·c_j/‖c_j‖² − 1)². Training draws fresh points every step (a single pass); the
validation and test sets are fixed draws of 10 000 points. Seed 42 fixes the centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class VoronoiConfig:
    dim: int = 2  # D
    classes: int = 2  # C
    min_centres: int = 100
    max_centres: int = 150
    box: float = 100.0  # points and centres in [−box, box]^D
    seed: int = 42  # fixes the centres and the held-out sets


class VoronoiTask:
    """Centres, labelling rule, fresh training batches and fixed validation/test sets."""

    def __init__(self, cfg: VoronoiConfig = VoronoiConfig(), *, held_out: int = 10_000) -> None:
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        n = int(torch.randint(cfg.min_centres, cfg.max_centres + 1, (1,), generator=g))
        self.centres = self._uniform(n, g)  # (n, D)
        self.centre_classes = torch.randint(cfg.classes, (n,), generator=g)  # (n,)
        self.val = self._sample(held_out, g)
        self.test = self._sample(held_out, g)

    def _uniform(self, n: int, g: torch.Generator) -> torch.Tensor:
        return (torch.rand(n, self.cfg.dim, generator=g) * 2 - 1) * self.cfg.box

    def label(self, x: torch.Tensor) -> torch.Tensor:
        """argmin_j (x·c_j/‖c_j‖² − 1)², the class of that centre."""
        projection = x @ self.centres.T / self.centres.square().sum(1)  # (B, n)
        return self.centre_classes[(projection - 1).square().argmin(1)]

    def _sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._uniform(n, g)
        return x, self.label(x)

    def batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh training batch."""
        return self._sample(n, g)


class ScaleNorm(nn.Module):
    """Scale-only norm: a learned per-feature gain, after an optional RMS normalisation.

    The Voronoi model uses it without RMS normalisation by default: normalising the 2-D input
    would discard each point's radius, on which the label depends, and caps test accuracy near
    0.57 (``results/repro_voronoi_gpu_rms``); as pure gains it reproduces the study's 0.77."""

    def __init__(self, features: int, *, rms: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.rms, self.eps = rms, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return x * self.weight


ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU}
INITS = ("uniform", "normal")  # PyTorch's default, or N(0, 1/fan_in)


class Dense(nn.Module):
    """ScaleNorm → Linear (no bias) → activation → Linear (no bias)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, activation: str, rms: bool) -> None:
        super().__init__()
        self.norm = ScaleNorm(d_in, rms=rms)
        self.fc1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class ReducedAttention(nn.Module):
    """ScaleNorm, then a softmax over the feature axis."""

    def __init__(self, features: int, *, rms: bool) -> None:
        super().__init__()
        self.norm = ScaleNorm(features, rms=rms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.norm(x), dim=-1)


class VoronoiModel(nn.Module):
    """x/100 → Dense(D→H→H) → ReducedAttention → Dense(H→H→C) → ScaleNorm(C) → logits."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 512,
        classes: int = 2,
        *,
        activation: str = "relu",
        rms: bool = False,
        init: str = "uniform",
        input_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if init not in INITS:
            raise ValueError(f"init must be 'uniform' (PyTorch default) or 'normal', got {init!r}")
        self.input_scale = input_scale
        self.dense_in = Dense(dim, hidden, hidden, activation=activation, rms=rms)
        self.attention = ReducedAttention(hidden, rms=rms)
        self.dense_out = Dense(hidden, hidden, classes, activation=activation, rms=rms)
        self.norm_out = ScaleNorm(classes, rms=rms)
        if init == "normal":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=m.in_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        h = self.dense_in(x / self.input_scale)
        return self.norm_out(self.dense_out(self.attention(h)))


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch: int = 2048) -> float:
    x, y = data
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


@torch.no_grad()
def held_out(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], split: str, batch: int = 2048
) -> dict[str, float]:
    """``<split>_acc`` and ``<split>_loss`` (mean cross-entropy) of ``model`` on ``data``: the loss
    beside the accuracy, since a method can keep the accuracy and lose the calibration (a classifier
    head whose norm is held caps the logits' scale)."""
    x, y = data
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
        loss += float(F.cross_entropy(logits.float(), y[i : i + batch], reduction="sum"))
    return {f"{split}_acc": correct / len(x), f"{split}_loss": loss / len(x)}
