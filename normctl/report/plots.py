"""matplotlib figures of monitored runs (they read only what the monitor wrote)."""

from __future__ import annotations

import math

from .runs import Run, by_label, mean_std


def new_figure(rows: int = 1, cols: int = 1, **kwargs):
    """A matplotlib ``Figure`` and its axes, made without pyplot: it draws to files through the
    Agg canvas and never switches the backend of the user's session (a notebook keeps its own).
    Raises ImportError naming the extra where matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the report's figures need matplotlib: pip install 'normctl[plots]'") from error
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, cols, **kwargs)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


MANY_GROUPS = 8  # beyond this the legend goes beside the axes, where it hides no curve


def ratio_vs_prediction(run: Run, *, max_lines: int = 24):
    """Gradient-to-weight ratio of each decayed tensor against the prediction of Defazio (2025)
    (Defazio 2025, Figures 2–3). Adam-family runs use the A-weighted ratio."""
    preds = [k for k in run.keys("tensor", "pred_ratio") if run.series(k)[0]][:max_lines]  # decayed tensors
    fig, ax = new_figure(figsize=(9.5, 4.8) if len(preds) > MANY_GROUPS else (6, 3.6))
    # one dashed line per distinct prediction (AdamC: the normalised layers' and the others'),
    # labelled with how many layers it is for
    predictions: dict[tuple, list[str]] = {}
    for key in preds:
        name = key[len("tensor/") : -len("/pred_ratio")]
        measured = f"tensor/{name}/adam_grad_weight_ratio"
        if not run.series(measured)[0]:
            measured = f"tensor/{name}/grad_weight_ratio"
        ax.plot(*run.series(measured), lw=0.8, alpha=0.6, label=name)
        steps, values = run.series(key)
        predictions.setdefault((tuple(steps), tuple(values)), []).append(name)
    for i, ((steps, values), names) in enumerate(predictions.items()):
        layers = names[0] if len(names) == 1 else f"{len(names)} layers, {names[0]} …"
        label = f"predicted steady state ({layers})"
        ax.plot(steps, values, color="darkred", lw=2, ls=("--", ":", "-.")[i % 3], label=label)
    names = [k[len("tensor/") : -len("/pred_ratio")] for k in preds]
    weighted = any(run.series(f"tensor/{name}/adam_grad_weight_ratio")[0] for name in names)
    ax.set(
        yscale="log",
        xlabel="step",
        # Adam's prediction is of its A-weighted ratio, which is what is drawn for Adam-family runs
        ylabel="‖g‖_A⁻¹ / ‖θ‖_A per layer (Adam)" if weighted else "‖g‖/‖θ‖ per layer",
        title=f"{run.label}: gradient-to-weight ratio vs prediction",
    )
    if preds:
        _legend(ax, many=len(preds) > MANY_GROUPS)
    fig.tight_layout()
    return fig


def norms_vs_targets(run: Run, *, max_lines: int = 24):
    """AdamWN's controlled tensors: ‖θ‖/τ − 1, each norm's distance to its target (0: on it)."""
    keys = [k for k in run.keys("tensor", "norm_deviation") if run.series(k)[0]][:max_lines]
    fig, ax = new_figure(figsize=(9.5, 4.8) if len(keys) > MANY_GROUPS else (6, 3.6))
    for i, key in enumerate(keys):
        name = key[len("tensor/") : -len("/norm_deviation")]
        ax.plot(*run.series(key), lw=0.8, alpha=0.7, ls=LINESTYLES[i % len(LINESTYLES)], label=name)
    ax.axhline(0.0, color="darkred", lw=1.5, label="on target")
    ax.set(xlabel="step", ylabel="‖θ‖/τ − 1", title=f"{run.label}: norm against target")
    _legend(ax, many=len(keys) > MANY_GROUPS)
    fig.tight_layout()
    return fig


def band(ax, steps, mean, std, label, linestyle="-"):
    """A mean curve with its ±1 std band."""
    (line,) = ax.plot(steps, mean, label=label, linestyle=linestyle)
    if any(std):
        upper, lower = [m + s for m, s in zip(mean, std)], [m - s for m, s in zip(mean, std)]
        ax.fill_between(steps, lower, upper, alpha=0.2, color=line.get_color())


LINESTYLES = ("-", "--", ":", "-.")  # one per group in turn, so curves that coincide stay apart


def curves(runs: list[Run], key: str, ylabel: str, *, log: bool = False):
    """One line per group of seeds (their label: the method unless set) with a ±1 std band."""
    groups = by_label(runs)
    many = len(groups) > MANY_GROUPS
    fig, ax = new_figure(figsize=(9.5, 4.8) if many else (6, 3.6))
    for i, (label, group) in enumerate(groups.items()):
        steps, mean, std = mean_std(group, key)
        if steps:
            n = f" ({len(group)} seeds)" if len(group) > 1 else ""
            # a style of its own per group: a curve lying on another (AdamC = AdamW where nothing is
            # normalised) still shows, dashed over solid
            band(ax, steps, mean, std, label + n, LINESTYLES[i % len(LINESTYLES)])
    ax.set(xlabel="step", ylabel=ylabel, yscale="log" if log else "linear")
    _legend(ax, many=many)
    fig.tight_layout()
    return fig


def _legend(ax, *, many: bool) -> None:
    """Inside the axes for a few entries, beside them (where it hides no curve) for many."""
    if many:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)


def weight_values(run: Run, *, max_panels: int = 8):
    """Min / mean / max weight value over training for each weight matrix (Yu 2022's plots)."""
    names = [k[len("tensor/") : -len("/weight_min")] for k in run.keys("tensor", "weight_min")]
    matrices = [n for n in names if not n.endswith("bias")][:max_panels] or names[:max_panels]
    cols = min(4, max(1, len(matrices)))
    rows = max(1, math.ceil(len(matrices) / cols))
    fig, axes = new_figure(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, matrices):
        steps, lo = run.series(f"tensor/{name}/weight_min")
        _, mean = run.series(f"tensor/{name}/weight_mean")
        _, hi = run.series(f"tensor/{name}/weight_max")
        ax.fill_between(steps, lo, hi, alpha=0.3)
        ax.plot(steps, mean, lw=1)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(matrices) :]:
        ax.axis("off")
    fig.suptitle(f"{run.label}: min / mean / max weight value", fontsize=9)
    fig.tight_layout()
    return fig
