"""The decay-type study of Yu (2022) on the Voronoi model, with AdamWN and AdamC added.

    normctl-lab repro-voronoi --out results/repro_voronoi [--seeds 0,1,2] [--scale laptop|paper]
                          [--workers 2] [--device cpu]

Stage 1 trains the baseline (AdamW, λ = 1e-2 on every parameter, batch 1024, 10 000 steps,
constant lr) at each lr of {2e-3, 3e-3, 5e-3} and picks the lr with the best mean *validation*
accuracy (the original picked it on test). The scale-only norms are pure gains (RMS
normalisation off): with it on, the 2-D inputs lose their radius and accuracy caps near 0.57
(``results/repro_voronoi_gpu_rms``). Stage 2 trains every ablation of the study at that lr,
one change at a time — activation, init, RMS normalisation, weight decay, betas, decay type,
width — and new rows: AdamWN on every tensor, as the decay is (target AdamW's final norm
ratio over all of them, k = 1e-2), with one norm per tensor or one global norm; and AdamWN on
the matrices alone, the norm gains left to AdamW's decay (target AdamW's ratio over the
matrices). AdamC needs a decaying learning rate — at the study's constant one γ_t/γ_max = 1
and AdamC is AdamW bit for bit — so it gets rows under a cosine schedule (warm-up, then down to
0.1 of the peak), each beside AdamW's, at λ = 1e-2 and 1e-1: AdamC scales the decay of the
matrices that feed a norm by γ_t/γ_max.
``--scale laptop`` (default) trains the lr search and the study's two headline comparisons —
the decay types and λ = 0.1 against the baseline's 1e-2 — 18 runs at the original 10 000 steps
× 1024, about 1 h on 2 CPU cores (two runs at a time, ≈ 6.7 min a pair). ``--scale paper``
adds the rest of the grid of Yu (2022), the other weight decays, AdamWN and the cosine pairs with
AdamC (81 runs; the widths 1024 and 2048 cost 4× and 16× a baseline run: about 7 h on 2 cores,
2.5 h of it the three width-2048 runs at ≈ 0.3 s a step; minutes on a GPU with
``--device cuda``).
``--workers`` runs that many single-threaded runs at once. Resumable: finished runs are
skipped, unfinished ones resume. Writes ``summary.json`` (mean ± std over seeds per variant)
and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from normctl.report.runs import load_run

from .config import RunConfig, with_overrides
from .paired import spread
from .rundir import strict_json, write_report
from .sweep import CONTROLLED_GROUPS, controlled_norm_ratio, final_metrics, train_runs

BASELINE = [
    "task=voronoi",
    "method=adamw",
    "steps=10000",
    "batch_size=1024",
    "schedule=constant",
    "weight_decay=1e-2",
    "decay_all=true",
    "hidden=512",
    "checkpoint_every=2500",
    "monitor_every=500",
]
LEARNING_RATES = ("2e-3", "3e-3", "5e-3")
ABLATIONS = {  # the study's headline comparisons first: a resumed run finishes them first
    "decay": ["l1", "min"],
    "weight_decay": ["1e-1", "0", "1e-3", "1"],
    "method": ["adamwn", "adamwn-global", "adamwn-matrices"],  # new rows, see NEW_ROWS
    # AdamW and AdamC (a new row) under cosine, at the study's λ and at 1e-1, see NEW_ROWS
    "schedule": ["cosine", "cosine-adamc", "cosine-wd1e-1", "cosine-adamc-wd1e-1"],
    "rms": ["true"],
    "activation": ["swish", "gelu"],
    "init": ["normal"],
    "betas": ["0.85,0.99", "0.95,0.99", "0.9,0.98", "0.9,0.995"],
    "hidden": ["256", "1024", "2048"],
}
# what each --scale trains after the lr search: the laptop's 18 runs fit about an hour on 2 cores
SCALES = {"laptop": {"decay": ["l1", "min"], "weight_decay": ["1e-1"]}, "paper": ABLATIONS}
# AdamWN's target is AdamW's final norm ratio over the tensors it controls: every tensor (the
# study decays them all), pulled to it one tensor at a time or as one global norm the tensors
# share freely; or the matrices alone, the norm gains left to AdamW's decay as in the baseline.
# AdamC differs from AdamW only where the learning rate falls, so it is compared under cosine;
# at λ = 1e-2 the decay barely acts in 10 000 steps (its time scale 1/(λγ) ≈ 33 000 steps), at
# 1e-1 it acts well inside the run (1/(λγ) ≈ 3 300).
NEW_ROWS = {
    "adamwn": ["method=adamwn"],
    "adamwn-global": ["method=adamwn", "scope=global"],
    "adamwn-matrices": ["method=adamwn", "gains_by_decay=true"],
    "cosine-adamc": ["schedule=cosine", "method=adamc"],
    "cosine-wd1e-1": ["schedule=cosine", "weight_decay=1e-1"],
    "cosine-adamc-wd1e-1": ["schedule=cosine", "method=adamc", "weight_decay=1e-1"],
}


def run_repro(
    out: str | Path,
    seeds: list[int],
    *,
    scale: str = "laptop",
    workers: int = 1,
    device: str = "cpu",
    steps: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    out = Path(out)
    base = with_overrides(RunConfig(), [*BASELINE, f"device={device}"])
    if steps is not None:
        base = dataclasses.replace(base, steps=steps, checkpoint_every=max(1, steps // 4))
    stage1 = [
        (f"lr-{lr}_s{seed}", with_overrides(base, [f"lr={lr}", f"seed={seed}"]))
        for lr in LEARNING_RATES
        for seed in seeds
    ]
    train_runs(stage1, out, workers=workers, verbose=verbose)
    by_lr = {
        lr: statistics.mean(final_metrics(out, f"lr-{lr}_s{s}")["val_acc"] for s in seeds) for lr in LEARNING_RATES
    }
    best = max(by_lr, key=lambda lr: by_lr[lr])
    chosen = with_overrides(base, [f"lr={best}"])
    target = round(statistics.mean(controlled_norm_ratio(out / f"lr-{best}_s{s}") for s in seeds), 4)
    matrices = round(
        statistics.mean(controlled_norm_ratio(out / f"lr-{best}_s{s}", CONTROLLED_GROUPS) for s in seeds), 4
    )
    targets = {"adamwn-matrices": matrices}
    if verbose:
        print(
            f"lr {best} has the best validation accuracy ({by_lr}); AdamW's norm ratio {target} "
            f"({matrices} over the matrices)",
            flush=True,
        )

    stage2 = []
    for key, values in SCALES[scale].items():
        for value in values:
            extra = NEW_ROWS.get(value, [f"{key}={value}"])
            if key == "method":  # AdamWN's rows
                extra = [*extra, f"target_ratio={targets.get(value, target)}"]
            stage2 += [(f"{key}-{value}_s{seed}", with_overrides(chosen, [*extra, f"seed={seed}"])) for seed in seeds]
    train_runs(stage2, out, workers=workers, verbose=verbose)

    variants: dict[str, list[str]] = {f"baseline (lr {best})": [f"lr-{best}_s{s}" for s in seeds]}
    variants.update({f"lr {lr}": [f"lr-{lr}_s{s}" for s in seeds] for lr in LEARNING_RATES if lr != best})
    for name, _ in stage2:
        variants.setdefault(name.rsplit("_s", 1)[0].replace("-", " = ", 1), []).append(name)
    summary = {
        "scale": scale,
        "config": dataclasses.asdict(chosen),
        "lr_by_validation": by_lr,
        "chosen_lr": best,
        "adamwn_target_ratio": target,
        "adamwn_matrices_target_ratio": matrices,
        "variants": {v: _aggregate(out, names) for v, names in variants.items()},
    }
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    # one group per variant: every run but AdamWN's and AdamC's is AdamW, so the method would pool them
    variant_of = {name: variant for variant, names in variants.items() for name in names}
    names = [n for n, _ in stage1 + stage2]
    title = "Voronoi: decay types and ablations"
    write_report(out, names, title, labels=[variant_of[n] for n in names], verbose=verbose)
    return summary


def _aggregate(out: Path, names: list[str]) -> dict[str, Any]:
    finals = [final_metrics(out, n) for n in names]
    ratios = [load_run(out / n).last("global/norm_ratio") for n in names]
    row: dict[str, Any] = {"runs": names}
    for key, values in (
        ("val_acc", [f["val_acc"] for f in finals]),
        ("test_acc", [f["test_acc"] for f in finals]),
        ("norm_ratio", [r for r in ratios if r is not None]),
    ):
        row[key] = {"mean": statistics.mean(values), "std": spread(values)}
    return row
