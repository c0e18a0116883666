"""``normctl-lab demo``: AdamW, AdamWN and AdamC on a small GPT trained on Jane Austen, 3 seeds.

A setting where both papers' mechanisms act in a couple of minutes on two cores, on every seed. The
end-of-run rise needs the norms to follow the lr down: AdamW's steady-state norm falls with γ_t,
but a norm only moves on decay's time scale 1/(2λγ_t), which grows as γ_t falls, so the norms stop
following once it outgrows the steps left. Real runs have 10⁵ steps for that at λ = 0.1; 600 steps
need λ·γ larger by as much: λ = 20 at a peak lr of 3e-3 (1/(2λγ) = 8 steps at the peak) keeps the
normalised layers near their steady state until the last ~20 % of a cosine to 0. At λ = 0.5 the
rise was 1.1-1.5× and within the seeds' noise (AdamC's reached 1.2× on one seed; measured on seeds
0-2 at λ = 0.5, 1 and 2 and on seeds 0-5 at 5, 10 and 20: only 10 and 20 separated AdamW's median
layer rise from AdamC's on every seed, 20 with a margin). A λ this large shrinks the normalised
layers' norms, which the normalisations largely undo, and costs some loss on the embeddings and the
output layer, decayed at the same λ (the demo compares mechanisms, not models). Adam's β2 = 0.95
(nanoGPT's for small models) takes every seed off the byte-unigram plateau (≈ 3.1 nats) early —
with β2 = 0.999 one seed of three stayed on it for all 600 steps and a late escape, not the decay,
set its end-of-run gradient. AdamW runs first on each seed; AdamWN's target is that seed's AdamW
final norm ratio, reached by a ramp over the first 5 % (Loshchilov 2023); AdamC uses AdamW's λ with
the correction on the normalised layers (Defazio 2025). All share data order, initial weights and
the warm-up + cosine lr.

It prints one line per claim with the seeds that agree, each from a per-seed statistic over every
step (kept in summary.json as ``methods.<name>.<stat>_by_seed``):

* the end-of-run rise of ‖g‖/‖θ‖ on the normalised layers (its mean over the last 10 % of steps
  over its mean at 40–60 %), each layer's, and its median over the layers — one layer's late
  escape from a plateau moves one value, not the median (the rise of the layers' combined ratio,
  which one layer can dominate, is kept beside it): AdamW's rises as the lr decays under a fixed
  λ, AdamC's does not;
* AdamWN's controlled norm at the end against its target (AdamW's final norm on that seed), and
  how far each normalised layer's norm moved over the run's second half, |‖θ_T‖/‖θ_{T/2}‖ − 1|,
  the median over the layers: AdamW's follow the lr down, AdamWN's stay at their targets (AdamWN
  pulls at AdamW's own rate k = γλ; the controlled weights' combined norm, which the embeddings
  dominate, is kept as ``norm_drift``: AdamWN's reaches its target only as the lr falls).

The table adds the held-out loss and the final norm ratio, mean ± std over the seeds.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normctl import schedules
from normctl.groups import param_groups
from normctl.monitor import NormMonitor, tail_rise
from normctl.rules import combined_norm, tensor_norms

from .data import byte_tokens, load_text, random_windows, train_val_split
from .methods import adamw_first, build_method, check_methods, is_norm_controlled
from .models import GPT, GPTConfig
from .paired import finite_stats
from .progress import progress
from .rundir import finish_run, start_run, strict_json, write_report


def what_it_shows(cfg: DemoConfig) -> str:
    return (
        "What this can show: how each method moves the weight norm and the end-of-run gradient norm "
        f"in a run where the decay acts; what it cannot: which method trains better models ({cfg.steps} "
        f"steps of a tiny GPT at one setting, λ = {cfg.weight_decay:g} so that decay acts within them, no method "
        "tuned: AdamWN's loss here is the cost of holding every tensor at AdamW's combined norm ratio at this λ, "
        "not a verdict). "
        "The comparisons with more seeds and longer runs are in REPRODUCTION.md and results/."
    )


@dataclass(frozen=True)
class DemoConfig:
    steps: int = 600  # optimizer steps per method and seed
    batch_size: int = 16  # sequences per step
    block_size: int = 64  # tokens per sequence (UTF-8 bytes)
    n_layer: int = 2
    n_embd: int = 96
    lr: float = 3e-3  # peak learning rate
    warmup: int = 20  # linear warm-up steps
    min_lr_ratio: float = 0.0  # the cosine's end, as a fraction of the peak: down to 0
    weight_decay: float = 20.0  # λ of AdamW and AdamC: 1/(2λγ) = 8 steps (the module docstring says why)
    beta2: float = 0.95  # Adam's β2: every seed leaves the unigram plateau early (see the module docstring)
    rate: float = 0.06  # AdamWN's k: AdamW's own pull γλ at the peak; at 1e-2 the norms stayed above target
    eval_batches: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    monitor_every: int = 10  # NormMonitor interval
    out_dir: str | None = "runs/demo"  # run directories and report.html; None writes nothing
    methods: tuple[str, ...] = ("adamw", "adamwn", "adamc")  # any create_optimizer name


@dataclass(frozen=True)
class DemoResult:
    method: str
    seed: int
    val_loss: float
    train_loss: float
    norm_ratio: float  # ‖θ_T‖/‖θ_0‖ over the decayed/controlled weights
    grad_rise: float  # the normalised layers' gradient-norm rise at the end (normctl.monitor.tail_rise)
    seconds: float
    ratio_rise: float = math.nan  # … of their ‖g‖/‖θ‖, every step counted
    norm_drift: float = math.nan  # |‖θ_T‖/‖θ_{T/2}‖ − 1| of the decayed/controlled weights
    # the median over the normalised tensors of each one's ‖g‖/‖θ‖ rise: one layer's late escape
    # from a plateau moves one of the values, not the median
    layer_rise: float = math.nan
    layer_drift: float = math.nan  # |‖θ_T‖/‖θ_{T/2}‖ − 1| of each normalised layer, the median over them


def controlled_norm(groups: list[dict]) -> float:
    params = [p for g in groups if g["control"] for p in g["params"]]
    return float(combined_norm(tensor_norms([p.detach() for p in params])))


def train_one(
    method: str,
    cfg: DemoConfig,
    seed: int,
    train: torch.Tensor,
    val: torch.Tensor,
    adamw_norm_ratio: float | None = None,
    run_dir: Path | None = None,
    verbose: bool = False,
) -> DemoResult:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=4, n_embd=cfg.n_embd))
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    optimizer = build_method(
        method,
        model,
        groups,
        lr=cfg.lr,
        steps=cfg.steps,
        rate=cfg.rate,
        adamw_norm_ratio=adamw_norm_ratio,
        betas=(0.9, cfg.beta2),
    )
    lr_multiplier = schedules.cosine(1.0, cfg.min_lr_ratio, cfg.steps, warmup=cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier)

    sinks = start_run(run_dir, {"method": method, "seed": seed, "demo": asdict(cfg)})
    monitor = NormMonitor(model, optimizer, every=cfg.monitor_every, sinks=sinks)

    initial_norm = controlled_norm(groups)
    normalized = [p for g in groups if g.get("normalized") for p in g["params"]]
    data_order = torch.Generator().manual_seed(seed)
    grad_norms, ratios, layer_ratios = [], [], []
    midway_norm, midway_layers = math.nan, torch.full((len(normalized),), math.nan)
    start = time.perf_counter()
    model.train()
    with progress(cfg.steps, desc=f"{method} seed {seed}", enabled=verbose) as bar:
        for step in range(cfg.steps):
            x, y = random_windows(train, cfg.batch_size, cfg.block_size, data_order)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            layer_grads = tensor_norms([p.grad for p in normalized])
            layer_norms = tensor_norms([p.detach() for p in normalized])
            grad_norms.append(combined_norm(layer_grads))
            ratios.append(grad_norms[-1] / combined_norm(layer_norms))
            layer_ratios.append(torch.stack(layer_grads) / torch.stack(layer_norms))
            if step == cfg.steps // 2:
                midway_norm = controlled_norm(groups)
                midway_layers = torch.stack(layer_norms)
            optimizer.step()
            monitor.observe(loss=loss, **{MEDIAN_LAYER: float(layer_ratios[-1].median())})
            scheduler.step()
            bar.update(1)
    seconds = time.perf_counter() - start
    monitor.close()
    final_norm = controlled_norm(groups)
    final_layers = torch.stack(tensor_norms([p.detach() for p in normalized]))
    result = DemoResult(
        method,
        seed,
        evaluate(model, val, cfg),
        float(loss.detach()),
        final_norm / initial_norm,
        tail_rise(torch.stack(grad_norms).tolist()),
        seconds,
        tail_rise(torch.stack(ratios).tolist()),
        abs(final_norm / midway_norm - 1),
        statistics.median(tail_rise(column) for column in torch.stack(layer_ratios).T.tolist()),
        float((final_layers / midway_layers - 1).abs().median()) if cfg.steps > 1 else math.nan,
    )
    if run_dir is not None:  # every step's ratios, for the demo's figure (the monitor keeps every 10th)
        (run_dir / "ratio_by_step.json").write_text(json.dumps([float(r) for r in ratios]))
        (run_dir / "layer_ratio_by_step.json").write_text(json.dumps(torch.stack(layer_ratios).T.tolist()))
    finish_run(run_dir, asdict(result))
    return result


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, cfg: DemoConfig) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same held-out windows for every method
    losses = [model(*random_windows(tokens, cfg.batch_size, cfg.block_size, g))[1] for _ in range(cfg.eval_batches)]
    return float(torch.stack(losses).mean())


def run_demo(cfg: DemoConfig = DemoConfig(), *, verbose: bool = True) -> list[DemoResult]:
    train, val = train_val_split(byte_tokens(load_text("austen")))
    check_methods(cfg.methods)
    if not cfg.seeds:
        raise ValueError("seeds must name at least one seed")
    methods = adamw_first(cfg.methods)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    results: list[DemoResult] = []
    if verbose:
        print(
            f"{len(methods)} methods x {len(cfg.seeds)} seeds, {cfg.steps} steps each; λ = {cfg.weight_decay}, peak lr "
            f"{cfg.lr}: the decay's time scale 1/(2λγ) = {1 / (2 * cfg.weight_decay * cfg.lr):.0f} steps",
            flush=True,
        )
    for seed in cfg.seeds:
        adamw_ratio = None
        for method in methods:
            if verbose and is_norm_controlled(method):
                target = f"AdamW's {adamw_ratio:.3f} on this seed" if adamw_ratio else "1.0"
                print(f"{method}, seed {seed}: target ratio {target}", flush=True)
            run_dir = out / f"{method}_s{seed}" if out else None
            result = train_one(method, cfg, seed, train, val, adamw_ratio, run_dir, verbose=verbose)
            if method == "adamw":
                adamw_ratio = result.norm_ratio
            results.append(result)
    if out is not None:  # written before anything is printed: the runs are the work
        (out / "summary.json").write_text(strict_json(summarize(cfg, results), indent=2))
        names = [f"{r.method}_s{r.seed}" for r in results]
        report = write_report(
            out, names, "normctl-lab demo", labels=[r.method for r in results], verbose=verbose, lead=LEAD_CHARTS
        )
        if report is not None:  # the figure alone, for a README
            _lead_figure(out, names, [r.method for r in results]).savefig(out / "figure.png", dpi=120)
    if verbose:
        print(format_results(results))
        for line in claims(results):
            print(line)
        print(what_it_shows(cfg))
    return results


# the report's first figure: what the demo is about
MEDIAN_LAYER = "normalized_layers/median_grad_weight_ratio"  # the record of the median layer's ‖g‖/‖θ‖
LEAD_CHARTS = (
    (
        MEDIAN_LAYER,
        "‖g‖/‖θ‖ (median layer)",
        True,
        "‖g‖/‖θ‖ of the normalised layers, the median layer: AdamW's rises as the lr decays to 0, AdamC's does not",
    ),
)


def _lead_figure(out: Path, names: list[str], labels: list[str]):
    """The demo's figure: each method's ‖g‖/‖θ‖ of the normalised layers over the second half of
    the run, every step, each layer's as a multiple of its mean at 40–60 % (the denominator of
    ``layer_rise``), the median over the layers, smoothed over 5 % of the run; mean ± std over the
    seeds."""
    from normctl.monitor.phases import smooth, tail_windows
    from normctl.report import plots

    by_method: dict[str, list[list[float]]] = {}
    start = 0
    for name, label in zip(names, labels):
        layers = json.loads((out / name / "layer_ratio_by_step.json").read_text())
        n, start = len(layers[0]), len(layers[0]) // 2
        middle, _ = tail_windows(n)
        relative = []
        for ratios in layers:
            mean = statistics.mean(ratios[middle.start : middle.stop]) or math.nan  # no gradient: no curve
            relative.append([r / mean for r in ratios])
        median = [statistics.median(step) for step in zip(*relative)]
        by_method.setdefault(label, []).append(smooth(median, max(1, n // 20))[start:])
    figure, ax = plots.new_figure(figsize=(6, 3.6))
    for i, (label, curves) in enumerate(by_method.items()):
        columns = [[v for v in column if math.isfinite(v)] for column in zip(*curves)]  # a diverged seed drops out
        mean = [statistics.mean(c) if c else math.nan for c in columns]
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
        steps = [start + s for s in range(len(columns))]
        plots.band(ax, steps, mean, std, f"{label} ({len(curves)} seeds)", plots.LINESTYLES[i % len(plots.LINESTYLES)])
    ax.axhline(RISE, color="grey", linewidth=0.5, linestyle=":")
    ax.set(xlabel="step", ylabel="‖g‖/‖θ‖ ÷ its mean at 40–60 %\n(median over the layers)")
    ax.set_title("Normalised layers as the lr decays to 0: AdamW's ‖g‖/‖θ‖ rises, AdamC's does not", fontsize=8)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


RISE = 1.25  # a rise of ‖g‖/‖θ‖ from this counts (normctl.check's threshold)
ON_TARGET = 0.05  # a controlled norm this close to its target is on it (normctl doctor's threshold)


def claims(results: list[DemoResult]) -> list[str]:
    """One line per claim, with how many seeds agree and each seed's numbers."""
    by = {(r.method, r.seed): r for r in results}
    seeds = sorted({r.seed for r in results})
    lines = []
    pairs = [(by[("adamw", s)], by[("adamc", s)]) for s in seeds if ("adamw", s) in by and ("adamc", s) in by]
    if pairs:
        rose = [(w, c) for w, c in pairs if w.layer_rise >= RISE]
        flat = [c for _, c in pairs if c.layer_rise < RISE]
        removed = [c for _, c in rose if c.layer_rise < RISE]
        numbers = ", ".join(f"seed {w.seed} {w.layer_rise:.2f}× → {c.layer_rise:.2f}×" for w, c in pairs)
        lines.append(
            f"End-of-run rise of the normalised layers' ‖g‖/‖θ‖ (median over the layers, ≥ {RISE}×): AdamW rose "
            f"on {len(rose)} of {len(pairs)} seeds, AdamC on {len(pairs) - len(flat)}; where AdamW rose, AdamC "
            f"removed it on {len(removed)} of {len(rose)} (AdamW → AdamC, same seed: {numbers})"
        )
    pairs = [(by[("adamw", s)], by[("adamwn", s)]) for s in seeds if ("adamw", s) in by and ("adamwn", s) in by]
    if pairs:
        # AdamWN's target is the seed's AdamW final norm ratio (the demo's recipe)
        off = {w.seed: abs(n.norm_ratio / w.norm_ratio - 1) for w, n in pairs}
        on = [seed for seed, d in off.items() if d < ON_TARGET]
        numbers = ", ".join(
            f"seed {w.seed} {off[w.seed]:.1%} off, its layers moved {n.layer_drift:.1%} (AdamW's {w.layer_drift:.1%})"
            for w, n in pairs
        )
        lines.append(
            f"AdamWN ended within {ON_TARGET:.0%} of its target norm on {len(on)} of {len(pairs)} seeds; its "
            f"normalised layers' norms moved less over the run's second half than AdamW's on "
            f"{sum(n.layer_drift < w.layer_drift for w, n in pairs)} (median over the layers; {numbers})"
        )
    return lines


