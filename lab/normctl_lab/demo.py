"""``normctl-lab demo``: AdamW vs AdamWN vs AdamC on a small GPT trained on Jane Austen.

Follows the recipe of Loshchilov (2023): train AdamW first, measure the norm ratio its
decayed weights end at, then schedule AdamWN's target to that ratio (linear ramp over the
first 5 % of training, then constant). AdamC uses AdamW's λ with the correction on the
normalised layers. All three share data order, initial weights and the warm-up + cosine lr.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from normctl import schedules
from normctl.groups import param_groups
from normctl.monitor import NormMonitor
from normctl.rules import combined_norm, tensor_norms

from .data import byte_tokens, load_text, random_windows, train_val_split
from .methods import adamw_first, build_method, check_methods, is_norm_controlled
from .models import GPT, GPTConfig
from .progress import progress
from .rundir import start_run, write_report


@dataclass(frozen=True)
class DemoConfig:
    steps: int = 600  # optimizer steps per method
    batch_size: int = 16  # sequences per step
    block_size: int = 64  # tokens per sequence (UTF-8 bytes)
    n_layer: int = 2
    n_embd: int = 96
    lr: float = 3e-3  # peak learning rate
    warmup: int = 20  # linear warm-up steps
    weight_decay: float = 0.1  # λ of AdamW and AdamC
    rate: float = 1e-2  # AdamWN's k
    eval_batches: int = 16
    seed: int = 0
    monitor_every: int = 10  # NormMonitor interval
    out_dir: str | None = "runs/demo"  # run directories and report.html; None writes nothing
    methods: tuple[str, ...] = ("adamw", "adamwn", "adamc")  # any create_optimizer name


@dataclass(frozen=True)
class DemoResult:
    method: str
    val_loss: float
    train_loss: float
    norm_ratio: float  # ‖θ_T‖/‖θ_0‖ over the decayed/controlled weights
    grad_norm: float  # global gradient norm at the last step
    seconds: float


def controlled_norm(groups: list[dict]) -> float:
    params = [p for g in groups if g["control"] for p in g["params"]]
    return float(combined_norm(tensor_norms([p.detach() for p in params])))


def train_one(
    method: str,
    cfg: DemoConfig,
    train: torch.Tensor,
    val: torch.Tensor,
    adamw_norm_ratio: float | None = None,
    run_dir: Path | None = None,
    verbose: bool = False,
) -> DemoResult:
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=256, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=4, n_embd=cfg.n_embd))
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    optimizer = build_method(
        method, model, groups, lr=cfg.lr, steps=cfg.steps, rate=cfg.rate, adamw_norm_ratio=adamw_norm_ratio
    )
    lr_multiplier = schedules.cosine(1.0, 0.1, cfg.steps, warmup=cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier)

    sinks = start_run(run_dir, {"method": method, "seed": cfg.seed, "demo": asdict(cfg)})
    monitor = NormMonitor(model, optimizer, every=cfg.monitor_every, sinks=sinks)

    initial_norm = controlled_norm(groups)
    data_order = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    model.train()
    with progress(cfg.steps, desc=method, enabled=verbose) as bar:
        for _ in range(cfg.steps):
            x, y = random_windows(train, cfg.batch_size, cfg.block_size, data_order)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # measure only
            optimizer.step()
            monitor.observe(loss=loss)
            scheduler.step()
            bar.update(1)
    seconds = time.perf_counter() - start
    monitor.close()
    return DemoResult(
        method,
        evaluate(model, val, cfg),
        float(loss.detach()),
        controlled_norm(groups) / initial_norm,
        float(grad_norm),
        seconds,
    )


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, cfg: DemoConfig) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same held-out windows for every method
    losses = [model(*random_windows(tokens, cfg.batch_size, cfg.block_size, g))[1] for _ in range(cfg.eval_batches)]
    return float(torch.stack(losses).mean())


def run_demo(cfg: DemoConfig = DemoConfig(), *, verbose: bool = True) -> list[DemoResult]:
    train, val = train_val_split(byte_tokens(load_text("austen")))
    check_methods(cfg.methods)
    methods = adamw_first(cfg.methods)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    results: list[DemoResult] = []
    for method in methods:
        ratio = results[0].norm_ratio if results and results[0].method == "adamw" else None
        if verbose:
            controlled = is_norm_controlled(method)
            extra = (
                f" (target ratio {ratio or 1.0:.3f}, measured on AdamW)"
                if controlled and ratio
                else " (target ratio 1.0)"
                if controlled
                else ""
            )
            print(f"training {method} for {cfg.steps} steps{extra} ...", flush=True)
        results.append(
            train_one(
                method, cfg, train, val, adamw_norm_ratio=ratio, run_dir=out / method if out else None, verbose=verbose
            )
        )
    if verbose:
        print(format_results(results))
    if out is not None:
        write_report(out, [r.method for r in results], "normctl-lab demo", verbose=verbose)
    return results


def format_results(results: list[DemoResult]) -> str:
    lines = [f"{'method':<8} {'val loss':>9} {'train loss':>11} {'‖θ‖/‖θ0‖':>9} {'grad norm':>10} {'seconds':>8}"]
    for r in results:
        lines.append(
            f"{r.method:<8} {r.val_loss:>9.4f} {r.train_loss:>11.4f} {r.norm_ratio:>9.3f} "
            f"{r.grad_norm:>10.3f} {r.seconds:>8.1f}"
        )
    return "\n".join(lines)
