"""Quoted numbers that regenerate: tables in the results' Markdown rendered from their summary.json.

A document marks a generated block with

    <!-- generated: RENDERER results/<dir>/summary.json [name=value ...] -->
    ...
    <!-- end generated -->

(the ``name=value`` options are the renderer's keyword arguments, as numbers: ``margin=0.01``).

``python scripts/check_results.py`` renders every block again from its source and fails, naming the
file and the block, where the text differs (a number edited by hand, or a summary.json that moved
without its README); ``--write`` rewrites the blocks. ``make check-results`` runs the check, and CI
runs ``make check-results``.

A number quoted in prose says where it comes from in a comment just before it:

    held-out loss <!--q repro_gpt methods:adamw:val_loss-->1.2368 ± 0.0133

— ``results/repro_gpt/summary.json``, the keys ``methods`` → ``adamw`` → ``val_loss`` (``:``
between keys, which may hold dots, slashes and spaces; a ``|`` would split a Markdown table's
cell). A run's own folder quotes its ``final.json``: ``<!--q repro_gpt/method-adamw_s0 val_loss-->``,
and a JSON file under ``results/`` quotes itself: ``<!--q bench/step_speed_gpt2.json results:…-->``.
The quote is rendered at the precision the text uses: a ``{mean, std}`` entry as "mean ± std",
a ``{mean, ci95}`` difference as "+mean [lo, hi]", a number as itself; ``--write`` leaves quotes
alone and the check fails on them. In every document of :data:`DOCUMENTS`, every number with
two or more decimals outside the generated blocks and code (settings, commands) must be quoted so,
or marked ``<!--cited-->`` (a paper's own number, not a measurement of ours).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    "README.md",
    "REPRODUCTION.md",
    "results/*/README.md",
    "results/*/*/README.md",
    "docs/*.md",
    "docs/guide/*.md",
]
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+)((?: \w+=\S+)*) -->\n)(.*?)(<!-- end generated -->)", re.S)
NUMBER = r"[+\-−]?\d+(?:\.\d+)?"
QUOTE = re.compile(rf"<!--q (\S+) ([^>]+?)-->({NUMBER}(?: ± {NUMBER}| \[{NUMBER}, {NUMBER}\])?)")
CITED = re.compile(rf"<!--cited-->{NUMBER}(?: ± {NUMBER})?")
# settings and commands: code, not measurements
CODE = re.compile(r"```.*?```|`[^`]*`", re.S)
# a number with two or more decimals, not one of a setting's tuple written without spaces ("0.9,0.98")
# nor a version ("torch 2.14")
DECIMALS = re.compile(r"(?<![\w.])(?<!\d,)(?<!torch )\d+\.\d{2,}(?!\.?\d)(?![A-Za-z_])(?!,\d)")


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"


def auto_target_table(summary: dict[str, Any]) -> str:
    """target="auto" against AdamW and the AdamW-measured target, one table per initialisation."""
    from normctl_lab.peers import PEERS

    names = {
        "method=adamw": "AdamW (λ = 0.1)",
        "method=adamwn": "AdamWN, target AdamW's norm ratio",
        "auto_target=equilibrium": 'AdamWN, `target="auto"` (equilibrium)',
        "auto_target=inflection": 'AdamWN, `AutoTarget(rule="inflection")`',
        "auto_run_length=true": "AdamWN, `AutoTarget(total_steps=…)` (equilibrium, the run's length)",
        "auto_alignment=true": "AdamWN, `AutoTarget(total_steps=…, alignment=True)` (the same, alignment carried)",
        "auto_shared_ratio=true": "AdamWN, `AutoTarget(…, alignment=True, shared_ratio=True)` (one ratio per group)",
        "method=adamcpr": "AdamCPR ({package}, inflection-point bound)",
        "method=hyperball": "HyperBallAdamW ({package}, norm held at init)",
    }
    out = []
    for init, block in summary["inits"].items():
        out.append(f"**{init} initialisation** (AdamW's final norm ratio {block['adamw_norm_ratio']:.4f})\n")
        out.append(
            "| method | seeds | held-out loss | − AdamW [95 % CI] | − measured-target AdamWN [95 % CI] | ‖θ‖/‖θ₀‖ |"
        )
        out.append("|---|---|---|---|---|---|")
        for label, row in block["methods"].items():
            loss, ratio = row["val_loss"], row["controlled_norm_ratio"]
            package = row.get("package") or PEERS.get(label.split("=")[-1], "")  # older summaries: no version
            name = names.get(label, label).format(package=package)
            cells = [name, str(loss["n"]), f"{loss['mean']:.4f} ± {loss['std']:.4f}"]
            for key in ("minus_adamw", "minus_adamwn"):
                diff = row.get(key)
                cells.append("—" if diff is None else f"{diff['mean']:+.4f}{_ci(diff['ci95'])}")
            cells.append(f"{ratio['mean']:.3f} ± {ratio['std']:.3f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def tune_table(summary: dict[str, Any]) -> str:
    """A tuned comparison (``normctl-lab tune``): the table its command prints."""
    from normctl_lab.tune_report import summary_table

    return summary_table(summary)


def tune_verdicts(summary: dict[str, Any], margin: float | None = None) -> str:
    """A tuned comparison's verdict sentences, one per method and metric, each worded from its
    interval alone (``tune_report.verdict``); ``margin``: also whether the difference lies within
    ±margin, said only where the interval decides it (a claim such as "within ≈ 0.01")."""
    from normctl_lab.tune_report import verdicts

    return "\n".join(f"- {line}" for line in verdicts(summary, margin=margin))


def step_speed_table(bench: dict[str, Any]) -> str:
    """A ``benchmarks/step_speed.py`` result: each optimizer's median step over its baseline's, and
    the spread of that ratio over the rounds where the run kept them."""
    out = ["| optimizer | against | ratio of medians | per round (min–max) |", "|---|---|---|---|"]
    for name, row in bench["results"].items():
        if "error" in row:
            continue
        baseline = row.get("baseline") or next(k[len("ratio_to_") :] for k in row if k.startswith("ratio_to_"))
        ratio = next(v for k, v in row.items() if k.startswith("ratio_to_"))
        rounds = row.get("ratio_by_round") or []
        spread = f"{min(rounds):.2f}–{max(rounds):.2f}" if rounds else "—"
        flag = " (wrong results on this torch: pytorch/pytorch#191763)" if "defect" in row else ""
        out.append(f"| {name}{flag} | {baseline.replace('_', ' ')} | {ratio:.2f} | {spread} |")
    return "\n".join(out)


def plain_call_table(summary: dict[str, Any]) -> str:
    """``normctl-lab plain-call``: each task's plain calls against AdamW's / SGD's."""
    from normctl_lab.plain_call import tables

    return tables(summary)


