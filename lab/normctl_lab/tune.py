"""``normctl-lab tune``: every method gets the same tuning budget over its own knobs, is selected on
a validation split and reported on a test split that took no part in the selection.

    normctl-lab tune --methods adamw,adamwn,adamcpr --budget 8 --out results/tune_gpt --set steps=600
    normctl-lab tune voronoi.json --methods adamw,adamw+decay=min --knobs lr --out results/ablations

The protocol, per method:

1. **search** — ``budget`` configurations of the method's knobs (:mod:`.search_spaces`), drawn
   by a scrambled Sobol sequence over each knob's range (log-uniform where the knob is a scale),
   so every method gets the same number of tries spread evenly over its own space; each is trained
   on the search seeds (one by default; several average out a seed that was lucky) and scored
   on the selection split (GPT: ``selection_loss`` on a tail of the training stream; ResNet:
   ``selection_acc`` on the last training images; Voronoi: its own ``val_acc`` draw);
2. **final** — the best configuration trained on seeds the search did not use (a search run
   reused as a final would carry the selection's luck into the test score) and scored on the test
   split (GPT: ``test_loss``, 64 batches of the corpus's held-out tail, as many as the selection
   reads; ResNet and Voronoi: ``test_acc``, with the held-out ``test_loss`` beside it). Where two
   methods' final runs lie within two standard deviations of each other *on the selection split*
   with fewer than five seeds, both get seeds up to five (the project's rule for close calls,
   decided without looking at the test split);
3. **summary** — per method: the search (each configuration and its score), the selection, whether
   a selected knob sits at the edge of its range (then the range, not the method, decided), the
   test metric per seed, mean ± std, and paired per-seed differences against the reference
   method with a 95 % t interval.

Runs resume like every sweep: finished runs are skipped, interrupted ones continue.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, with_overrides
from .paired import finite_by_key, mean_std, paired_difference, spread
from .peers import peer_package
from .repro_gpt import SCALES as GPT_SCALES
from .rundir import strict_json
from .search_spaces import POINTS, SearchSpace, as_overrides, candidates, checked_ranges, restricted, search_space
from .sweep import final_metrics, refuse_finished_with_another_config, train_runs
from .tune_report import cost_line, selection_notes, summary_table, verdicts

SELECTION_SPLIT = 0.05  # of the training data, for gpt and fmnist
CLOSE_CALL_SEEDS = 5  # seeds for two methods within 2 std of each other


@dataclass(frozen=True)
class Metrics:
    select: str  # scored in the search
    report: str  # scored in the final runs: the test split
    higher_is_better: bool
    # reported beside ``report`` (lower is better), not selected on: a classifier's held-out loss,
    # which shows a method that keeps the accuracy and loses the calibration
    beside: str | None = None


TASK_METRICS = {
    "gpt": Metrics("selection_loss", "test_loss", higher_is_better=False),
    "torchlm": Metrics("selection_loss", "test_loss", higher_is_better=False),
    "fmnist": Metrics("selection_acc", "test_acc", higher_is_better=True, beside="test_loss"),
    "voronoi": Metrics("val_acc", "test_acc", higher_is_better=True, beside="test_loss"),
}


# ``--scale gpu``: each task at a size for one GPU, the config's other fields kept and --set applied
# after. The GPT is `repro-gpt --scale gpu`'s GPT-2 small (lr range ¼–4 × 6e-4); the ResNet is
# ResNet-20 on the full Fashion-MNIST; the Voronoi task is already the study's size.
GPU_SCALE = {
    "gpt": GPT_SCALES["gpu"],
    "torchlm": [s for s in GPT_SCALES["gpu"] if not s.startswith(("task=", "gpt_init="))],
    "fmnist": ["width=16", "blocks_per_stage=3", "full_data=true", "device=cuda"],
    "voronoi": ["device=cuda"],
}


def run_tune(
    base: RunConfig,
    methods: list[str],
    out: str | Path,
    *,
    budget: int = 8,
    seeds: list[int] | None = None,
    search_seeds: list[int] | None = None,
    reference: str | None = None,
    also_against: list[str] | None = None,
    knobs: list[str] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    workers: int = 1,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    verbose: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The protocol of this module for ``methods`` around ``base``; writes and returns summary.json
    (``dry_run``: prints and returns the plan — every configuration and the number of runs —
    and trains and writes nothing).
    ``knobs`` restricts every method's search to those fields (the others stay at ``base``'s
    values: the lr alone for an ablation fixed in ``base``, say); ``ranges`` replaces a knob's range
    by absolute bounds (``{"lr": (1e-3, 3e-2)}``: where a first tuning selected at an edge).
    ``workers``, ``executor`` and ``executor_options`` say where the runs train
    (:func:`.sweep.train_runs`)."""
    launch: dict[str, Any] = dict(
        workers=workers, executor=executor, executor_options=executor_options, verbose=verbose
    )
    search_seeds = [0] if search_seeds is None else search_seeds
    seeds = [s for s in range(len(search_seeds) + 3) if s not in search_seeds][:3] if seeds is None else seeds
    spaces, ranges = _checked_spaces(methods, search_seeds, knobs, ranges)
    reference = reference or methods[0]
    if reference not in methods:
        raise ValueError(f"reference must be one of the methods {methods}, got {reference!r}")
    also_against = list(also_against or [])
    if not set(also_against) <= set(methods) - {reference}:
        raise ValueError(f"also_against must name methods of {methods} other than the reference, got {also_against}")
    if len(seeds) < 3:
        raise ValueError(f"seeds must be at least 3 (mean ± std and a paired interval), got {seeds}")
    if set(seeds) & set(search_seeds):
        raise ValueError(
            f"seeds {seeds} must be disjoint from search_seeds {search_seeds}: a searched run reused "
            "as a final carries the selection's luck into the test score"
        )
    metrics = TASK_METRICS[base.task]
    if base.task != "voronoi" and not base.selection_split:
        base = dataclasses.replace(base, selection_split=SELECTION_SPLIT)
    out = Path(out)
    points = _points_of(out)
    protocol = _protocol_key(base, methods, budget, search_seeds, knobs, ranges, points)
    _check_same_protocol(out, protocol)
    search = {m: _search_runs(base, m, spaces[m], budget, search_seeds, points) for m in methods}
    searched = [run for configs in search.values() for config in configs for run in config]
    if dry_run:
        # what the real run would refuse, refused now: a plan counting such runs as finished misleads
        refuse_finished_with_another_config(searched, out / "search")
        plan = _plan(search, spaces, seeds, out / "search")
        print(_plan_text(plan, search_seeds, seeds), flush=True)
        return plan
    out.mkdir(parents=True, exist_ok=True)  # the protocol first: a run cut short keeps its directory's protocol
    (out / "protocol.json").write_text(json.dumps(protocol, indent=2))

    if verbose:
        print(f"search: {budget} configurations × {len(methods)} methods, seeds {search_seeds}", flush=True)
    train_runs(searched, out / "search", **launch)
    selected = {m: _select(out / "search", spaces[m], runs, metrics, base) for m, runs in search.items()}
    final = _train_finals({m: s["config"] for m, s in selected.items()}, seeds, out / "final", metrics, launch)

    summary: dict[str, Any] = {
        "protocol": protocol
        | {
            "seeds": seeds,
            "selected_on": metrics.select,
            "reported_on": metrics.report,
            "higher_is_better": metrics.higher_is_better,
            "reference": reference,
        }
        | ({"also_against": also_against} if also_against else {})
        | ({"reported_beside": metrics.beside} if metrics.beside else {}),
        "methods": {},
    }
    beside = _beside(out / "final", final, metrics.beside, [reference, *also_against]) if metrics.beside else {}
    for m, (scores, runs) in final.items():
        row = summary["methods"][m] = selected[m] | {
            f"{metrics.report}_by_seed": scores,
            metrics.report: mean_std(list(scores.values())),
            "tail_rise": _tail_rises(out / "final", runs),
        }
        for against in [reference, *also_against]:  # paired: the same seeds, initial weights and data order
            if m != against:
                row[f"minus_{against}"] = paired_difference(scores, final[against][0])
        row |= beside.get(m, {})
        package = peer_package(row["config"]["method"], [out / "final" / name for name, _ in runs])
        if package:  # a peer: the package and version its runs trained with
            row["package"] = package
    summary["train_hours"] = {
        "search": _train_hours(out / "search", [name for name, _ in searched]),
        "final": _train_hours(out / "final", [name for _, runs in final.values() for name, _ in runs]),
    }
    (out / "summary.json").write_text(strict_json(summary, indent=2))  # a diverged run's NaN: null
    if verbose:
        print(summary_table(summary), flush=True)
        for line in verdicts(summary) + selection_notes(summary):
            print(line, flush=True)
        print(cost_line(summary), flush=True)
    return summary


