"""``normctl-lab train``: one run of a config into a run directory, resumable after ``kill -9``.

The run directory holds ``config.json``, ``metrics.jsonl`` (the monitor's records),
``evals.jsonl`` (held-out metrics every ``eval_every`` steps), ``environment.json``,
``checkpoint.pt`` (model, optimizer, scheduler, data order and monitor state, replaced
atomically every ``checkpoint_every`` steps) and, at the end, ``final.json``. Starting a run
whose directory has a checkpoint resumes from it: records logged after the checkpoint by the
killed process are dropped, so the metrics continue exactly as an uninterrupted run's would.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

import normctl
from normctl import schedules
from normctl.groups import param_groups
from normctl.monitor import JsonlSink, NormMonitor, read_jsonl, tail_rise

from . import checkpoint as checkpoints
from . import parallel
from .config import RunConfig
from .data import byte_tokens, load_text, random_windows, train_val_split
from .data.fashion_mnist import load_fashion_mnist
from .lock import RunLock
from .methods import build_method, build_plain, target_schedule, uses_muon, with_gains_controlled
from .models import GPT, GPTConfig, ResNet, TorchLM
from .progress import progress
from .rundir import describe_environment, finish_run, record_environment, strict_json
from .voronoi import VoronoiModel, VoronoiTask, held_out

CHECKPOINT = "checkpoint.pt"
EVALS = "evals.jsonl"  # held-out metrics every eval_every steps
SHARDED_CHECKPOINT = "checkpoint.dcp"  # a torch.distributed.checkpoint directory (several processes)
SHARDED_CHECKPOINTS = (SHARDED_CHECKPOINT, SHARDED_CHECKPOINT + ".old")  # the newest and, mid-rename, the previous


@dataclass
class Task:
    model: nn.Module
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # a fresh training batch
    loss: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]


def build_task(cfg: RunConfig) -> Task:
    torch.manual_seed(cfg.seed)
    if cfg.task in ("gpt", "torchlm"):
        train, val = train_val_split(byte_tokens(load_text(cfg.corpus)))
        # the selection split is the training stream's own tail: val (the corpus's tail) stays unseen
        train, selection = train_val_split(train, cfg.selection_split) if cfg.selection_split else (train, None)
        if cfg.task == "torchlm":
            model: nn.Module = TorchLM(256, cfg.block_size, cfg.n_layer, cfg.n_embd)
        else:
            model = GPT(
                GPTConfig(
                    vocab_size=256,
                    block_size=cfg.block_size,
                    n_layer=cfg.n_layer,
                    n_head=4,
                    n_embd=cfg.n_embd,
                    init=cfg.gpt_init,
                )
            )

        @torch.no_grad()
        def mean_loss(m: nn.Module, tokens: torch.Tensor, batches: int) -> float:
            g = torch.Generator().manual_seed(1234)  # the same held-out windows for every run
            windows = (random_windows(tokens, cfg.batch_size, cfg.block_size, g) for _ in range(batches))
            return float(torch.stack([m(*to_device(w, m))[1] for w in windows]).mean())

        def evaluate(m: nn.Module) -> dict[str, float]:
            # test_loss reads 4× val_loss's windows of the same tail (its first 16 are val_loss's):
            # the tuned finals report on an evaluation at least as large as the selection's
            held_out = {"val_loss": mean_loss(m, val, 16), "test_loss": mean_loss(m, val, 64)}
            # 4× the windows: configurations are told apart by differences near the evaluation's noise
            return held_out if selection is None else held_out | {"selection_loss": mean_loss(m, selection, 64)}

        return Task(
            model, lambda g: random_windows(train, cfg.batch_size, cfg.block_size, g), lambda m, b: m(*b)[1], evaluate
        )
    if cfg.task == "fmnist":
        return _fashion_mnist_task(cfg)
    task = VoronoiTask()
    model = VoronoiModel(
        task.cfg.dim, cfg.hidden, task.cfg.classes, activation=cfg.activation, rms=cfg.rms, init=cfg.init
    )
    return Task(
        model,
        lambda g: task.batch(cfg.batch_size, g),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        lambda m: held_out(m, to_device(task.val, m), "val") | held_out(m, to_device(task.test, m), "test"),
    )


def _fashion_mnist_task(cfg: RunConfig) -> Task:
    images, labels = load_fashion_mnist("train", full=cfg.full_data)
    test_images, test_labels = load_fashion_mnist("test", full=cfg.full_data)
    kept = len(images) - int(len(images) * cfg.selection_split)  # the rest: the selection split
    selection = images[kept:], labels[kept:]
    images, labels = images[:kept], labels[:kept]
    model = ResNet(num_classes=10, in_channels=1, width=cfg.width, blocks_per_stage=cfg.blocks_per_stage)

    def batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(images), (cfg.batch_size,), generator=g)
        return images[index], labels[index]

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        test = held_out(m, to_device((test_images, test_labels), m), "test", batch=500)
        if not cfg.selection_split:
            return test
        return test | held_out(m, to_device(selection, m), "selection", batch=500)

    return Task(model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate)


def to_device(pair: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    return pair[0].to(device), pair[1].to(device)


def lr_multiplier(cfg: RunConfig) -> schedules.Schedule:
    return cfg.lr_multiplier


def _truncate_metrics(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


class RunInterrupted(Exception):
    """Ctrl-C during a run; the message says where it stopped and how to resume."""


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    verbose: bool = True,
    restart: bool = False,
    restart_unsaved: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its checkpoint) and return the final metrics.

    One process writes a run directory at a time (:class:`~normctl_lab.lock.RunLock`). A
    directory holding metrics but no checkpoint is refused unless ``restart`` (which deletes
    what the earlier run wrote) or, where the earlier run had this very config and stopped
    before its first checkpoint, ``restart_unsaved`` (a sweep's own run: only its first steps'
    records are lost, no saved state). A non-finite loss stops the run (``on_nonfinite="stop"``: the
    returned and written final record says ``"status": "diverged"``) or skips that step
    (``"skip"``). Ctrl-C raises :class:`RunInterrupted` naming the last checkpoint.

    Launched by ``torchrun`` with several processes, every process draws the same global
    batch and trains on its slice; the model is replicated (``parallel="ddp"``) or sharded
    (``"fsdp"``), checkpoints go through ``torch.distributed.checkpoint`` and rank 0 writes
    the run directory. The metrics are those of a single process with the same config.
    """
    world = parallel.init_world(cfg.device)
    try:
        run_dir = Path(run_dir)
        lock = RunLock(run_dir) if world.is_main else contextlib.nullcontext()
        with lock:
            if restart_unsaved and world.is_main and _stopped_before_first_checkpoint(run_dir, cfg):
                if verbose:
                    print(f"{run_dir} stopped before its first checkpoint; training it from step 0", flush=True)
                restart = True
            return _train(cfg, run_dir, world, verbose=verbose and world.is_main, restart=restart)
    finally:
        parallel.close_world(world)