def forecast_accuracy_table(summary: dict[str, Any]) -> str:
    """``normctl-lab forecast-accuracy``: the forecast's error per optimizer, model and source."""
    from normctl_lab.forecast_accuracy import table

    return table(summary)


def evidence_table(manifest: dict[str, Any]) -> str:
    """README's evidence table: ``manifest`` (results/evidence.json) names the tuned comparisons
    (columns) and the methods (rows); the cells come from those comparisons' summary.json, and a
    column's ``range_checks`` (method → folder) from the tuning searched around that method's edge."""
    from normctl_lab.tune_report import evidence_table as render_evidence

    def summary(folder: str) -> dict[str, Any]:
        return json.loads((ROOT / "results" / folder / "summary.json").read_text())

    columns = manifest["columns"]
    checks = [{method: summary(folder) for method, folder in c.get("range_checks", {}).items()} for c in columns]
    return render_evidence(columns, [summary(c["summary"]) for c in columns], manifest["rows"], checks)


RENDERERS: dict[str, Callable[..., str]] = {
    "evidence_table": evidence_table,
    "forecast_accuracy_table": forecast_accuracy_table,
    "plain_call_table": plain_call_table,
    "auto_target_table": auto_target_table,
    "step_speed_table": step_speed_table,
    "tune_table": tune_table,
    "tune_verdicts": tune_verdicts,
}


def render(renderer: str, source: str, options: str = "") -> str:
    if renderer not in RENDERERS:
        raise SystemExit(f"unknown renderer {renderer!r}; known: {sorted(RENDERERS)}")
    text = RENDERERS[renderer](json.loads((ROOT / source).read_text()), **_options(renderer, options))
    return text.rstrip("\n") + "\n"


