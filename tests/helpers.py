"""Shared test machinery: N steps with identical random gradients, then compare."""

from __future__ import annotations

from collections.abc import Callable

import torch

SHAPES = [(5, 3), (4,), (), (2, 3, 4), (0, 3)]
# Where the device-dependent paths (torch's fused kernels) are checked: CUDA too when present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0, shapes=SHAPES, device="cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for s in shapes]


def run(
    make_optimizer: Callable,
    *,
    steps: int = 100,
    dtype: torch.dtype = torch.float64,
    scheduler: Callable | None = None,
    grad_scale: float = 1.0,
    shapes=SHAPES,
    seed: int = 0,
    params: list[torch.Tensor] | None = None,
    device: str = "cpu",
):
    """Train fresh parameters for ``steps`` steps on seeded random gradients.

    Returns (params, optimizer). The same seed gives every optimizer the same gradients.
    """
    params = make_params(dtype, seed, shapes, device) if params is None else params
    optimizer = make_optimizer(params)
    sched = scheduler(optimizer) if scheduler else None
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * grad_scale).to(device, dtype)
        optimizer.step()
        if sched:
            sched.step()
    return params, optimizer


def cosine(steps: int = 100) -> Callable:
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)


def warmup_cosine(steps: int = 100, warmup: int = 10) -> Callable:
    from normctl import schedules

    return lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, schedules.cosine(1.0, 0.0, steps, warmup=warmup, warmup_start=0.1)
    )


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], *, exact: bool = True, **tol) -> None:
    for x, y in zip(a, b):
        if exact:
            assert torch.equal(x, y), (x - y).abs().max()
        else:
            torch.testing.assert_close(x, y, **tol)


def state_tensors(optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer state, in a stable order."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key in sorted(optimizer.state[p]):
                value = optimizer.state[p][key]
                if isinstance(value, torch.Tensor):
                    out.append(value.cpu())  # fused paths keep ``step`` on the device
    return out


def train_steps(optimizer, scheduler, params, gen: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        optimizer.step()
        scheduler.step()


def save_resume_and_continue(make_optimizer: Callable, shapes, *, steps: int = 10):
    """Train ``steps``, checkpoint (optimizer, scheduler, params, data order) through
    ``torch.save``, train ``steps`` more; then rebuild a fresh optimizer on the restored
    parameters, load the checkpoint and train the same ``steps``.

    Returns ((params, optimizer) uninterrupted, (params, optimizer) resumed).
    """
    import io

    params = make_params(shapes=shapes)
    opt = make_optimizer(params)
    sched = warmup_cosine(2 * steps, 4)(opt)
    gen = torch.Generator().manual_seed(5)
    train_steps(opt, sched, params, gen, steps)
    buffer = io.BytesIO()
    torch.save(
        {
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "gen": gen.get_state(),
            "params": [p.detach().clone() for p in params],
        },
        buffer,
    )
    train_steps(opt, sched, params, gen, steps)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = [p.clone().requires_grad_() for p in saved["params"]]
    opt2 = make_optimizer(resumed)
    sched2 = warmup_cosine(2 * steps, 4)(opt2)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    gen2 = torch.Generator()
    gen2.set_state(saved["gen"])
    train_steps(opt2, sched2, resumed, gen2, steps)
    return (params, opt), (resumed, opt2)


def untimed(final: dict) -> dict:
    """A run's final record without ``train_seconds``: what a resumed run must reproduce exactly."""
    return {k: v for k, v in final.items() if k != "train_seconds"}


def one_group(params) -> list[dict]:
    """Every tensor in one group, controlled: what a plain list of tensors meant to AdamWN and
    NormControl before plain calls left tensors with fewer than 2 dimensions alone (the tests of
    the update rule on every shape, 0-d and 1-d included)."""
    return [{"params": list(params), "control": True}]
