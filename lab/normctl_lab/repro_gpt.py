"""Loshchilov (2023) and Defazio (2025) on the GPT: AdamW, AdamC (Defazio 2025) and AdamWN (Loshchilov 2023).

    normctl-lab repro-gpt --out results/repro_gpt [--seeds 0,1,2] [--scale laptop|steady|gpu]
                      [--ablations] [--ablation-seeds 0,1,2] [--budgets 1.2,1.5]

Phase 1 trains AdamW and AdamC; phase 2 trains AdamWN with its target ramped (over the first
5 % of steps) to AdamW's measured final norm ratio over the tensors AdamWN controls, rate
k = 1e-2, as the paper sets it. All runs share the model, data, cosine schedule and λ, so
AdamW is the baseline of both papers. ``--scale steady`` is the test Defazio (2025) implies: AdamW against
AdamC at λ = 0.5 with the lr decayed to 0, the layers at steady state for most of the run
(``results/repro_gpt_steady``). ``--ablations`` adds the questions Loshchilov (2023) leaves
open, one change to AdamWN at a time: the rate k, the target's shape, the scope (one global
norm instead of one per tensor) and LayerNorm gains controlled too (``ABLATIONS``), to the
matrices' target and to their own (AdamW's final ratio for the gains).
The command is resumable (finished runs are skipped, unfinished ones resume) and writes
``summary.json`` (per-method mean ± std), ``val_loss.png`` (held-out loss over training with
seed bands), ``ablations.png`` with ``--ablations`` (final held-out loss per variant) and
``report.html`` (norms, gradient norms, tail blow-up) into ``--out``. ``--budgets 1.2,1.5`` also
trains AdamW for 1.2× and 1.5× the steps (each with its own schedule) and reports the budget
at which AdamW's final loss reaches AdamWN's (``budgets.png``), and AdamWN at the longest
budget with AdamW's norm ratio there as its target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from normctl.report.plots import have_matplotlib, new_figure
from normctl.report.runs import load_run

from .config import RunConfig, with_overrides
from .paired import finite_by_key, finite_stats, spread
from .rundir import strict_json, write_report
from .sweep import controlled_norm_ratio, gains_norm_ratio, sweep_configs, train_runs
from .train import EVALS

# Byte-level Jane Austen; 1/(2λγ) = 1 667 steps at the peak lr, well inside the run.
SCALES = {
    "laptop": [  # ≈ 7 steps/s on 2 CPU cores: 9 runs in about an hour
        "task=gpt",
        "n_layer=4",
        "n_embd=128",
        "block_size=128",
        "batch_size=32",
        "steps=2500",
        "warmup=100",
        "lr=3e-3",
        "weight_decay=0.1",
        "schedule=cosine",
        "checkpoint_every=250",
        "monitor_every=25",
        "eval_every=250",
    ],
    "gpu": [  # GPT-2 small's shape (124M with a 50k vocabulary; 86M with bytes)
        "task=gpt",
        "n_layer=12",
        "n_embd=768",
        "block_size=1024",
        "batch_size=32",
        "steps=20000",
        "warmup=1000",
        "lr=6e-4",
        "weight_decay=0.1",
        "schedule=cosine",
        "checkpoint_every=1000",
        "monitor_every=100",
        "eval_every=1000",
        "device=cuda",
    ],
}


# The setting Defazio (2025) implies: the laptop GPT with λ = 0.5 and the cosine schedule down to 0, so that
# 1/(2λγ) = 333 steps at the peak lr — the layers reach their steady state early and stay in it
# while the lr falls, the regime in which AdamW's gradient norm rises at the end of training.
# AdamW and AdamC only: AdamWN has no λ.
SCALES["steady"] = [*SCALES["laptop"], "weight_decay=0.5", "min_lr_ratio=0"]
WITHOUT_ADAMWN = ("steady",)

ABLATIONS = {  # each against the main AdamWN run (rate 1e-2, 5 % ramp, tensor scope, gains free)
    "rate": ["1e-3", "1e-1", "1"],
    "target_shape": ["constant", "linear"],
    "scope": ["global"],
    "control_gains": ["true"],  # to the matrices' target; run_repro adds the gains' own target
}


def run_repro(
    out: str | Path,
    seeds: list[int],
    scale: str = "laptop",
    *,
    ablations: bool = False,
    ablation_seeds: list[int] | None = None,
    budgets: list[float] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    budgets = budgets or []
    if any(not (math.isfinite(b) and b > 1) for b in budgets):
        raise ValueError(f"budgets must be factors > 1 of the run's steps, got {budgets}")
    if budgets and scale in WITHOUT_ADAMWN:
        raise ValueError(f"budgets compare AdamW with AdamWN, which --scale {scale} does not train")
    out = Path(out)
    base = with_overrides(RunConfig(), SCALES[scale])
    longer = longer_adamw_runs(base, budgets, seeds) if budgets else []  # refused before any training
    first = sweep_configs(base, {"method": ["adamw", "adamc"]}, seeds)
    train_runs(first, out, verbose=verbose)
    ratios = [controlled_norm_ratio(out / name) for name, cfg in first if cfg.method == "adamw"]
    target = statistics.mean(ratios)
    second = []
    if scale not in WITHOUT_ADAMWN:
        if verbose:
            print(f"AdamWN target: AdamW's final norm ratio {target:.4f} (mean over {len(ratios)} seeds)", flush=True)
        second = sweep_configs(dataclasses.replace(base, target_ratio=round(target, 4)), {"method": ["adamwn"]}, seeds)
        train_runs(second, out, verbose=verbose)

    runs = first + second
    summary = summarize(out, [name for name, _ in runs])
    summary["config"] = dataclasses.asdict(base)
    summary["adamwn_target_ratio"] = round(target, 4)
    if ablations:
        adamwn = with_overrides(base, ["method=adamwn", f"target_ratio={round(target, 4)}"])
        # The gains controlled to a target of their own: AdamW's final ratio for them.
        gains = statistics.mean(gains_norm_ratio(out / name) for name, cfg in first if cfg.method == "adamw")
        variants = [{key: values} for key, values in ABLATIONS.items()]
        variants.append({"control_gains": ["true"], "gains_target_ratio": [f"{gains:.4f}"]})
        ablation_seeds = seeds if ablation_seeds is None else ablation_seeds
        third = [run for grid in variants for run in sweep_configs(adamwn, grid, ablation_seeds)]
        train_runs(third, out, verbose=verbose)
        variants = summarize(out, [name for name, _ in third], by="label")["methods"]
        summary["ablations"] = {"adamwn (main)": summary["methods"]["adamwn"], **variants}
        runs += third
    if longer:
        train_runs(longer, out, verbose=verbose)
        summary["adamw_budgets"] = summarize(out, [name for name, _ in longer], by="steps")["methods"]
        points = [(base.steps, summary["methods"]["adamw"]["val_loss"]["mean"])]
        points += [(int(steps), row["val_loss"]["mean"]) for steps, row in summary["adamw_budgets"].items()]
        matched = steps_to_reach(points, summary["methods"]["adamwn"]["val_loss"]["mean"])
        summary["adamw_steps_to_match_adamwn"] = matched
        summary["adamw_budget_to_match_adamwn"] = None if matched is None else round(matched / base.steps, 3)
        longest = longest_adamwn_runs(out, base, longer, seeds)
        train_runs(longest, out, verbose=verbose)
        summary["adamwn_longest_budget"] = summarize(out, [name for name, _ in longest])["methods"]["adamwn"]
        runs += longer + longest
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    plot_val_loss(out, summary, out / "val_loss.png")
    if ablations:
        plot_ablations(summary, out / "ablations.png")
    if longer:
        plot_budgets(summary, base.steps, out / "budgets.png")
    write_report(out, [name for name, _ in runs], "GPT on Austen: AdamW, AdamC, AdamWN", verbose=verbose)
    return summary


def longer_adamw_runs(base: RunConfig, budgets: list[float], seeds: list[int]) -> list[tuple[str, RunConfig]]:
    """AdamW trained for ``budget`` × the steps, each run with its own warm-up and cosine over
    its length: the paper's measure of AdamWN's gain is the budget AdamW needs to match it
    (Loshchilov 2023, App. A: AdamW at 2× the iterations reached AdamWN's loss). Step counts
    are rounded to whole evaluation periods, so that each run is evaluated at its last step."""
    period = base.eval_every or base.steps
    steps = sorted({max(1, round(budget * base.steps / period)) * period for budget in budgets})
    if steps[0] <= base.steps:
        raise ValueError(
            f"budgets {budgets} round to {steps} steps (whole evaluation periods of {period}); "
            f"each must exceed the run's {base.steps}"
        )
    return sweep_configs(with_overrides(base, ["method=adamw"]), {"steps": [str(n) for n in steps]}, seeds)


def longest_adamwn_runs(
    out: Path, base: RunConfig, longer: list[tuple[str, RunConfig]], seeds: list[int]
) -> list[tuple[str, RunConfig]]:
    """AdamWN at the longest budget, its target AdamW's final norm ratio at that budget (the
    main runs' recipe, scaled up): whether AdamWN's lead holds as the budget grows."""
    steps = max(cfg.steps for _, cfg in longer)
    target = statistics.mean(controlled_norm_ratio(out / name) for name, cfg in longer if cfg.steps == steps)
    adamwn = with_overrides(base, [f"target_ratio={round(target, 4)}"])
    return sweep_configs(adamwn, {"method": ["adamwn"], "steps": [str(steps)]}, seeds)


def steps_to_reach(points: list[tuple[int, float]], goal: float) -> float | None:
    """The step count at which final loss, linear between the measured ``(steps, loss)``
    budgets, first falls to ``goal``; None if no budget reaches it."""
    points = sorted(points)
    if points[0][1] <= goal:
        return float(points[0][0])
    for (s0, l0), (s1, l1) in zip(points, points[1:]):
        if l1 <= goal:
            return s0 + (s1 - s0) * (l0 - goal) / (l0 - l1)
    return None


def summarize(out: Path, names: list[str], by: str = "method") -> dict[str, Any]:
    """Per method (or other config field ``by``): final held-out loss, norm ratio, tail blow-up
    and each gradient norm's tail rise (stored with the run at full resolution when it ended;
    mean ± std over seeds), the held-out curve, and the first step at which AdamW reaches
    AdamWN's final loss."""
    per_method: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        run = load_run(out / name)
        evals = [json.loads(line) for line in (out / name / EVALS).read_text().splitlines()]
        s = run.summary()
        method = json.loads((out / name / "config.json").read_text())[by]
        per_method.setdefault(method, []).append(
            {
                "seed": run.seed,
                "val_loss": evals[-1]["val_loss"],
                "curve": [(e["step"], e["val_loss"]) for e in evals],
                "norm_ratio": s["final norm ratio"],
                "controlled_norm_ratio": controlled_norm_ratio(out / name),
                "tail_blowup": s["tail blow-up"],
                "tail_rise": json.loads((out / name / "final.json").read_text()).get("tail_rise") or {},
            }
        )
    methods: dict[str, Any] = {}
    for method, seeds in per_method.items():
        steps = [step for step, _ in seeds[0]["curve"]]
        curves = [[loss for _, loss in s["curve"]] for s in seeds]
        methods[method] = {
            "seeds": [s["seed"] for s in seeds],
            **{
                k: _mean_std([s[k] for s in seeds])
                for k in ("val_loss", "norm_ratio", "controlled_norm_ratio", "tail_blowup")
            },
            "tail_rise": {
                k: _mean_std(values)
                for k, values in finite_by_key([s["tail_rise"] for s in seeds], seeds[0]["tail_rise"]).items()
            },
            "curve_steps": steps,
            "curve_mean": [statistics.mean(c) for c in zip(*curves)],
            "curve_std": [spread(list(c)) for c in zip(*curves)],
        }
    for method, other in (("adamw", "adamwn"), ("adamwn", "adamw")):  # steps to match the other's final loss
        if method in methods and other in methods:
            goal = methods[other]["val_loss"]["mean"]
            m = methods[method]
            reached = [s for s, v in zip(m["curve_steps"], m["curve_mean"]) if v <= goal]
            m[f"first_step_at_{other}_final_val_loss"] = reached[0] if reached else None
    return {"methods": methods}


