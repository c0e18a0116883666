"""``normctl-lab voronoi``: optimizers compared on the Voronoi task of Yu (2022) with the monitor on.

Constant learning rate and batch 1024 as in Yu (2022); the decayed/controlled groups come from
``normctl.param_groups`` (norm gains are not decayed here, unlike the original study, which
decays every parameter).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from normctl.groups import param_groups
from normctl.monitor import NormMonitor
from normctl.rules import combined_norm, tensor_norms

from .methods import adamw_first, build_method, check_methods, is_norm_controlled
from .progress import progress
from .rundir import finish_run, start_run, strict_json, write_report
from .voronoi import VoronoiModel, VoronoiTask, held_out


@dataclass(frozen=True)
class VoronoiRunConfig:
    methods: tuple[str, ...] = ("adamw", "adamwn", "adam+wn", "sgd+wn", "lion+wn")
    steps: int = 2000  # the original study: 10 000
    batch_size: int = 1024
    hidden: int = 512  # H
    lr: float = 3e-3  # Adam-scale; SGD 100×, Lion 0.1× (experiments.methods)
    weight_decay: float = 1e-2
    rate: float = 1e-2  # k of the norm-controlled methods
    seed: int = 0  # model init and data order (the task itself is fixed by seed 42)
    monitor_every: int = 50
    out_dir: str | None = "runs/voronoi"


def _controlled_norm(groups: list[dict]) -> float:
    return float(combined_norm(tensor_norms([p.detach() for g in groups if g["control"] for p in g["params"]])))


def train_method(
    method: str,
    cfg: VoronoiRunConfig,
    task: VoronoiTask,
    *,
    adamw_norm_ratio: float | None = None,
    run_dir: Path | None = None,
    verbose: bool = False,
) -> dict:
    torch.manual_seed(cfg.seed)
    model = VoronoiModel(task.cfg.dim, cfg.hidden, task.cfg.classes)
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    optimizer = build_method(
        method, model, groups, lr=cfg.lr, steps=cfg.steps, rate=cfg.rate, adamw_norm_ratio=adamw_norm_ratio
    )
    sinks = start_run(run_dir, {"method": method, "seed": cfg.seed, "voronoi": asdict(cfg)})
    initial = _controlled_norm(groups)
    data = torch.Generator().manual_seed(1000 + cfg.seed)
    start = time.perf_counter()
    with (
        NormMonitor(model, optimizer, every=cfg.monitor_every, sinks=sinks) as monitor,
        progress(cfg.steps, desc=method, enabled=verbose) as bar,
    ):
        for _ in range(cfg.steps):
            x, y = task.batch(cfg.batch_size, data)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            monitor.observe(loss=loss)
            bar.update(1)
    model.eval()
    result = {
        "method": method,
        **held_out(model, task.val, "val"),
        **held_out(model, task.test, "test"),
        "norm_ratio": _controlled_norm(groups) / initial,
        "seconds": time.perf_counter() - start,
    }
    finish_run(run_dir, result)
    return result


def run_voronoi(cfg: VoronoiRunConfig = VoronoiRunConfig(), *, verbose: bool = True) -> list[dict]:
    check_methods(cfg.methods)
    task = VoronoiTask()
    out = Path(cfg.out_dir) if cfg.out_dir else None
    results: list[dict] = []
    for method in adamw_first(cfg.methods):
        ratio = results[0]["norm_ratio"] if results and results[0]["method"] == "adamw" else None
        if verbose:
            extra = f" (target ratio {ratio or 1.0:.3f})" if is_norm_controlled(method) else ""
            print(f"training {method} for {cfg.steps} steps{extra} ...", flush=True)
        run_dir = out / method if out else None
        results.append(train_method(method, cfg, task, adamw_norm_ratio=ratio, run_dir=run_dir, verbose=verbose))
    if verbose:
        print(f"{'method':<9} {'val acc':>8} {'test acc':>9} {'‖θ‖/‖θ0‖':>9} {'seconds':>8}")
        for r in results:
            print(
                f"{r['method']:<9} {r['val_acc']:>8.4f} {r['test_acc']:>9.4f} {r['norm_ratio']:>9.3f} "
                f"{r['seconds']:>8.1f}"
            )
    if out is not None:
        summary = {"config": asdict(cfg), "methods": {r["method"]: r for r in results}}
        (out / "summary.json").write_text(strict_json(summary, indent=2))
        write_report(out, [r["method"] for r in results], "normctl-lab voronoi", verbose=verbose)
    return results
