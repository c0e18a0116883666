"""``normctl report``: one self-contained HTML page comparing monitored runs."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

from . import interactive as interactive_module
from . import plots
from .runs import Run, by_label, load_run

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; } img { max-width: 100%; }
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig, caption: str) -> str:
    # data-loaded is set by the browser once the image has decoded (checked by the tests).
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(fig)}" '
        f"onload=\"this.dataset.loaded='1'\"><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _interactive_figure(div: str, caption: str) -> str:
    return f"<figure>{div}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict], table_id: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _mean_pm_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {std:.2g}"


def method_summary(runs: list[Run]) -> list[dict]:
    rows = []
    for label, group in by_label(runs).items():
        # a diverged run's last finite values describe nothing: it is counted, not averaged
        summaries = [r.summary() for r in group if not r.status.startswith("diverged")]
        rows.append(
            {"method": label, "seeds": len(group), "diverged": len(group) - len(summaries)}
            | {
                key: _mean_pm_std([s[key] for s in summaries])
                for key in ("last train loss", "final norm ratio", "tail blow-up")
            }
        )
    return rows


def build_report(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    title: str = "normctl report",
    labels: Sequence[str] | None = None,
    interactive: bool = False,
    lead: Sequence[tuple[str, str, bool, str]] = (),
) -> Path:
    """Write the HTML report for ``run_dirs`` to ``output`` and return its path.

    Runs are grouped (one curve, one summary row) by their config's ``label``, else their
    method; ``labels``, one per run, groups them otherwise — e.g. by ablation variant, where
    every variant trains with the same method. ``interactive`` draws the run-level charts (loss,
    gradient norm, norm ratio) with plotly (``normctl[interactive]``), to zoom and hover; the
    per-layer figures stay images. ``lead``: charts drawn first, each (record key, y label, log
    scale, caption) — the figure a comparison is about, before the standard ones."""
    if interactive:
        interactive_module.require_plotly()  # before any work: a missing extra is said at once
    if not run_dirs:
        raise ValueError("run_dirs must name at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"labels must name one group per run: {len(labels)} labels for {len(run_dirs)} runs")
    seen: dict[Path, str] = {}
    for d in run_dirs:  # the same run twice would read as two seeds that agree exactly
        resolved = Path(d).resolve()
        if resolved in seen:
            raise ValueError(f"run directory {d} is given twice (as {seen[resolved]!s} too): pass each run once")
        seen[resolved] = str(d)
    runs = [load_run(d) for d in run_dirs]
    if labels is not None:
        runs = [dataclasses.replace(run, label=label) for run, label in zip(runs, labels)]
    charts = [
        *lead,
        ("loss", "training loss", False, "Training loss (mean ± std over seeds)"),
        (
            "global/grad_norm",
            "global gradient norm",
            True,
            "Global gradient norm — a rise at the end is the tail blow-up",
        ),
        ("global/norm_ratio", "‖θ‖ / ‖θ₀‖", False, "Weight norm ratio to initialisation, all parameters"),
    ]
    # each param group's own ratio: the global one is dominated by whatever holds most of the norm
    # (norm gains, in a small model), which says little about the matrices decay or control acts on
    group_keys = list(dict.fromkeys(k for run in runs for k in run.keys("group", "norm_ratio")))
    charts += [(k, "‖θ‖ / ‖θ₀‖", False, f"Weight norm ratio of the {k.split('/')[1]} group") for k in group_keys[:4]]
    if interactive:
        figures = [
            _interactive_figure(interactive_module.curves(runs, key, ylabel, log=log, include_plotlyjs=i == 0), caption)
            for i, (key, ylabel, log, caption) in enumerate(charts)
        ]
    else:
        figures = [_figure(plots.curves(runs, key, ylabel, log=log), caption) for key, ylabel, log, caption in charts]
    from ..verdict import diagnose  # here: the verdict reads runs through this package

    verdicts = [
        f"<h3>{html.escape(label)} ({html.escape(group[0].path.name)})</h3>"
        f"<pre>{html.escape(str(diagnose(group[0])))}</pre>"
        for label, group in by_label(runs).items()
    ]
    phase_tables = []
    for label, group in by_label(runs).items():
        first = group[0]
        rows = first.layer_phases()
        if rows:
            phase_tables.append(
                f"<h3>{html.escape(label)} ({html.escape(first.path.name)})</h3>"
                + _table(rows, f"phases-{html.escape(label)}")
            )
        predicted = [k for k in first.keys("tensor", "pred_ratio") if first.series(k)[0]]
        if predicted:
            figures.append(_figure(plots.ratio_vs_prediction(first), f"{label}: ratio vs predicted steady state"))
        if first.keys("tensor", "target_norm"):
            why = (
                ""
                if predicted
                else " (its controlled tensors have no steady-state ratio to predict: they are held "
                "at a target norm, so this panel takes the place of the ratio against its prediction)"
            )
            figures.append(_figure(plots.norms_vs_targets(first), f"{label}: norms against their targets{why}"))
        if first.keys("tensor", "weight_min"):
            figures.append(_figure(plots.weight_values(first), f"{label}: weight values"))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(runs)} run(s). Tail blow-up = final global gradient norm over its minimum in the second half
of training (smoothed); 1 means no end-of-training rise. Norm ratio = ‖θ‖/‖θ₀‖ over all parameters.</p>
<h2>What decay did</h2>
<p>The findings of <code>normctl doctor</code> for the first run of each method: whether decay reached
its steady state, the forecast made at 10 % of the run against where the norm ended, an end-of-run
rise of ‖g‖/‖θ‖, AdamWN's norms against their targets.</p>
{"".join(verdicts)}
<h2>Summary by method</h2>
{_table(method_summary(runs), "methods")}
<h2>Runs</h2>
{_table([r.summary() for r in runs], "runs")}
<h2>Figures</h2>
{"".join(figures)}
<h2>Phases per layer</h2>
<p>Measured ratio against its predicted steady state: burn-in until it comes within 25 % of the
prediction, tail from the minimum of the second half when the ratio ends 25 % above it.</p>
{"".join(phase_tables) or "<p>No layer has a predicted steady state (no decay).</p>"}
</body></html>
"""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return output
