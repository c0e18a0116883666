"""``normctl doctor RUN_DIR``: what weight decay did to a finished run, read from its records.

The after-the-run twin of :func:`normctl.check`: from a monitored run's ``metrics.jsonl`` (the
lab's, or any run written through ``JsonlSink``) it says, per param group,

* whether the decay reached its steady state in the run (its time scale 1/(2γλ) against the
  run's length);
* what the forecast of :mod:`normctl.monitor.forecast` said early in the run (at 10 % of it) and
  where the norm ended — the forecast judged by the run itself;
* whether ‖g‖/‖θ‖ rose over the run's last 10 % (Defazio's 2025 end-of-run rise) and what removes
  it;
* how far AdamWN's controlled tensors ended from their targets, and which groups' norms fell
  below half their initial value.

Every number comes from the records as they were written (a thinned file gives coarser ones).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .checks import RISE, SETTLED, TAIL, Finding, Findings
from .monitor.forecast import Forecast, from_records, group_labels
from .monitor.phases import tail_rise
from .report.runs import Run

FORECAST_AT = 0.1  # the fraction of the run at which the forecast is made
SHRUNK = 0.5  # a norm below this fraction of its initial value is reported


def diagnose_records(records: list[dict[str, Any]], name: str = "this run") -> Findings:
    """:func:`diagnose` of monitor records held in memory (``NormMonitor.group_records``: the
    framework callbacks' verdict when training ends)."""
    return diagnose(Run(Path(name), name, None, list(records)))


def diagnose(run: Run) -> Findings:
    """The findings for one run (see the module docstring)."""
    records = run.records
    if not records:
        return Findings([Finding("info", f"{run.path.name}: no records", "", "")])
    total = records[-1]["step"]
    early = {f.group: f for f in from_records(records, at_step=max(1, int(total * FORECAST_AT)))}
    final = {f.group: f for f in from_records(records)}
    findings = Findings()
    for label in group_labels(records, "norm_ratio"):
        findings += _time_scale(run, label, total)
        if label in final:  # a decayed group
            findings.append(_forecast_judged(label, early.get(label), final[label], max(1, int(total * FORECAST_AT))))
        findings += _tail_rise(run, label)
        findings += _shrunk(run, label)
    findings += _controlled(run)
    return findings


def _time_scale(run: Run, label: str, total: int) -> list[Finding]:
    _, lrs = run.series(f"lr/{label}")
    _, decays = run.series(f"group/{label}/weight_decay")
    rates = [lr * d for lr, d in zip(lrs, decays)]
    if not rates or max(rates) <= 0:
        return []
    scale = 1 / (2 * max(rates))
    evidence = f"time scale 1/(2γλ) = {scale:.0f} steps at the peak γλ, a run of {total} steps"
    if total < scale:
        what = "decay never reached its steady state: the norms drifted all run"
    elif total < SETTLED * scale:
        what = "the norms approached decay's steady state only towards the end"
    else:
        what = f"the norms were at decay's steady state from about step {SETTLED * scale:.0f}"
    return [Finding("info", f"{label}: {what}", evidence, "")]


def _forecast_judged(label: str, early: Forecast | None, final: Forecast, at_step: int) -> Finding:
    """What the forecast said at 10 % of the run, and where the norm ended."""
    ended = final.norm_ratio_now
    if early is None or early.norm_ratio_end is None:
        said = (
            f"made no forecast at step {at_step} (the weights moved inward faster than decay takes them)"
            if early is not None
            else f"had too few measured steps by step {at_step} to forecast"
        )
        return Finding("info", f"{label}: ‖θ‖/‖θ0‖ ended at {ended:.3g}; the forecast {said}", "", "")
    factor = ended / early.norm_ratio_end if early.norm_ratio_end > 0 else math.inf
    return Finding(
        "info",
        f"{label}: ‖θ‖/‖θ0‖ ended at {ended:.3g}; forecast at step {early.at_step}: {early.norm_ratio_end:.3g} "
        f"({factor:.2f}× the forecast)",
        f"the decay recurrence of target='auto' from the norms measured up to step {early.at_step}",
        "",
    )


def _tail_rise(run: Run, label: str) -> list[Finding]:
    """Defazio (2025): ‖g‖/‖θ‖ of normalised layers rises as the lr decays under a fixed λ."""
    key = f"group/{label}/adam_grad_weight_ratio"
    if not run.series(key)[0]:
        key = f"group/{label}/grad_weight_ratio"
    _, values = run.series(key)
    rise = tail_rise(values, tail=TAIL)
    if not (math.isfinite(rise) and rise >= RISE):
        return []
    _, lrs = run.series(f"lr/{label}")
    _, decays = run.series(f"group/{label}/weight_decay")
    corrected = len(decays) > 1 and decays[0] > 0 and decays[-1] < 0.5 * decays[0] and lrs[-1] < 0.5 * lrs[0]
    metric = key.rpartition("/")[2]
    evidence = f"{metric}: mean over the last {TAIL:.0%} of the records / mean over 40–60 % = {rise:.2f}"
    if corrected:
        return [
            Finding(
                "info",
                f"{label}: ‖g‖/‖θ‖ rose {rise:.2f}× at the end under corrected decay",
                evidence,
                "not the decay's rise (its λ already follows the lr): look at the loss and the lr schedule",
            )
        ]
    return [
        Finding(
            "warning",
            f"{label}: ‖g‖/‖θ‖ rose {rise:.2f}× over the last {TAIL:.0%} of the run",
            evidence,
            "AdamC / SGDC (or normctl.CorrectedDecay) with the same hyperparameters over normctl.param_groups(model) "
            "remove the rise on normalised layers (Defazio 2025)",
        )
    ]


def _shrunk(run: Run, label: str) -> list[Finding]:
    ended = run.last(f"group/{label}/norm_ratio")
    if ended is None or ended >= SHRUNK:
        return []
    return [
        Finding(
            "info",
            f"{label}: the norm ended at {ended:.2f} of its initial value",
            "decay (or the loss) pulled these weights in: harmless for layers followed by a normalisation, which "
            "do not see the scale; embeddings, gains and output layers pass it on",
            "leave gains and biases undecayed (normctl.param_groups(model)); AdamWN holds a chosen norm instead",
        )
    ]


def _controlled(run: Run) -> list[Finding]:
    """AdamWN's controlled tensors: how far from their targets the run ended."""
    last = run.records[-1]
    deviations = [abs(v) for k, v in last.items() if k.endswith("/norm_deviation") and isinstance(v, (int, float))]
    if not deviations:
        return []
    worst = max(deviations)
    return [
        Finding(
            "info" if worst < 0.05 else "warning",
            f"AdamWN's controlled tensors ended within {worst:.1%} of their targets",
            f"{len(deviations)} tensors, |‖θ‖/τ − 1| at step {last['step']}",
            "" if worst < 0.05 else "a larger rate (k) holds them closer",
        )
    ]