def _options(renderer: str, options: str) -> dict[str, float]:
    """A block's ``name=value`` options as the renderer's keyword arguments; a name it does not
    take or a value that is not a number stops the check, naming both."""
    accepted = list(inspect.signature(RENDERERS[renderer]).parameters)[1:]  # the first is the source's JSON
    kwargs = {}
    for option in options.split():
        name, value = option.split("=", 1)
        if name not in accepted:
            raise SystemExit(f"{renderer} takes no option {name!r}; it takes {accepted or 'none'}")
        try:
            kwargs[name] = float(value)
        except ValueError:
            raise SystemExit(f"{renderer}'s option {name} must be a number, got {value!r}") from None
    return kwargs


def _decimals(number: str) -> int:
    return len(number.split(".")[1]) if "." in number else 0


def _plain(text: str) -> str:
    return text.replace("−", "-")


def render_quote(value: Any, quoted: str) -> str:
    """``value`` (a summary entry) written as ``quoted`` writes it: the same form, decimals and
    signs ("+" where the text has one)."""
    numbers = re.findall(NUMBER, quoted)
    if isinstance(value, dict) and " ± " in quoted:
        values, form = [value["mean"], value["std"]], "{} ± {}"
    elif isinstance(value, dict) and "[" in quoted:
        values, form = [value["mean"], *value["ci95"]], "{} [{}, {}]"
    else:
        values, form = [value["mean"] if isinstance(value, dict) else value], "{}"
    written = [f"{v:{'+' if n.startswith('+') else ''}.{_decimals(n)}f}" for v, n in zip(values, numbers)]
    return form.format(*written)


def lookup(source: str, keys: str) -> Any:
    """The entry at ``keys`` (``:``-separated) of ``results/<source>/summary.json``, of a single
    run's ``final.json`` where ``source`` is a run's folder (a per-seed number), or of
    ``results/<source>`` itself where it names a JSON file (a benchmark's)."""
    folder = ROOT / "results" / source
    if source.endswith(".json"):
        record = folder
    else:
        record = folder / "summary.json" if (folder / "summary.json").exists() else folder / "final.json"
    value = json.loads(record.read_text())
    for key in keys.split(":"):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def quote_drift(path: Path, text: str) -> list[str]:
    """Quotes that no longer match their source, and numbers with two or more decimals that are
    neither quoted nor cited."""
    name = str(path.relative_to(ROOT))
    drift = []
    for match in QUOTE.finditer(text):
        source, keys, quoted = match.group(1), match.group(2).strip(), match.group(3)
        try:
            expected = render_quote(lookup(source, keys), _plain(quoted))
        except (OSError, KeyError, IndexError, ValueError, TypeError) as error:
            drift.append(f"{name}: {quoted!r} from {source} {keys}: {type(error).__name__} {error}")
            continue
        if expected != _plain(quoted):
            drift.append(f"{name}: {quoted!r} from {source} {keys} reads {expected!r}")
    bare = CODE.sub("", BLOCK.sub("", QUOTE.sub("", CITED.sub("", text))))
    drift += [f"{name}: {number} is neither quoted from a summary.json nor cited" for number in DECIMALS.findall(bare)]
    return drift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks from their sources")
    args = parser.parse_args(argv)
    drift, quotes, checked = [], [], 0
    for pattern in DOCUMENTS:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text()
            new = text
            for match in BLOCK.finditer(text):
                checked += 1
                expected = render(match.group(2), match.group(3), match.group(4))
                if match.group(5) != expected:
                    drift.append(f"{path.relative_to(ROOT)}: the {match.group(2)} block from {match.group(3)}")
                    new = new.replace(match.group(0), match.group(1) + expected + match.group(6))
            quotes += quote_drift(path, new)  # --write cannot fix these: a quote's text is the author's
            checked += len(QUOTE.findall(new))
            if args.write and new != text:
                path.write_text(new)
    if (drift and not args.write) or quotes:
        print("quoted numbers that do not regenerate from their source:", file=sys.stderr)
        print("  " + "\n  ".join([*([] if args.write else drift), *quotes]), file=sys.stderr)
        if drift and not args.write:
            print("`python scripts/check_results.py --write` rewrites the generated blocks", file=sys.stderr)
        return 1
    print(f"{checked} generated blocks and quoted numbers {'rewritten' if args.write else 'regenerate exactly'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