def _mean_std(values: Sequence[float | None]) -> dict[str, float]:
    """Mean ± std over the seeds whose value is a finite number."""
    stats = finite_stats(values)
    return {"mean": stats["mean"], "std": stats["std"]}


def plot_val_loss(out: Path, summary: dict[str, Any], path: Path) -> Path | None:
    if not have_matplotlib():
        return None
    fig, ax = new_figure(figsize=(6, 4))
    for method, m in summary["methods"].items():
        mean, std = m["curve_mean"], m["curve_std"]
        ax.plot(m["curve_steps"], mean, label=method)
        ax.fill_between(
            m["curve_steps"], [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], alpha=0.2
        )
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats/byte)")
    ax.set_title(f"{out.name}: mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_ablations(summary: dict[str, Any], path: Path) -> Path | None:
    """Final held-out loss of every AdamWN variant (mean ± std over its seeds), AdamW's for scale."""
    if not have_matplotlib():
        return None
    variants = summary["ablations"]
    names = list(variants)
    means = [variants[n]["val_loss"]["mean"] for n in names]
    stds = [variants[n]["val_loss"]["std"] for n in names]
    fig, ax = new_figure(figsize=(7, 4))
    ax.barh(names, means, xerr=stds, color="tab:green", alpha=0.7)
    adamw = summary["methods"]["adamw"]["val_loss"]
    ax.axvline(adamw["mean"], color="tab:blue", linestyle="--", label=f"AdamW {adamw['mean']:.4f}")
    ax.set_xlim(min(means + [adamw["mean"]]) - 0.05, max(means + [adamw["mean"]]) + 0.05)
    ax.set_xlabel("held-out loss at the last step (nats/byte)")
    ax.set_title("AdamWN, one change at a time")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_budgets(summary: dict[str, Any], steps: int, path: Path) -> Path | None:
    """AdamW's final held-out loss against its budget in steps (mean ± std over seeds), with
    AdamWN's at the base budget and at the longest."""
    if not have_matplotlib():
        return None
    rows = {steps: summary["methods"]["adamw"], **{int(n): r for n, r in summary["adamw_budgets"].items()}}
    budgets = sorted(rows)
    fig, ax = new_figure(figsize=(6, 4))
    ax.errorbar(
        budgets,
        [rows[n]["val_loss"]["mean"] for n in budgets],
        yerr=[rows[n]["val_loss"]["std"] for n in budgets],
        marker="o",
        capsize=3,
        label="AdamW, run of that length",
    )
    adamwn = summary["methods"]["adamwn"]["val_loss"]
    ax.axhline(adamwn["mean"], color="tab:green", linestyle="--", label=f"AdamWN at {steps} steps")
    longest = summary["adamwn_longest_budget"]
    adamwn_points = [(steps, adamwn), (longest["curve_steps"][-1], longest["val_loss"])]
    ax.errorbar(
        [n for n, _ in adamwn_points],
        [v["mean"] for _, v in adamwn_points],
        yerr=[v["std"] for _, v in adamwn_points],
        marker="s",
        capsize=3,
        color="tab:green",
        label="AdamWN, run of that length",
    )
    ax.set_xlabel("steps in the run (each with its own cosine schedule)")
    ax.set_ylabel("held-out loss at the last step (nats/byte)")
    ax.set_title("The budget AdamW needs to match AdamWN")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
