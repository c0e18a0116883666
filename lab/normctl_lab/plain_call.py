"""``normctl-lab plain-call``: the first call a user writes — each optimizer over
``model.parameters()`` with its own defaults — against the call it replaces, untuned.

    normctl-lab plain-call --out results/plain_call [--seeds 0,1,2] [--tasks torchlm,gpt,fmnist,voronoi]

Per task, at AdamW's lr and λ (SGD's for the SGD family): ``torch.optim.AdamW(model.parameters())``
and, as a user would swap it in, ``AdamWN(model.parameters())`` (the default target),
``AdamWN(..., target="auto")`` without the run's length (AdamW's asymptotic norm, the rule until
now; and holding the norm AdamW had after the window, what a plain loop gets now) and with it, as
the Hugging Face / Lightning callbacks give it (``AutoTarget(total_steps=…)``, without and with
the update's measured alignment, ``AutoTarget(alignment=True)``), ``AdamC(model.parameters())`` and
``MuonAdamW(model.parameters())`` (Muon's lr matched to AdamW's update RMS, so AdamW's lr and λ);
with ``param_groups(model)``, AdamWN holding the output layer or leaving it to AdamW's decay;
on the classifier, ``SGD`` against ``SGDC``. Every model keeps
PyTorch's default initialisation. Each row: the held-out loss (and accuracy on the classifier),
mean ± std over the seeds, and the paired per-seed difference against the reference call with a
95 % t interval. No knob is tuned here: the question is what the first call does, not the best one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig, with_overrides
from .paired import mean_std, paired_difference
from .rundir import resumable_summary, strict_json
from .sweep import final_metrics, train_runs

# Each task as a plain script would train it: the lab's small sizes, PyTorch's initialisation.
TASKS: dict[str, list[str]] = {
    # nn.TransformerEncoderLayer blocks, PyTorch's defaults: the model the first-call issue was found on
    "torchlm": ["task=torchlm", "n_layer=2", "n_embd=128", "block_size=64", "batch_size=32", "steps=800",
                "warmup=50", "lr=3e-3", "weight_decay=0.1", "min_lr_ratio=0.0"],
    # the GPT of the tuned comparisons with PyTorch's initialisation (N(0, 1) tied embedding)
    "gpt": ["task=gpt", "gpt_init=torch", "n_layer=2", "n_embd=96", "block_size=64", "batch_size=16",
            "steps=1500", "warmup=50", "lr=3e-3", "weight_decay=0.1", "min_lr_ratio=0.0"],
    # the ResNet on the embedded Fashion-MNIST sample: BatchNorm, a classifier head
    "fmnist": ["task=fmnist", "width=8", "blocks_per_stage=1", "batch_size=128", "steps=1000", "warmup=50",
               "lr=1e-3", "weight_decay=0.1", "min_lr_ratio=0.0"],
    # Yu's (2022) unnormalised MLP on the Voronoi task at his constant lr and λ, shorter and smaller
    # batches than the tuned comparison (2 000 steps of 256 points, not 10 000 of 1 024)
    "voronoi": ["task=voronoi", "batch_size=256", "steps=2000", "warmup=20", "schedule=constant", "lr=3e-3",
                "weight_decay=1e-2"],
}  # fmt: skip
ADAM_CALLS: dict[str, list[str]] = {
    "adamw": ["method=adamw"],
    "adamwn": ["method=adamwn"],
    # target="auto" without the run's length: AdamW's asymptotic norm (the rule until now) ...
    "adamwn-auto": ["method=adamwn", "auto_target=equilibrium"],
    # ... and the norm AdamW had at the window's end (what a plain loop's target="auto" does now)
    "adamwn-auto-hold": ["method=adamwn", "auto_target=equilibrium", "auto_without_length=hold"],
    # with the run's length, as the Hugging Face and Lightning callbacks give it
    "adamwn-auto-length": ["method=adamwn", "auto_target=equilibrium", "auto_run_length=true"],
    # ... and with the update's alignment measured too (AutoTarget(alignment=True))
    "adamwn-auto-aligned": ["method=adamwn", "auto_target=equilibrium", "auto_run_length=true", "auto_alignment=true"],
    # ... and with one ratio for every tensor of a group (AutoTarget(alignment=True, shared_ratio=True))
    "adamwn-auto-shared": [
        "method=adamwn",
        "auto_target=equilibrium",
        "auto_run_length=true",
        "auto_alignment=true",
        "auto_shared_ratio=true",
    ],
    "adamc": ["method=adamc"],
    "muon": ["method=muon"],  # MuonAdamW(model.parameters()): Muon on every 2-d tensor, AdamW on the rest
}
HEAD_CALLS: dict[str, list[str]] = {  # normctl.param_groups(model): the output layer held, or decayed as AdamW does
    "adamwn-groups": ["method=adamwn", "plain=false"],
    "adamwn-groups-decay-head": ["method=adamwn", "plain=false", "control_output=false"],
    # ... and with the automatic target of the run's length on the rest
    "adamwn-groups-auto-decay-head": ["method=adamwn", "plain=false", "control_output=false",
                                      "auto_target=equilibrium", "auto_run_length=true"],
}  # fmt: skip
SGD_CALLS: dict[str, list[str]] = {  # SGD's usual λ, coupled: 5e-4 at 100× the Adam lr
    "sgd": ["method=sgd", "weight_decay=5e-4"],
    "sgdc": ["method=sgdc", "weight_decay=5e-4"],
}
REFERENCE = {**{call: "adamw" for call in ADAM_CALLS | HEAD_CALLS}, **{call: "sgd" for call in SGD_CALLS}}
CLASSIFIERS = ("fmnist", "voronoi")
OWN_HEAD = ("torchlm", "fmnist", "voronoi")  # an output layer of its own (the GPT's is its tied embedding)
SGD_TASKS = ("fmnist",)  # SGD's family where a normalised layer gives SGDC something to correct


def calls(task: str) -> dict[str, list[str]]:
    return ADAM_CALLS | (HEAD_CALLS if task in OWN_HEAD else {}) | (SGD_CALLS if task in SGD_TASKS else {})


def run_plain_call(
    out: str | Path, seeds: list[int], *, tasks: list[str] | None = None, workers: int = 2, verbose: bool = True
) -> dict[str, Any]:
    tasks = list(TASKS) if tasks is None else tasks
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be some of {list(TASKS)}, got {tasks}")
    if len(seeds) < 3:
        raise ValueError(f"seeds must be at least 3 (mean ± std and a paired interval), got {seeds}")
    out = Path(out)
    summary_path = out / "summary.json"
    summary = resumable_summary(summary_path, seeds, {"tasks": {}})
    for task in tasks:
        base = with_overrides(RunConfig(), [*TASKS[task], "plain=true", "monitor_every=20", "checkpoint_every=500"])
        runs = {
            call: [
                (f"{call}_s{seed}", with_overrides(base, [*settings, f"seed={seed}", f"label={call}"]))
                for seed in seeds
            ]
            for call, settings in calls(task).items()
        }
        train_runs([run for rs in runs.values() for run in rs], out / task, workers=workers, verbose=verbose)
        summary["tasks"][task] = {"overrides": TASKS[task], "calls": compare(out / task, runs, task)}
        summary["tasks"] = {t: summary["tasks"][t] for t in TASKS if t in summary["tasks"]}
        out.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(strict_json(summary, indent=2))  # each task as soon as it is done
        if verbose:
            print(table(summary, task), flush=True)
    return summary


def compare(directory: Path, runs: dict[str, list[tuple[str, RunConfig]]], task: str) -> dict[str, Any]:
    """Per call: each metric by seed, mean ± std, the global norm ratio, and the paired difference
    against its reference call."""
    metrics = ["test_loss", "test_acc"] if task in CLASSIFIERS else ["test_loss"]
    by_call: dict[str, Any] = {}
    for call, call_runs in runs.items():
        finals = {cfg.seed: final_metrics(directory, name) for name, cfg in call_runs}
        row: dict[str, Any] = {"settings": calls(task)[call]}
        for metric in metrics:
            scores = {s: float(f[metric]) if f["status"] == "finished" else float("nan") for s, f in finals.items()}
            row[f"{metric}_by_seed"] = scores
            row[metric] = mean_std(list(scores.values()))
        ratios = [f.get("norm_ratio", {}).get("global/norm_ratio") for f in finals.values()]
        row["norm_ratio"] = mean_std([r for r in ratios if r is not None]) if all(ratios) else None
        by_call[call] = row
    for call, row in by_call.items():
        reference = REFERENCE[call]
        if call != reference:
            row[f"minus_{reference}"] = {
                m: paired_difference(row[f"{m}_by_seed"], by_call[reference][f"{m}_by_seed"]) for m in metrics
            }
    return by_call


def tables(summary: dict[str, Any]) -> str:
    """Every task's table under its name: what ``results/plain_call``'s README and REPRODUCTION.md
    generate (``make check-results``)."""
    return "\n\n".join(f"**{task}**\n\n{table(summary, task)}" for task in summary["tasks"])


def table(summary: dict[str, Any], task: str) -> str:
    """The task's rows as Markdown: held-out loss (and accuracy), the paired difference and its
    interval against the reference call."""
    rows = summary["tasks"][task]["calls"]
    metrics = ["test_loss", "test_acc"] if task in CLASSIFIERS else ["test_loss"]
    header = ["call"] + [h for m in metrics for h in (m, f"Δ {m} [95 % CI]")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for call, row in rows.items():
        cells = [call]
        for m in metrics:
            cells.append(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}")
            diff = row.get(f"minus_{REFERENCE[call]}", {}).get(m)
            cells.append(_difference(diff) if diff else f"(reference, n={row[m]['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference(diff: dict[str, Any]) -> str:
    low, high = diff["ci95"] if diff.get("ci95") else (float("nan"), float("nan"))
    return f"{diff['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
