"""``normctl train``: one run of a config into a run directory, resumable after ``kill -9``.

The run directory holds ``config.json``, ``metrics.jsonl`` (the monitor's records),
``checkpoint.pt`` (model, optimizer, scheduler, data order and monitor state, replaced
atomically every ``checkpoint_every`` steps) and, at the end, ``final.json``. Starting a run
whose directory has a checkpoint resumes from it: records logged after the checkpoint by the
killed process are dropped, so the metrics continue exactly as an uninterrupted run's would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .. import schedules
from ..data import byte_tokens, load_text, random_windows, train_val_split
from ..data.fashion_mnist import load_fashion_mnist
from ..groups import param_groups
from ..monitor import JsonlSink, NormMonitor, read_jsonl
from .config import RunConfig
from .methods import build_method
from .models import GPT, GPTConfig, ResNet
from .voronoi import VoronoiModel, VoronoiTask, accuracy

CHECKPOINT = "checkpoint.pt"


@dataclass
class Task:
    model: nn.Module
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # a fresh training batch
    loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]


def build_task(cfg: RunConfig) -> Task:
    torch.manual_seed(cfg.seed)
    if cfg.task == "gpt":
        train, val = train_val_split(byte_tokens(load_text("austen")))
        model: nn.Module = GPT(
            GPTConfig(vocab_size=256, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=4, n_embd=cfg.n_embd)
        )

        @torch.no_grad()
        def evaluate(m: nn.Module) -> dict[str, float]:
            g = torch.Generator().manual_seed(1234)  # the same held-out windows for every run
            losses = [m(*random_windows(val, cfg.batch_size, cfg.block_size, g))[1] for _ in range(16)]
            return {"val_loss": float(torch.stack(losses).mean())}

        return Task(
            model, lambda g: random_windows(train, cfg.batch_size, cfg.block_size, g), lambda m, b: m(*b)[1], evaluate
        )
    if cfg.task == "fmnist":
        return _fashion_mnist_task(cfg)
    task = VoronoiTask()
    model = VoronoiModel(task.cfg.dim, cfg.hidden, task.cfg.classes)
    return Task(
        model,
        lambda g: task.batch(cfg.batch_size, g),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        lambda m: {"val_acc": accuracy(m, task.val), "test_acc": accuracy(m, task.test)},
    )


def _fashion_mnist_task(cfg: RunConfig) -> Task:
    images, labels = load_fashion_mnist("train", full=cfg.full_data)
    test_images, test_labels = load_fashion_mnist("test", full=cfg.full_data)
    model = ResNet(num_classes=10, in_channels=1, width=cfg.width, blocks_per_stage=cfg.blocks_per_stage)

    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(images), (cfg.batch_size,), generator=g)
        return images[index], labels[index]

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        correct = sum(
            int((m(test_images[i : i + 500]).argmax(1) == test_labels[i : i + 500]).sum())
            for i in range(0, len(test_images), 500)
        )
        return {"test_acc": correct / len(test_images)}

    return Task(model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate)


def lr_multiplier(cfg: RunConfig) -> schedules.Schedule:
    if cfg.schedule == "constant":
        return schedules.constant(1.0)
    return schedules.cosine(1.0, 0.1, cfg.steps, warmup=min(cfg.warmup, cfg.steps))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill leaves either the old or the new checkpoint, never half of one


def _truncate_metrics(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def train(cfg: RunConfig, run_dir: str | Path, *, verbose: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its checkpoint) and return the final metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = build_task(cfg)
    model = task.model
    optimizer = build_method(
        cfg.method,
        model,
        param_groups(model, weight_decay=cfg.weight_decay),
        lr=cfg.lr,
        steps=cfg.steps,
        rate=cfg.rate,
        adamw_norm_ratio=cfg.target_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    data_order = torch.Generator().manual_seed(1000 + cfg.seed)
    monitor = NormMonitor(model, optimizer, every=cfg.monitor_every)

    start = 0
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != json.loads(cfg.to_json()):
            raise ValueError(f"{run_dir} holds a checkpoint of a different config; use another directory")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_order.set_state(state["data_order"])
        monitor.load_state_dict(state["monitor"])
        start = state["step"]
        _truncate_metrics(run_dir / "metrics.jsonl", start)
        if verbose:
            print(f"resuming {run_dir} at step {start}/{cfg.steps}", flush=True)
    else:
        (run_dir / "config.json").write_text(cfg.to_json())
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    sink = JsonlSink(run_dir)
    monitor.sinks.append(sink)

    began = time.perf_counter()
    model.train()
    for step in range(start, cfg.steps):
        loss = task.loss(model, task.batch(data_order))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        monitor.observe(loss=loss)
        scheduler.step()
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _atomic_save(
                {
                    "config": json.loads(cfg.to_json()),
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "data_order": data_order.get_state(),
                    "monitor": monitor.state_dict(),
                },
                checkpoint,
            )
            if verbose:
                rate = (done - start) / max(time.perf_counter() - began, 1e-9)
                print(f"step {done}/{cfg.steps}  loss {float(loss.detach()):.4f}  {rate:.1f} steps/s", flush=True)
    monitor.close()
    model.eval()
    final = {
        "label": cfg.label or cfg.method,
        "method": cfg.method,
        "seed": cfg.seed,
        "steps": cfg.steps,
        **task.evaluate(model),
    }
    (run_dir / "final.json").write_text(json.dumps(final, indent=2))
    return final
