"""What ``normctl-lab tune`` prints and the results documents quote: its summary as a Markdown
table, and the notes on what weakens a selection (a knob at the edge of its range, a method whose
every searched configuration diverged)."""

from __future__ import annotations

import math
from typing import Any

from .config import RunConfig
from .paired import paired_difference
from .search_spaces import Knob, restricted, search_space


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


def verdict(
    method: str, reference: str, diff: dict[str, Any], *, higher_is_better: bool, margin: float | None = None
) -> str:
    """One sentence for ``method − reference`` (a paired difference with its 95 % interval) whose
    words follow from the interval alone: "better"/"worse" only where it excludes 0, "level"
    otherwise; with ``margin``, "within ±margin" only where the interval lies inside it and "not
    within" only where it lies wholly outside — else the interval cannot say, and the sentence
    says that. Results documents take their verdict words from here, not from prose."""
    interval = diff.get("ci95")
    mean = diff["mean"]
    if interval is None or not all(v is not None and math.isfinite(v) for v in interval) or not math.isfinite(mean):
        return f"{method} − {reference}: {_number(mean, '+.4f')}, no interval (fewer than 2 finite seeds): not decided"
    low, high = interval
    shown = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
    if low > 0 or high < 0:
        ahead = (low > 0) == higher_is_better
        words = f"{method} is {'better' if ahead else 'worse'} than {reference}"
    else:
        words = f"{method} and {reference} are level (the interval holds 0: no difference shown)"
    if margin is not None:
        if -margin <= low and high <= margin:
            words += f"; within ±{margin:g}"
        elif low > margin or high < -margin:
            words += f"; not within ±{margin:g}"
        else:
            words += f"; whether within ±{margin:g} is not decided (the interval crosses ±{margin:g})"
    return f"{words}: {shown}, {len(diff['seeds'])} seeds"


def verdicts(summary: dict[str, Any], margin: float | None = None) -> list[str]:
    """:func:`verdict` for every method against the tuning's reference (and the ``also_against``
    methods); then, where the tuning reports a metric beside its own (a classifier's held-out
    loss), the same on that metric, lower being better."""
    protocol = summary["protocol"]
    reference, higher = protocol["reference"], protocol["higher_is_better"]
    against = [reference, *protocol.get("also_against", [])]
    lines = [
        verdict(method, other, row[f"minus_{other}"], higher_is_better=higher, margin=margin)
        for other in against
        for method, row in summary["methods"].items()
        if f"minus_{other}" in row
    ]
    beside = protocol.get("reported_beside")
    return lines + [
        verdict(f"{method} ({beside})", other, row[f"minus_{other}_{beside}"], higher_is_better=False)
        for other in against
        for method, row in summary["methods"].items()
        if beside and f"minus_{other}_{beside}" in row
    ]


def evidence_table(
    columns: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    labels: dict[str, str],
    range_checks: list[dict[str, dict[str, Any]]] | None = None,
) -> str:
    """README's evidence at a glance: per tuned comparison (a column, ``name`` and the summary it
    reads) and method (a row, named by ``labels``), the paired difference against the comparison's
    tuned reference in its reported metric, with the word the interval allows (:func:`verdict`'s
    rule: better / worse only where it excludes 0). "—": not in that comparison.

    No cell rests silently on a range edge. ``range_checks`` (per column, method → the summary of
    a tuning of that method searched around an edge, on the same task) makes the two searches one:
    for the method and for the reference alike, the selection that scored better on the selection
    split stands, and the cell pairs the standing selections on the seeds both trained (‡). A
    standing selection still at an edge is marked † — in the header where it is the reference's
    (every cell of the column leans on it)."""
    range_checks = range_checks or [{} for _ in columns]
    header, marks_used = ["method"], set()
    rows: dict[str, list[str]] = {method: [] for method in labels}
    for column, summary, checks in zip(columns, summaries, range_checks):
        for method, check in checks.items():
            _same_task(method, check, summary)
        reference = summary["protocol"]["reference"]
        standing_reference = _standing(reference, summary, checks.get(reference))
        edge = " †" if _rests_on_edge(reference, standing_reference, checks.get(reference)) else ""
        header.append(f"{column['name']} ({_metric_of(summary)}){edge}")
        marks_used |= {"†"} if edge else set()
        for method in labels:
            cell, mark = _evidence_cell(method, summary, checks, standing_reference)
            rows[method].append(cell)
            marks_used |= {mark} - {""}
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += [f"| {labels[m]} | " + " | ".join(cells) + " |" for m, cells in rows.items() if set(cells) != {"—"}]
    references = sorted({REFERENCE_NAMES.get(r, r) for r in (s["protocol"]["reference"] for s in summaries)})
    notes = [
        f"Each cell: the method minus tuned {' or '.join(references)} (the comparison's reference), mean over "
        "its final seeds, and what the paired 95 % interval shows (better / worse only where it excludes 0); "
        "for a classifier, the same on its held-out loss after the accuracy."
    ]
    if "‡" in marks_used:
        notes.append(
            "‡: a range check searched around an edge (named in the comparison's README); of the two searches' "
            "selections, the one that scored better on the selection split stands, the method's and the "
            "reference's alike, paired on the same seeds."
        )
    if "†" in marks_used:
        notes.append(
            "†: selected at an edge of its range (in a header: the reference), where the range may have decided; "
            "the comparison's README says what a range check found."
        )
    out += ["", " ".join(notes)]
    return "\n".join(out)