def _checked_spaces(
    methods: list[str],
    search_seeds: list[int],
    knobs: list[str] | None,
    ranges: dict[str, tuple[float, float]] | None,
) -> tuple[dict[str, SearchSpace], dict[str, tuple[float, float]] | None]:
    """Each method's space as the tuning searches it (only ``knobs``, over ``ranges``), and the
    ranges checked; every argument is checked before anything is written."""
    if not search_seeds or len(set(search_seeds)) != len(search_seeds):
        raise ValueError(f"search_seeds must be one or more distinct seeds, got {search_seeds}")
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be one or more distinct methods, got {methods}")
    spaces = {m: restricted(search_space(m), knobs) for m in methods}
    ranges = checked_ranges(ranges, spaces)  # of the knobs searched
    return {m: restricted(space, None, ranges) for m, space in spaces.items()}, ranges


def _train_finals(
    configs: dict[str, dict[str, Any]], seeds: list[int], directory: Path, metrics: Metrics, launch: dict[str, Any]
) -> dict[str, tuple[dict[int, float], list[tuple[str, RunConfig]]]]:
    """Each method's selected configuration trained on ``seeds``, then — for methods within two
    standard deviations of another on the selection split — on further seeds up to
    :data:`CLOSE_CALL_SEEDS`; per method its test metric by seed and the runs it trained."""
    final = {m: _final_runs(config, m, seeds) for m, config in configs.items()}
    if launch["verbose"]:
        print(f"final: the selected configurations × seeds {seeds}", flush=True)
    train_runs([run for runs in final.values() for run in runs], directory, **launch)
    # the seed count is decided on the selection split: looking at the test split to decide how
    # long to look at it is optional stopping
    selection = {m: _scores(directory, runs, metrics.select) for m, runs in final.items()}
    scores = {m: _scores(directory, runs, metrics.report) for m, runs in final.items()}

    extra = list(range(max(seeds) + 1, max(seeds) + 1 + CLOSE_CALL_SEEDS - len(seeds)))
    close = _close_calls(selection) if extra else set()
    if close:
        if launch["verbose"]:
            print(f"within 2 std of another: {sorted(close)}; seeds {extra} added", flush=True)
        more = {m: _final_runs(configs[m], m, extra) for m in sorted(close)}
        train_runs([run for runs in more.values() for run in runs], directory, **launch)
        for m, runs in more.items():
            scores[m] |= _scores(directory, runs, metrics.report)
            final[m] += runs
    return {m: (scores[m], final[m]) for m in configs}


