"""``normctl-lab tune``: every method gets the same tuning budget over its own knobs, is selected on
a validation split and reported on a test split that took no part in the selection.

    normctl-lab tune --methods adamw,adamwn,adamcpr --budget 8 --out results/tune_gpt --set steps=600
    normctl-lab tune voronoi.json --methods adamw,adamw+decay=min --knobs lr --out results/ablations

The protocol, per method:

1. **search** — ``budget`` configurations of the method's knobs (:data:`SEARCH_SPACES`), drawn by
   a scrambled Sobol sequence over each knob's range (log-uniform where the knob is a scale), so
   every method gets the same number of tries spread evenly over its own space; each is trained
   on the search seeds (one by default; several average out a seed that was lucky) and scored
   on the selection split (GPT: ``selection_loss`` on a tail of the training stream; ResNet:
   ``selection_acc`` on the last training images; Voronoi: its own ``val_acc`` draw);
2. **final** — the best configuration trained on every seed and scored on the test split (GPT:
   ``val_loss``, the corpus's held-out tail; ResNet and Voronoi: ``test_acc``). Where two methods'
   means lie within two standard deviations of each other with fewer than five seeds, both get
   seeds up to five (the project's rule for close calls);
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

import torch

from .config import RunConfig, with_overrides
from .paired import finite_by_key, mean_std, paired_difference, spread
from .repro_gpt import SCALES as GPT_SCALES
from .rundir import strict_json
from .sweep import final_metrics, train_runs

SELECTION_SPLIT = 0.05  # of the training data, for gpt and fmnist
CLOSE_CALL_SEEDS = 5  # seeds for two methods within 2 std of each other


@dataclass(frozen=True)
class Metrics:
    select: str  # scored in the search
    report: str  # scored in the final runs: the test split
    higher_is_better: bool


TASK_METRICS = {
    "gpt": Metrics("selection_loss", "val_loss", higher_is_better=False),
    "fmnist": Metrics("selection_acc", "test_acc", higher_is_better=True),
    "voronoi": Metrics("val_acc", "test_acc", higher_is_better=True),
}


@dataclass(frozen=True)
class Knob:
    """A numeric RunConfig field searched over [low, high] (× the base config's ``relative_to``)."""

    field: str
    low: float
    high: float
    log: bool = True
    relative_to: str = ""  # "lr" or "steps": the range scales with the base config's value
    integer: bool = False

    def bounds(self, base: RunConfig) -> tuple[float, float]:
        """[low, high] for ``base``: scaled by its ``relative_to`` field where the knob has one."""
        scale = float(getattr(base, self.relative_to)) if self.relative_to else 1.0
        return self.low * scale, self.high * scale

    def value(self, u: float, base: RunConfig) -> float | int:
        low, high = self.bounds(base)
        x = math.exp(math.log(low) + u * math.log(high / low)) if self.log else low + u * (high - low)
        return max(1, round(x)) if self.integer else float(f"{x:.4g}")  # 4 digits: readable, nothing lost

    def at_edge(self, value: float, base: RunConfig) -> bool:
        """In the outer 10 % of the range (in its own scale): the best may lie outside."""
        low, high = self.bounds(base)
        position = math.log(value / low) / math.log(high / low) if self.log else (value - low) / (high - low)
        return not 0.1 <= position <= 0.9


@dataclass(frozen=True)
class Choice:
    """A categorical RunConfig field: one of ``options``."""

    field: str
    options: tuple[str, ...]

    def value(self, u: float, base: RunConfig) -> str:
        return self.options[min(int(u * len(self.options)), len(self.options) - 1)]

    def at_edge(self, value: str, base: RunConfig) -> bool:
        return False


@dataclass(frozen=True)
class SearchSpace:
    """A method as the protocol tunes it: fixed fields, then the knobs searched."""

    fixed: dict[str, str]
    knobs: tuple[Knob | Choice, ...]


# lr is the Adam-scale peak (SGD and SGDC train at 100× it, see methods.BASE_LR_SCALE).
LR = Knob("lr", 0.25, 4.0, relative_to="lr")
ADAM_DECAY = Knob("weight_decay", 1e-3, 1.0)  # decoupled, multiplied by the lr in the step
SGD_DECAY = Knob("weight_decay", 1e-5, 1e-2)  # coupled L2: the ImageNet scale (5e-5 – 1e-4) and 100× it
SEARCH_SPACES = {
    "adamw": SearchSpace({"method": "adamw"}, (LR, ADAM_DECAY)),
    "adamc": SearchSpace({"method": "adamc"}, (LR, ADAM_DECAY)),
    "sgd": SearchSpace({"method": "sgd"}, (LR, SGD_DECAY)),
    "sgdc": SearchSpace({"method": "sgdc"}, (LR, SGD_DECAY)),
    "adamwn": SearchSpace({"method": "adamwn"}, (LR, Knob("target_ratio", 0.25, 8.0), Knob("rate", 1e-3, 1e-1))),
    # the automatic target's knob is the AdamW λ whose steady-state norm it aims for
    "adamwn-auto": SearchSpace({"method": "adamwn", "auto_target": "equilibrium"}, (LR, Knob("auto_decay", 1e-2, 1.0))),
    "adamcpr": SearchSpace(
        {"method": "adamcpr"},
        (
            LR,
            Choice("cpr_kappa_init", ("inflection_point", "warm_start")),
            # the warm-start rule's steps before the bound is set; unused by the inflection point
            Knob("cpr_kappa_param", 0.02, 0.3, relative_to="steps", integer=True),
        ),
    ),
    "hyperball": SearchSpace({"method": "hyperball"}, (LR,)),
}


# ``--scale gpu``: each task at a size for one GPU, the config's other fields kept and --set applied
# after. The GPT is `repro-gpt --scale gpu`'s GPT-2 small (lr range ¼–4 × 6e-4); the ResNet is
# ResNet-20 on the full Fashion-MNIST; the Voronoi task is already the study's size.
GPU_SCALE = {
    "gpt": GPT_SCALES["gpu"],
    "fmnist": ["width=16", "blocks_per_stage=3", "full_data=true", "device=cuda"],
    "voronoi": ["device=cuda"],
}


def candidates(space: SearchSpace, base: RunConfig, budget: int, seed: int = 0) -> list[dict[str, Any]]:
    """``budget`` points of ``space``: the knobs' values at scrambled Sobol points (the same for
    every call with this ``seed``), each with the space's fixed fields."""
    if not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    points = torch.quasirandom.SobolEngine(len(space.knobs), scramble=True, seed=seed).draw(budget, dtype=torch.float64)
    return [
        space.fixed | {knob.field: knob.value(float(u), base) for knob, u in zip(space.knobs, point)}
        for point in points
    ]


def run_tune(
    base: RunConfig,
    methods: list[str],
    out: str | Path,
    *,
    budget: int = 8,
    seeds: list[int] | None = None,
    search_seeds: list[int] | None = None,
    reference: str | None = None,
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
    seeds = [0, 1, 2] if seeds is None else seeds
    search_seeds = [0] if search_seeds is None else search_seeds
    if not search_seeds or len(set(search_seeds)) != len(search_seeds):
        raise ValueError(f"search_seeds must be one or more distinct seeds, got {search_seeds}")
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be one or more distinct methods, got {methods}")
    spaces = {m: restricted(search_space(m), knobs) for m in methods}
    ranges = _checked_ranges(ranges, spaces)  # of the knobs searched
    spaces = {m: restricted(space, None, ranges) for m, space in spaces.items()}
    reference = reference or methods[0]
    if reference not in methods:
        raise ValueError(f"reference must be one of the methods {methods}, got {reference!r}")
    if len(seeds) < 3:
        raise ValueError(f"seeds must be at least 3 (mean ± std and a paired interval), got {seeds}")
    metrics = TASK_METRICS[base.task]
    if base.task != "voronoi" and not base.selection_split:
        base = dataclasses.replace(base, selection_split=SELECTION_SPLIT)
    out = Path(out)
    _check_same_protocol(out, base, methods, budget, search_seeds, knobs, ranges)
    search = {m: _search_runs(base, m, spaces[m], budget, search_seeds) for m in methods}
    if dry_run:
        plan = _plan(search, spaces, seeds, out / "search")
        print(_plan_text(plan, search_seeds, seeds), flush=True)
        return plan
    out.mkdir(parents=True, exist_ok=True)  # the protocol first: a run cut short keeps its directory's protocol
    protocol = _protocol_key(base, methods, budget, search_seeds, knobs, ranges)
    (out / "protocol.json").write_text(json.dumps(protocol, indent=2))

    if verbose:
        print(f"search: {budget} configurations × {len(methods)} methods, seeds {search_seeds}", flush=True)
    train_runs([run for runs in search.values() for config in runs for run in config], out / "search", **launch)
    selected = {m: _select(out / "search", spaces[m], runs, metrics, base) for m, runs in search.items()}

    final = {m: _final_runs(selected[m]["config"], m, seeds) for m in methods}
    if verbose:
        print(f"final: the selected configurations × seeds {seeds}", flush=True)
    train_runs([run for runs in final.values() for run in runs], out / "final", **launch)
    scores = {m: _scores(out / "final", runs, metrics.report) for m, runs in final.items()}
    trained = {m: list(runs) for m, runs in final.items()}  # every final run, for the tail statistics

    extra = [s for s in range(max(seeds) + 1, max(seeds) + 1 + CLOSE_CALL_SEEDS - len(seeds))]
    close = _close_calls(scores) if extra else set()
    if close:
        if verbose:
            print(f"within 2 std of another: {sorted(close)}; seeds {extra} added", flush=True)
        more = {m: _final_runs(selected[m]["config"], m, extra) for m in sorted(close)}
        train_runs([run for runs in more.values() for run in runs], out / "final", **launch)
        for m, runs in more.items():
            scores[m] |= _scores(out / "final", runs, metrics.report)
            trained[m] += runs

    summary = {
        "protocol": {
            "base": dataclasses.asdict(base),
            "methods": methods,
            "budget": budget,
            "search_seeds": search_seeds,
            "seeds": seeds,
            "selected_on": metrics.select,
            "reported_on": metrics.report,
            "higher_is_better": metrics.higher_is_better,
            "reference": reference,
            **({"knobs": knobs} if knobs else {}),
            **({"ranges": ranges} if ranges else {}),
        },
        "methods": {
            m: {
                **selected[m],
                f"{metrics.report}_by_seed": scores[m],
                metrics.report: mean_std(list(scores[m].values())),
                "tail_rise": _tail_rises(out / "final", trained[m]),
                **({f"minus_{reference}": paired_difference(scores[m], scores[reference])} if m != reference else {}),
            }
            for m in methods
        },
    }
    (out / "summary.json").write_text(strict_json(summary, indent=2))  # a diverged run's NaN: null
    if verbose:
        print(summary_table(summary), flush=True)
        for line in selection_notes(summary):
            print(line, flush=True)
    return summary


def search_space(method: str) -> SearchSpace:
    """The space ``method`` names: one of :data:`SEARCH_SPACES`, or one with fields fixed after
    it — ``adamw+decay=min`` (``+weight_decay=1``, …) is AdamW with Yu's (2022) min decay, its
    remaining knobs searched as AdamW's: how ablations are tuned against their baseline in one
    tuning, with the same budget and paired differences."""
    name, *assignments = method.split("+")
    if name not in SEARCH_SPACES:
        raise ValueError(f"methods must be some of {sorted(SEARCH_SPACES)} (+KEY=VALUE fixes a field), got {method!r}")
    space = SEARCH_SPACES[name]
    fixed = dict(a.partition("=")[::2] for a in assignments)
    malformed = [a for a in assignments if "=" not in a or not a.partition("=")[0]]
    if malformed or len(fixed) != len(assignments):
        raise ValueError(f"method {method!r}: each field fixed after the name is one distinct KEY=VALUE")
    if fixed.keys() & {"method", "seed", "label"}:
        raise ValueError(f"method {method!r}: method, seed and label are the protocol's to set")
    with_overrides(RunConfig(), _assignments(fixed))  # an unknown field or a bad value fails here, named
    knobs = tuple(k for k in space.knobs if k.field not in fixed)  # a fixed field is no longer searched
    if not knobs:
        raise ValueError(f"method {method!r} fixes every knob of {name}: nothing is left to search")
    return SearchSpace(space.fixed | fixed, knobs)


def restricted(
    space: SearchSpace, knobs: list[str] | None, ranges: dict[str, tuple[float, float]] | None = None
) -> SearchSpace:
    """``space`` searching only the fields ``knobs`` (all of them when None), over ``ranges``
    (absolute bounds) where given."""
    kept = space.knobs if knobs is None else tuple(k for k in space.knobs if k.field in knobs)
    if not kept:
        fields = [k.field for k in space.knobs]
        raise ValueError(f"knobs {knobs} leave nothing to search for {space.fixed}: its knobs are {fields}")
    ranges = ranges or {}
    kept = tuple(
        dataclasses.replace(k, low=ranges[k.field][0], high=ranges[k.field][1], relative_to="")
        if isinstance(k, Knob) and k.field in ranges
        else k
        for k in kept
    )
    return SearchSpace(space.fixed, kept)


def _checked_ranges(
    ranges: dict[str, tuple[float, float]] | None, spaces: dict[str, SearchSpace]
) -> dict[str, tuple[float, float]] | None:
    """``ranges`` as floats, each naming a numeric knob of some method's space, 0 < low < high."""
    if not ranges:
        return None
    methods = list(spaces)
    numeric = {k.field for space in spaces.values() for k in space.knobs if isinstance(k, Knob)}
    checked = {}
    for field, bounds in ranges.items():
        if field not in numeric:
            raise ValueError(f"ranges: {field!r} is no numeric knob of {methods}; they have {sorted(numeric)}")
        low, high = (float(b) for b in bounds)
        if not 0 < low < high:
            raise ValueError(f"ranges: {field} needs 0 < low < high, got {low:g}:{high:g}")
        checked[field] = (low, high)
    return checked


def _search_runs(
    base: RunConfig, method: str, space: SearchSpace, budget: int, seeds: list[int]
) -> list[list[tuple[str, RunConfig]]]:
    """Per configuration searched, its runs over the search seeds (``<method>_c<i>``, and
    ``_s<seed>`` after it where there are several)."""
    out = []
    for i, point in enumerate(candidates(space, base, budget)):
        label = f"{method}_c{i}"
        out.append(
            [
                (
                    label if len(seeds) == 1 else f"{label}_s{seed}",
                    with_overrides(base, _assignments(point | {"seed": seed, "label": label})),
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
    close = f", up to {high} where close calls add seeds up to {CLOSE_CALL_SEEDS}" if high > low else ""
    total = "–".join(str(n) for n in sorted({runs["search"] + low, runs["search"] + high}))
    lines.append(f"then each selection on seeds {seeds}: {low} runs{close}; {total} in all")
    return "\n".join(lines)


def _final_runs(config: dict[str, Any], method: str, seeds: list[int]) -> list[tuple[str, RunConfig]]:
    return [(f"{method}_s{s}", RunConfig(**(config | {"seed": s, "label": method}))) for s in seeds]


def _assignments(fields: dict[str, Any]) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items()]


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
) -> dict[str, Any]:
    key = {"base": dataclasses.asdict(base), "budget": budget, "search_seeds": search_seeds, "methods": methods}
    # each absent where not given, as before it existed: older tunings' directories still match
    return key | ({"knobs": knobs} if knobs else {}) | ({"ranges": ranges} if ranges else {})


def _check_same_protocol(
    out: Path,
    base: RunConfig,
    methods: list[str],
    budget: int,
    search_seeds: list[int],
    knobs: list[str] | None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> None:
    """A directory holds one protocol: another base, budget, search seed, set of knobs or range
    would mix two searches."""
    path = out / "protocol.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if "search_seed" in saved:  # written before several search seeds were possible
        saved["search_seeds"] = [saved.pop("search_seed")]
    new = json.loads(json.dumps(_protocol_key(base, methods, budget, search_seeds, knobs, ranges)))
    differs = [k for k in ("base", "budget", "search_seeds", "knobs", "ranges") if saved.get(k) != new.get(k)]
    if differs:
        raise ValueError(f"{out} holds a tuning with another {', '.join(differs)}: use another --out")


def selection_notes(summary: dict[str, Any]) -> list[str]:
    """What weakens a selection, one line each: a method whose every searched configuration
    diverged (its pick says nothing), and a knob selected at the edge of its range, where the
    range, not the method, may have decided (with the option that searches around it)."""
    protocol = summary["protocol"]
    base = RunConfig(**protocol["base"])
    ranges = protocol.get("ranges")
    notes = []
    for method, row in summary["methods"].items():
        if all(searched["status"] != "finished" for searched in row["search"]):
            notes.append(f"{method}: every searched configuration diverged; its selection is arbitrary")
        for knob in restricted(search_space(method), protocol.get("knobs"), ranges).knobs:
            if knob.field not in row["at_edge"] or not isinstance(knob, Knob):
                continue
            low, high = knob.bounds(base)
            value = row["knobs"][knob.field]
            note = f"{method}: {knob.field}={value} is at an edge of its range [{low:.4g}, {high:.4g}]"
            note += ", which may have decided"
            if knob.log:  # every knob the protocol searches: the same width, centred on the value
                half = math.sqrt(high / low)
                around = f"{knob.field}={value / half:.3g}:{value * half:.3g}"
                note += f"; to search around it: --range {around} into another --out"
            notes.append(note)
    return notes


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: the test metric, the paired difference against the
    reference, the gradient norm's tail rise on the normalised layers where the runs stored it,
    the knobs selected (``(edge)``: at the edge of its range)."""
    protocol = summary["protocol"]
    metric, reference = protocol["reported_on"], protocol["reference"]
    tail = "group/normalized/grad_norm"
    with_tail = all(tail in row.get("tail_rise", {}) for row in summary["methods"].values())
    tail_header = " grad-norm tail rise |" if with_tail else ""
    selected_on = protocol["selected_on"]
    lines = [
        f"| method | seeds | {metric} (test) | − {reference} [95 % CI] |{tail_header} selected on {selected_on} |",
        "|---|---|---|---|" + ("---|" if with_tail else "") + "---|",
    ]
    for method, row in summary["methods"].items():
        stats = row[metric]
        diff = row.get(f"minus_{reference}")
        paired = "—" if diff is None else f"{_number(diff['mean'], '+.4f')}{_interval(diff['ci95'])}"
        knobs = ", ".join(f"{k}={v}" + (" (edge)" if k in row["at_edge"] else "") for k, v in row["knobs"].items())
        mean_std = f"{_number(stats['mean'], '.4f')} ± {_number(stats['std'], '.4f')}"
        rise = ""
        if with_tail:
            r = row["tail_rise"][tail]
            rise = f" {r['mean']:.3f} ± {r['std']:.3f} |"
        lines.append(f"| {method} | {stats['n']} | {mean_std} | {paired} |{rise} {knobs} |")
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "diverged" if value is None or not math.isfinite(value) else format(value, spec)


def _interval(interval: list[float | None] | None) -> str:
    if interval is None or any(v is None or not math.isfinite(v) for v in interval):
        return ""
    return f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"