REFERENCE_NAMES = {"adamw": "AdamW", "sgd": "SGD"}


def _metric_of(summary: dict[str, Any]) -> str:
    return summary["protocol"]["reported_on"].replace("_", " ")


def _evidence_cell(
    method: str, summary: dict[str, Any], checks: dict[str, dict[str, Any]], standing_reference: dict[str, Any]
) -> tuple[str, str]:
    """One cell and its footnote mark ("" none, "‡" a range check, "†" at an edge): the verdict on
    the reported metric and, for a classifier, on the held-out loss beside it."""
    protocol = summary["protocol"]
    reference = protocol["reference"]
    if f"minus_{reference}" not in summary["methods"].get(method, {}):
        return "—", ""
    standing = _standing(method, summary, checks.get(method))
    checked = method in checks or reference in checks
    mark = "†" if _rests_on_edge(method, standing, checks.get(method)) else "‡" if checked else ""
    metrics = [(protocol["reported_on"], "", protocol["higher_is_better"])]
    if beside := protocol.get("reported_beside"):  # a classifier's held-out loss, lower being better
        metrics.append((beside, f"{beside.rsplit('_', 1)[-1]} ", False))
    words = []
    for metric, name, higher in metrics:
        if standing is summary and standing_reference is summary:
            suffix = f"_{metric}" if name else ""
            diff = summary["methods"][method].get(f"minus_{reference}{suffix}")
        else:
            diff = _paired_across(method, reference, metric, standing, standing_reference)
        if diff is not None:
            words.append(name + _verdict_word(diff, higher))
    return ", ".join(words) + (f" {mark}" if mark else ""), mark


def _verdict_word(diff: dict[str, Any], higher_is_better: bool) -> str:
    low, high = diff.get("ci95") or (math.nan, math.nan)
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{_number(diff['mean'], '+.3f')} (not decided)"
    if low > 0 or high < 0:
        word = "better" if (low > 0) == higher_is_better else "worse"
    else:
        word = "level"
    return f"{word} ({diff['mean']:+.3f})"


def _at_edge(summary: dict[str, Any], method: str) -> bool:
    return bool(summary["methods"].get(method, {}).get("at_edge"))


def _rests_on_edge(method: str, standing: dict[str, Any], check: dict[str, Any] | None) -> bool:
    """Whether the standing selection rests on an unchecked edge: the range check's own selection
    at an edge of the check's range, or a selection at an edge that no check searched around."""
    return _at_edge(standing, method) and (check is None or standing is check)


def _standing(method: str, summary: dict[str, Any], check: dict[str, Any] | None) -> dict[str, Any]:
    """The tuning whose selection of ``method`` stands when ``summary``'s search and the range
    check's are read as one: the check's where it scored better on the selection split."""
    if check is None:
        return summary
    ours, theirs = (_selection_score(s, method) for s in (check, summary))
    better = ours > theirs if summary["protocol"]["higher_is_better"] else ours < theirs
    return check if better else summary


def _selection_score(summary: dict[str, Any], method: str) -> float:
    row = summary["methods"][method]
    searched = next(r for r in row["search"] if r["run"] == row["selected"])
    return float(searched[summary["protocol"]["selected_on"]])