def _search_runs(
    base: RunConfig, method: str, space: SearchSpace, budget: int, seeds: list[int], points: str = POINTS
) -> list[list[tuple[str, RunConfig]]]:
    """Per configuration searched, its runs over the search seeds (``<method>_c<i>``, and
    ``_s<seed>`` after it where there are several)."""
    out = []
    for i, point in enumerate(candidates(space, base, budget, points=points)):
        label = f"{method}_c{i}"
        out.append(
            [
                (
                    label if len(seeds) == 1 else f"{label}_s{seed}",
                    with_overrides(base, as_overrides(point | {"seed": seed, "label": label})),
                )
                for seed in seeds
            ]
        )
    return out


def _plan(
    search: dict[str, list[list[tuple[str, RunConfig]]]],
    spaces: dict[str, SearchSpace],
    seeds: list[int],
    directory: Path,
) -> dict[str, Any]:
    """What a tuning will train: each searched configuration's knobs, the number of runs (the
    final ones as a range: close calls add seeds) and how many searched runs ``directory``
    already holds finished."""
    configurations = {
        m: [
            {"run": runs[0][1].label} | {k.field: getattr(runs[0][1], k.field) for k in spaces[m].knobs}
            for runs in configs
        ]
        for m, configs in search.items()
    }
    names = [name for configs in search.values() for runs in configs for name, _ in runs]
    finished = sum((directory / name / "final.json").is_file() for name in names)
    final = len(search) * len(seeds)
    most = final + (len(search) * max(CLOSE_CALL_SEEDS - len(seeds), 0) if len(search) > 1 else 0)
    return {
        "search": configurations,
        "runs": {"search": len(names), "search_finished": finished, "final": [final, most]},
    }


