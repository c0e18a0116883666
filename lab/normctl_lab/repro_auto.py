"""``normctl-lab repro-auto``: AdamWN with ``target="auto"`` against AdamW and against AdamWN with
its target read off a finished AdamW run (the recipe of Loshchilov 2023).

    normctl-lab repro-auto --out results/auto_target [--seeds 0,1,2] [--inits gpt2,torch]

The laptop GPT of ``repro-gpt`` (2 500 steps, lr 3e-3, cosine, AdamW λ = 0.1), once with nanoGPT's
initialisation (N(0, 0.02): AdamW's norms grow) and once with PyTorch's defaults (N(0, 1)
embeddings: AdamW shrinks them). Per initialisation: AdamW over the seeds; AdamWN with its target
AdamW's mean final norm ratio over the tensors it controls; AdamWN with ``target="auto"`` by each
rule (λ_ref = AdamW's λ), the equilibrium rule both without the run's length (AdamW's asymptotic
norm) and with it (``auto_run_length``: AdamW's norm at the run's end, ``AutoTarget(total_steps)``;
``auto_alignment``: the same with the updates' measured alignment carried forward;
``auto_shared_ratio``: that, with one ratio for every tensor of a group);
and the peers: AdamCPR (its inflection-point bound, which needs no prior
run either) and HeavyBall's HyperBallAdamW (every matrix held at its initial norm). Each row: the
held-out loss at the last step, mean ± std, and paired per-seed differences against AdamW and
against the measured-target AdamWN with a 95 % t interval.
Every method runs at the one setting shared with ``repro-gpt``: no method's knobs are tuned here.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from .config import RunConfig, with_overrides
from .paired import mean_std, paired_difference
from .peers import PEERS, peer_package
from .repro_gpt import SCALES
from .rundir import resumable_summary, strict_json, write_report
from .sweep import controlled_norm_ratio, final_metrics, sweep_configs, train_runs

INITS = ("gpt2", "torch")
RULES = ("equilibrium", "inflection")
ADAMW, MEASURED = "method=adamw", "method=adamwn"


def run_repro(
    out: str | Path,
    seeds: list[int],
    *,
    inits: tuple[str, ...] = INITS,
    peer_methods: tuple[str, ...] = tuple(PEERS),
    workers: int = 2,
    base_overrides: list[str] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    unknown = sorted(set(inits) - set(INITS))
    if unknown or not inits:
        raise ValueError(f"inits must be some of {INITS}, got {list(inits)}")
    if set(peer_methods) - set(PEERS):
        raise ValueError(f"peers must be some of {sorted(PEERS)}, got {list(peer_methods)}")
    out = Path(out)
    summary_path = out / "summary.json"
    # each initialisation is summarised as soon as it is done, beside those an earlier call summarised
    summary = resumable_summary(summary_path, seeds, {"inits": {}})
    for init in inits:
        directory = out / init
        base = with_overrides(RunConfig(), [*(base_overrides or SCALES["laptop"]), f"gpt_init={init}"])
        # AdamW, the automatic targets and the peers need no other run: they train together
        adamw = sweep_configs(base, {"method": ["adamw"]}, seeds)
        auto = sweep_configs(dataclasses.replace(base, method="adamwn"), {"auto_target": list(RULES)}, seeds)
        # the equilibrium rule told the run's length (AdamW's norm at the run's end), then also carrying
        # the updates' alignment forward, then also holding one ratio for every tensor of a group: each a
        # row of its own, so the committed runs of the rows before it stay what they are
        told_the_length: list[tuple[dict[str, Any], dict[str, list[str]]]] = [
            ({}, {"auto_run_length": ["true"]}),
            ({"auto_run_length": True}, {"auto_alignment": ["true"]}),
            ({"auto_run_length": True, "auto_alignment": True}, {"auto_shared_ratio": ["true"]}),
        ]
        for fixed, row in told_the_length:
            rule = dataclasses.replace(base, method="adamwn", auto_target="equilibrium", **fixed)
            auto += sweep_configs(rule, row, seeds)
        peers = sweep_configs(base, {"method": list(peer_methods)}, seeds) if peer_methods else []
        train_runs(adamw + auto + peers, directory, workers=workers, verbose=verbose)
        ratio = round(statistics.mean(controlled_norm_ratio(directory / name) for name, _ in adamw), 4)
        if verbose:
            print(f"{init}: AdamWN's measured target is AdamW's final norm ratio {ratio}", flush=True)
        measured = sweep_configs(
            dataclasses.replace(base, method="adamwn", target_ratio=ratio), {"method": ["adamwn"]}, seeds
        )
        train_runs(measured, directory, workers=workers, verbose=verbose)
        runs = adamw + measured + auto + peers
        summary["inits"][init] = {
            "config": dataclasses.asdict(base),
            "adamw_norm_ratio": ratio,
            "methods": compare(directory, [name for name, _ in runs]),
        }
        summary["inits"] = {i: summary["inits"][i] for i in INITS if i in summary["inits"]}  # a fixed order
        summary_path.write_text(strict_json(summary, indent=2))
        write_report(directory, [name for name, _ in runs], f"target='auto' on the GPT ({init} init)", verbose=verbose)
    return summary


def compare(directory: Path, names: list[str]) -> dict[str, Any]:
    """Per label: held-out loss and controlled norm ratio per seed, mean ± std, paired
    differences in held-out loss against AdamW and against the measured-target AdamWN, and a
    peer's package and version."""
    losses: dict[str, dict[int, float]] = {}
    ratios: dict[str, dict[int, float]] = {}
    runs: dict[str, tuple[str, list[Path]]] = {}  # per label: its method and run directories
    for name in names:
        final = final_metrics(directory, name)
        label, seed = final["label"], final["seed"]
        losses.setdefault(label, {})[seed] = final["val_loss"]
        ratios.setdefault(label, {})[seed] = controlled_norm_ratio(directory / name)
        runs.setdefault(label, (final["method"], []))[1].append(directory / name)
    rows: dict[str, Any] = {}
    for label, per_seed in losses.items():
        row = {
            "val_loss_by_seed": per_seed,
            "val_loss": mean_std(list(per_seed.values())),
            "controlled_norm_ratio": mean_std(list(ratios[label].values())),
        }
        for reference in (ADAMW, MEASURED):
            if label != reference and reference in losses:
                row[f"minus_{reference.split('=')[1]}"] = paired_difference(per_seed, losses[reference])
        package = peer_package(*runs[label])
        if package:  # a peer: the package and version its runs trained with
            row["package"] = package
        rows[label] = row
    return rows