def _train(cfg: RunConfig, run_dir: Path, world: parallel.World, *, verbose: bool, restart: bool) -> dict[str, Any]:
    main = world.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    if restart and main:
        _clear_run(run_dir)
    task = build_task(cfg)  # the same seed on every rank: the same initial weights
    model = parallel.wrap(task.model.to(world.device), cfg.parallel, world)
    net = parallel.unwrap(model)
    optimizer = _build_optimizer(cfg, net)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    data_order = torch.Generator().manual_seed(1000 + cfg.seed)

    state = _restore(cfg, run_dir, world, model, optimizer, scheduler, data_order)  # None: nothing to resume
    start, skipped_before = 0, 0
    seconds_before: float | None = 0.0
    if state is not None:
        start = state["step"]
        skipped_before = state.get("skipped_steps", 0)
        seconds_before = state.get("train_seconds")  # None: a checkpoint from before it was kept, total unknown
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", start)
            _truncate_metrics(run_dir / EVALS, start)
        if verbose:
            print(f"resuming {run_dir} at step {start}/{cfg.steps}", flush=True)
    elif main:
        _refuse_orphaned_metrics(run_dir)
        (run_dir / "config.json").write_text(cfg.to_json())
    # Created after the load: torch.distributed.checkpoint may take an optimizer step to
    # create state (at lr 0, zero gradients), which the monitor would otherwise record.
    monitor = NormMonitor(net, optimizer, every=cfg.monitor_every)
    if state is not None:
        monitor.load_state_dict(state["monitor"])
    elif verbose:  # what decay will do to this run, before its first step
        print(normctl.check(optimizer, net, steps=cfg.steps, lr_schedule=cfg.lr_multiplier), flush=True)
    if main:
        environment = describe_environment(device=str(world.device), world_size=world.size, parallel=cfg.parallel)
        record_environment(run_dir, environment, resumed_at=None if state is None else start)
        monitor.sinks.append(JsonlSink(run_dir, resume=state is not None))

    forward = cast(nn.Module, torch.compile(model)) if cfg.compile else model
    began = time.perf_counter()

    def elapsed() -> float:  # seconds in this process's training loop
        return time.perf_counter() - began

    def trained_seconds() -> float | None:  # over every process that trained this run, to its last step
        return None if seconds_before is None else round(seconds_before + elapsed(), 1)

    model.train()
    saved_at, done, skipped, diverged_at = start, start, skipped_before, None
    try:
        with progress(cfg.steps, initial=start, desc=run_dir.name, enabled=verbose) as bar:
            for step in range(start, cfg.steps):
                inputs, targets = parallel.local_slice(task.batch(data_order), world)
                loss = task.loss(forward, (inputs.to(world.device), targets.to(world.device)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                mean_loss = parallel.mean_over_ranks(loss.detach(), world)
                # one host read a step: the decision must come before the step can spread NaN into the weights
                if not math.isfinite(float(mean_loss)):
                    if cfg.on_nonfinite == "stop":
                        diverged_at = step + 1
                        break
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                else:
                    optimizer.step()
                    monitor.observe(loss=mean_loss)
                scheduler.step()
                done = step + 1
                # the loss is read only every 50 steps: reading it waits for the device
                bar.update(1, **({"loss": f"{float(loss.detach()):.4f}"} if done % 50 == 0 and bar.shown else {}))
                if cfg.eval_every and done % cfg.eval_every == 0:
                    model.eval()
                    evaluation = {"step": done, **task.evaluate(model)}  # every rank: FSDP2's forward is collective
                    model.train()
                    if main:
                        with open(run_dir / EVALS, "a") as f:
                            f.write(strict_json(evaluation) + "\n")
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    counters = {"step": done, "skipped_steps": skipped, "train_seconds": trained_seconds()}
                    _save_checkpoint(cfg, run_dir, world, model, optimizer, scheduler, data_order, monitor, counters)
                    saved_at = done
                    if verbose:  # reading the loss waits for the device: only where a line is printed
                        rate = (done - start) / max(elapsed(), 1e-9)
                        bar.note(f"step {done}/{cfg.steps}  loss {float(loss.detach()):.4f}  {rate:.1f} steps/s")
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted at step {done} of {cfg.steps}; the last checkpoint is at step {saved_at}: "
            "run the same command to resume from it"
        ) from None
    finally:
        monitor.close()
    seconds = trained_seconds()  # steps an interruption lost after the last checkpoint do not count
    final: dict[str, Any] = {"label": cfg.label or cfg.method, "method": cfg.method, "seed": cfg.seed}
    if diverged_at is not None:
        final |= {"status": "diverged", "steps": cfg.steps, "diverged_at_step": diverged_at}
        if verbose:
            print(f"{run_dir}: the loss is not finite at step {diverged_at}; the run stopped", flush=True)
    else:
        model.eval()
        final |= {"status": "finished", "steps": cfg.steps, "skipped_steps": skipped}
        final |= task.evaluate(model)  # every rank runs it: FSDP2's forward is collective
    final["train_seconds"] = seconds
    if main:
        records = read_jsonl(run_dir / "metrics.jsonl")
        final["tail_rise"] = tail_rises(records)
        final["norm_ratio"] = final_norm_ratios(records)
        finish_run(run_dir, final)
    return final


def final_norm_ratios(records: list[dict[str, Any]]) -> dict[str, float]:
    """‖θ‖/‖θ₀‖ of the whole model and of each group at the last record, stored in final.json so
    that thinning the committed curves (which may drop the last record) never changes it."""
    last = records[-1] if records else {}
    return {k: last[k] for k in _global_and_group_keys(last, "norm_ratio")}


def tail_rises(records: list[dict[str, Any]]) -> dict[str, float]:
    """The end-of-run rise (:func:`normctl.monitor.tail_rise`) of the global gradient norm and of
    each group's, from every record the run wrote: stored in final.json when the run ends, so that
    thinning the committed curves later never changes the number."""
    if not records:
        return {}
    return {k: tail_rise([r.get(k) for r in records]) for k in _global_and_group_keys(records[-1], "grad_norm")}


def _global_and_group_keys(record: dict[str, Any], metric: str) -> list[str]:
    """The record's keys of ``metric`` for the whole model and for each param group."""
    return [k for k in record if k == f"global/{metric}" or (k.startswith("group/") and k.endswith(f"/{metric}"))]


def _build_optimizer(cfg: RunConfig, net: nn.Module) -> torch.optim.Optimizer:
    if cfg.plain:
        return build_plain(cfg.method, net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, target=cfg.auto)
    groups = param_groups(
        net, weight_decay=cfg.weight_decay, control_output=cfg.control_output, muon=uses_muon(cfg.method)
    )
    if cfg.decay_all:  # every tensor decayed (and controlled, gains too unless left to decay)
        groups = [
            {
                **g,
                "weight_decay": cfg.weight_decay,
                "control": g["name"] != "output" and not (cfg.gains_by_decay and g["name"] == "no_decay"),
            }
            for g in groups
        ]
    elif cfg.control_gains:
        own = cfg.gains_target_ratio
        groups = with_gains_controlled(
            net, groups, target=None if own is None else target_schedule(cfg.target_shape, own, cfg.steps)
        )
    return build_method(
        cfg.method,
        net,
        groups,
        lr=cfg.lr,
        steps=cfg.steps,
        rate=cfg.rate,
        adamw_norm_ratio=cfg.target_ratio,
        betas=cfg.adam_betas,
        decay=cfg.decay,
        target_shape=cfg.target_shape,
        scope=cfg.scope,
        auto=cfg.auto,
        cpr_kappa_init=cfg.cpr_kappa_init,
        cpr_kappa_param=cfg.cpr_kappa_param,
    )


def _restore(cfg, run_dir, world, model, optimizer, scheduler, data_order) -> dict[str, Any] | None:
    """The run's last checkpoint loaded into the model, optimizer, scheduler and data order; its
    state (step, counters, the monitor's state), or None where the run has no checkpoint."""
    checkpoint = _find_checkpoint(run_dir, world)
    if checkpoint is None:
        return None
    sharded = checkpoint.is_dir()  # a DCP directory: loaded at this world's size, resharded
    if sharded:
        state = parallel.load_sharded(checkpoint, model, optimizer)
    else:
        state = checkpoints.load(checkpoint)
    if not _same_config(state["config"], cfg):
        raise ValueError(f"{run_dir} holds a checkpoint of a different config; use another directory")
    if not sharded:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    data_order.set_state(state["data_order"])
    return state


def _save_checkpoint(cfg, run_dir, world, model, optimizer, scheduler, data_order, monitor, counters) -> None:
    """``counters``: the step reached, the steps skipped and the seconds trained so far."""
    state = {
        "config": json.loads(cfg.to_json()),
        **counters,
        "scheduler": scheduler.state_dict(),
        "data_order": data_order.get_state(),
        "monitor": monitor.state_dict(),
    }
    if world.distributed:
        parallel.save_sharded(run_dir / SHARDED_CHECKPOINT, model, optimizer, state)
    else:
        checkpoints.save(
            {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / CHECKPOINT
        )


RUN_FILES = ("metrics.jsonl", EVALS, "final.json", CHECKPOINT, CHECKPOINT + ".prev")


def _refuse_orphaned_metrics(run_dir: Path) -> None:
    """A directory with an earlier run's records but no checkpoint to continue them: starting
    over would delete them, so only ``restart`` may."""
    left = [name for name in RUN_FILES if (run_dir / name).is_file()]
    left += [name for name in SHARDED_CHECKPOINTS if (run_dir / name).exists()]
    if left:
        raise ValueError(
            f"{run_dir} holds {', '.join(left)} of an earlier run but no checkpoint to resume from; "
            f"pass --restart to train it again from step 0, which deletes {', '.join(left)}, or train into "
            "another directory"
        )


def _stopped_before_first_checkpoint(run_dir: Path, cfg: RunConfig) -> bool:
    """An unfinished run of ``cfg`` (its saved config says so) without a checkpoint: killed
    within its first ``checkpoint_every`` steps."""
    saved = run_dir / "config.json"
    if not saved.is_file() or (run_dir / "final.json").exists():
        return False
    if not _same_config(json.loads(saved.read_text()), cfg):
        return False
    return not any((run_dir / name).exists() for name in (CHECKPOINT, CHECKPOINT + ".prev", *SHARDED_CHECKPOINTS))


def _clear_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in SHARDED_CHECKPOINTS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _same_config(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """``cfg`` is the checkpoint's config; fields added to RunConfig since the checkpoint was
    written count as equal when they hold their defaults (an upgrade does not orphan a run)."""
    return not config_differences(saved, cfg)


def config_differences(saved: dict[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The fields where a run's saved config and ``cfg`` differ, as (saved, wanted); a field added
    to RunConfig since the run was written counts as saved at its default."""
    current, defaults = json.loads(cfg.to_json()), json.loads(RunConfig().to_json())
    return {
        k: (saved.get(k, defaults.get(k)), current.get(k))
        for k in sorted(saved.keys() | current.keys())  # sorted: the same message on every run
        if saved.get(k, defaults.get(k)) != current.get(k)
    }


def _find_checkpoint(run_dir: Path, world: parallel.World) -> Path | None:
    """The checkpoint to resume from, whichever world size wrote it: the newer of
    ``checkpoint.pt`` (one process) and the DCP directory (several; after a kill between its two
    renames, the previous one), which DCP loads at any world size. Several processes cannot
    continue a one-process checkpoint that is newer: they refuse, naming it."""
    single = run_dir / CHECKPOINT
    candidates = [run_dir / name for name in SHARDED_CHECKPOINTS]
    sharded = next((p for p in candidates if (p / "meta.pt").is_file()), None)
    found = [p for p in (single if single.is_file() else None, sharded) if p is not None]
    if not found:
        return None
    newest = max(found, key=lambda p: (p / "meta.pt" if p.is_dir() else p).stat().st_mtime)
    if world.distributed and not newest.is_dir():
        raise ValueError(
            f"{newest} was written by one process after the last sharded checkpoint: continue the run with "
            "one process, or move that file away to resume from the older sharded checkpoint"
        )
    return newest