def _plan_text(plan: dict[str, Any], search_seeds: list[int], seeds: list[int]) -> str:
    runs = plan["runs"]
    lines = [f"search on seeds {search_seeds}: {runs['search']} runs ({runs['search_finished']} finished)"]
    for rows in plan["search"].values():
        lines += [f"  {row['run']}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "run") for row in rows]
    low, high = runs["final"]
    close = f", up to {high} where close calls add seeds ({CLOSE_CALL_SEEDS} in all)" if high > low else ""
    total = "–".join(str(n) for n in sorted({runs["search"] + low, runs["search"] + high}))
    lines.append(f"then each selection on seeds {seeds}: {low} runs{close}; {total} in all")
    return "\n".join(lines)


def _final_runs(config: dict[str, Any], method: str, seeds: list[int]) -> list[tuple[str, RunConfig]]:
    return [(f"{method}_s{s}", RunConfig(**(config | {"seed": s, "label": method}))) for s in seeds]


def _select(
    directory: Path, space: SearchSpace, configs: list[list[tuple[str, RunConfig]]], metrics: Metrics, base: RunConfig
) -> dict[str, Any]:
    """The search's table and its best configuration, by its mean score over the search seeds.
    A run that diverged scores worst."""
    worst = -math.inf if metrics.higher_is_better else math.inf
    table = []
    for runs in configs:
        by_seed, statuses = {}, []
        for name, cfg in runs:
            final = final_metrics(directory, name)
            statuses.append(final["status"])
            by_seed[cfg.seed] = final.get(metrics.select, worst) if final["status"] == "finished" else worst
        row: dict[str, Any] = {"run": runs[0][1].label}
        row["status"] = "finished" if set(statuses) == {"finished"} else "diverged"
        row[metrics.select] = statistics.mean(by_seed.values())
        if len(runs) > 1:
            row[f"{metrics.select}_by_seed"] = by_seed
        table.append(row)
    pick = max if metrics.higher_is_better else min
    best = pick(range(len(configs)), key=lambda i: table[i][metrics.select])
    cfg = configs[best][0][1]
    knobs = space.knobs
    chosen = {k.field: getattr(cfg, k.field) for k in knobs}
    for row, runs in zip(table, configs):
        row |= {k.field: getattr(runs[0][1], k.field) for k in knobs}
    return {
        "search": table,
        "selected": cfg.label,
        "knobs": chosen,
        "at_edge": [k.field for k in knobs if k.at_edge(chosen[k.field], base)],
        "config": dataclasses.asdict(cfg),
    }


def _scores(directory: Path, runs: list[tuple[str, RunConfig]], metric: str) -> dict[int, float]:
    """The test metric per seed; a diverged run scores NaN, which no mean hides."""
    out = {}
    for name, cfg in runs:
        final = final_metrics(directory, name)
        out[cfg.seed] = final[metric] if final["status"] == "finished" else math.nan
    return out


def _beside(
    directory: Path,
    final: dict[str, tuple[dict[int, float], list[tuple[str, RunConfig]]]],
    metric: str,
    against: list[str],
) -> dict[str, dict[str, Any]]:
    """Per method, ``metric`` of its final runs — per seed, mean ± std, and paired against each of
    ``against`` (``minus_<other>_<metric>``) — for the methods whose every run stored it (runs
    trained before classifiers stored their loss did not: then nothing, rather than a mean of some
    seeds; a diverged run scores NaN, as in the reported metric). Each run's final.json read once."""
    stored = {
        m: _scores(directory, runs, metric)
        for m, (_, runs) in final.items()
        if all(metric in f or f["status"] != "finished" for f in (final_metrics(directory, n) for n, _ in runs))
    }
    rows: dict[str, dict[str, Any]] = {}
    for method, scores in stored.items():
        row = rows[method] = {f"{metric}_by_seed": scores, metric: mean_std(list(scores.values()))}
        for other in against:
            if other != method and other in stored:
                row[f"minus_{other}_{metric}"] = paired_difference(scores, stored[other])
    return rows


def _train_hours(directory: Path, names: list[str]) -> float | None:
    """The runs' training time summed, in hours (each run's ``train_seconds``); None where a run
    kept none (trained before it was recorded)."""
    total = 0.0
    for name in names:
        seconds = final_metrics(directory, name).get("train_seconds")
        if seconds is None:
            return None
        total += seconds
    return round(total / 3600, 2)


TAIL_KEYS = ("global/grad_norm", "group/normalized/grad_norm")


def _tail_rises(directory: Path, runs: list[tuple[str, RunConfig]]) -> dict[str, dict[str, float]]:
    """Mean ± std over the runs of the gradient norm's end-of-training rise (``tail_rise``, each
    computed at full resolution when its run ended), for the keys every run has a number for."""
    finals = [final_metrics(directory, name).get("tail_rise") or {} for name, _ in runs]
    return {key: mean_std(values) for key, values in finite_by_key(finals, TAIL_KEYS).items()}


def _close_calls(scores: dict[str, dict[int, float]]) -> set[str]:
    """Methods whose mean lies within two standard deviations (the larger of the pair's) of another's."""
    stats = {m: (statistics.mean(v.values()), spread(list(v.values()))) for m, v in scores.items()}
    close = set()
    for a, (mean_a, std_a) in stats.items():
        for b, (mean_b, std_b) in stats.items():
            if a < b and abs(mean_a - mean_b) < 2 * max(std_a, std_b):
                close |= {a, b}
    return close


def _protocol_key(
    base: RunConfig,
    methods: list[str],
    budget: int,
    search_seeds: list[int],
    knobs: list[str] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    points: str = POINTS,
) -> dict[str, Any]:
    key = {"base": dataclasses.asdict(base), "budget": budget, "search_seeds": search_seeds, "methods": methods}
    # each absent where not given, as before it existed: older tunings' directories still match
    key |= {"points": points} if points != "per_method" else {}
    return key | ({"knobs": knobs} if knobs else {}) | ({"ranges": ranges} if ranges else {})


def _points_of(out: Path) -> str:
    """How the search in ``out`` draws its points: a directory searched before the points were
    shared between methods keeps its own (its searched runs stay valid); a new one shares them."""
    path = out / "protocol.json"
    return json.loads(path.read_text()).get("points", "per_method") if path.is_file() else POINTS


def _check_same_protocol(out: Path, protocol: dict[str, Any]) -> None:
    """A directory holds one protocol: another base, budget, search seed, set of knobs or range
    would mix two searches."""
    path = out / "protocol.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if "search_seed" in saved:  # written before several search seeds were possible
        saved["search_seeds"] = [saved.pop("search_seed")]
    new = json.loads(json.dumps(protocol))
    # a RunConfig field added since the directory was written, at its default, changes nothing
    defaults = json.loads(json.dumps(dataclasses.asdict(RunConfig())))
    saved["base"] = {k: saved.get("base", {}).get(k, defaults.get(k)) for k in new["base"]}
    differs = [k for k in ("base", "budget", "search_seeds", "knobs", "ranges", "points") if saved.get(k) != new.get(k)]
    if differs:
        raise ValueError(f"{out} holds a tuning with another {', '.join(differs)}: use another --out")