def _same_task(method: str, check: dict[str, Any], summary: dict[str, Any]) -> None:
    """A range check pairs with the comparison seed by seed only on the same task: the same base
    configuration (seed s is the same initialisation and data order in both) and metric; and its
    selection scores compare with the comparison's only over the same search seeds (a mean over
    three seeds is not one seed's best)."""
    ours, theirs = check["protocol"], summary["protocol"]
    keys = ("base", "reported_on", "selected_on", "search_seeds")
    differs = [key for key in keys if ours.get(key) != theirs.get(key)]
    if differs:
        raise ValueError(
            f"range check for {method!r} is not comparable with its comparison: its {', '.join(differs)} differ"
        )


def _paired_across(
    method: str, reference: str, metric: str, ours: dict[str, Any], theirs: dict[str, Any]
) -> dict[str, Any]:
    """``method`` as ``ours`` selected it minus ``reference`` as ``theirs`` did, on ``metric``,
    per seed (the tunings share their task: :func:`_same_task`)."""
    return paired_difference(_by_seed(ours, method, metric), _by_seed(theirs, reference, metric))


def _by_seed(summary: dict[str, Any], method: str, metric: str) -> dict[int, float]:
    """A method's per-seed scores as summary.json stores them (seeds as strings, a diverged run's
    NaN as null), back to what the tuning paired: int seeds, NaN."""
    stored = summary["methods"][method][f"{metric}_by_seed"]
    return {int(seed): math.nan if score is None else score for seed, score in stored.items()}


def cost_line(summary: dict[str, Any]) -> str:
    """What the tuning cost: its runs' training time, summed over runs, for the search and the
    final runs."""
    hours = summary.get("train_hours") or {}
    parts = [
        f"{part} {hours[part]:.2f} h" if hours.get(part) is not None else f"{part} not recorded"
        for part in ("search", "final")
    ]
    return "training time, summed over runs: " + ", ".join(parts)


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: each method (a peer with its package and version), the
    test metric, the paired difference against the reference, the metric reported beside it (a
    classifier's held-out loss) with its own paired difference where every method has it, the
    gradient norm's tail rise on the normalised layers where the runs stored it, the knobs
    selected (``(edge)``: at the edge of its range)."""
    protocol = summary["protocol"]
    metric, reference = protocol["reported_on"], protocol["reference"]
    tail = "group/normalized/grad_norm"
    with_tail = all(tail in row.get("tail_rise", {}) for row in summary["methods"].values())
    tail_header = " grad-norm tail rise |" if with_tail else ""
    selected_on = protocol["selected_on"]
    against = [reference, *protocol.get("also_against", [])]
    columns = "".join(f" − {a} [95 % CI] |" for a in against)
    # the metric reported beside (a classifier's held-out loss): its columns where every method has it
    beside = protocol.get("reported_beside")
    with_beside = bool(beside) and all(beside in row for row in summary["methods"].values())
    beside_header = f" {beside} | {beside} − {reference} [95 % CI] |" if with_beside else ""
    lines = [
        f"| method | seeds | {metric} (test) |{columns}{beside_header}{tail_header} selected on {selected_on} |",
        "|---|---|---|" + "---|" * (len(against) + 2 * with_beside + with_tail) + "---|",
    ]
    for method, row in summary["methods"].items():
        paired = " | ".join(_paired(row.get(f"minus_{a}")) for a in against)
        knobs = ", ".join(f"{k}={v}" + (" (edge)" if k in row["at_edge"] else "") for k, v in row["knobs"].items())
        extra = ""
        if with_beside:
            extra += f" {_mean_std(row[beside])} | {_paired(row.get(f'minus_{reference}_{beside}'))} |"
        if with_tail:
            r = row["tail_rise"][tail]
            extra += f" {r['mean']:.3f} ± {r['std']:.3f} |"
        name = f"{method} ({row['package']})" if "package" in row else method
        lines.append(f"| {name} | {row[metric]['n']} | {_mean_std(row[metric])} | {paired} |{extra} {knobs} |")
    return "\n".join(lines)


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{_number(stats['mean'], '.4f')} ± {_number(stats['std'], '.4f')}"


def _paired(diff: dict[str, Any] | None) -> str:
    return "—" if diff is None else f"{_number(diff['mean'], '+.4f')}{_interval(diff['ci95'])}"


def _number(value: float | None, spec: str) -> str:
    return "diverged" if value is None or not math.isfinite(value) else format(value, spec)


def _interval(interval: list[float | None] | None) -> str:
    if interval is None or any(v is None or not math.isfinite(v) for v in interval):
        return ""
    return f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"