def summarize(cfg: DemoConfig, results: list[DemoResult]) -> dict:
    """What the demo's table prints, per method over its seeds, and each seed's numbers."""
    methods: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in results):
        rows = [r for r in results if r.method == method]
        methods[method] = {"seeds": [r.seed for r in rows]}
        for key in (
            "val_loss", "train_loss", "norm_ratio", "grad_rise", "ratio_rise", "norm_drift", "layer_rise", "layer_drift"
        ):  # fmt: skip
            methods[method][key] = finite_stats([getattr(r, key) for r in rows])
            methods[method][f"{key}_by_seed"] = {str(r.seed): getattr(r, key) for r in rows}
    return {"config": asdict(cfg), "methods": methods, "claims": claims(results)}


def format_results(results: list[DemoResult]) -> str:
    """Mean ± std over the seeds of each method."""
    header = (
        f"{'method':<8} {'seeds':>5} {'val loss':>17} {'‖θ‖/‖θ0‖':>15} {'‖g‖/‖θ‖ rise':>15} "
        f"{'(combined)':>15} {'s/run':>6}"
    )
    lines = [header]
    for method in dict.fromkeys(r.method for r in results):
        rows = [r for r in results if r.method == method]
        cells = [
            _mean_std([getattr(r, key) for r in rows], digits)
            for key, digits in (("val_loss", 4), ("norm_ratio", 3), ("layer_rise", 2), ("ratio_rise", 2))
        ]
        seconds = statistics.mean(r.seconds for r in rows)
        lines.append(
            f"{method:<8} {len(rows):>5} {cells[0]:>17} {cells[1]:>15} {cells[2]:>15} {cells[3]:>15} {seconds:>6.1f}"
        )
    return "\n".join(lines)


def _mean_std(values: list[float], digits: int) -> str:
    stats = finite_stats(values)
    if not stats["n"]:
        return "diverged"
    text = f"{stats['mean']:.{digits}f}" + (f" ± {stats['std']:.{digits}f}" if stats["n"] > 1 else "")
    return text + (f" ({stats['nonfinite']:.0f} diverged)" if stats["nonfinite"] else "")
