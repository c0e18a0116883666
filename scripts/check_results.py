"""Quoted numbers that regenerate: tables in the results' Markdown rendered from their summary.json.

A document marks a generated block with

    <!-- generated: RENDERER results/<dir>/summary.json -->
    ...
    <!-- end generated -->

``python scripts/check_results.py`` renders every block again from its source and fails, naming the
file and the block, where the text differs (a number edited by hand, or a summary.json that moved
without its README); ``--write`` rewrites the blocks. ``make check-results`` runs the check, and CI
runs ``make check-results``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["REPRODUCTION.md", "results/*/README.md", "results/*/*/README.md", "docs/guide/*.md"]
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"


def auto_target_table(summary: dict[str, Any]) -> str:
    """target="auto" against AdamW and the AdamW-measured target, one table per initialisation."""
    names = {
        "method=adamw": "AdamW (λ = 0.1)",
        "method=adamwn": "AdamWN, target AdamW's norm ratio",
        "auto_target=equilibrium": 'AdamWN, `target="auto"` (equilibrium)',
        "auto_target=inflection": 'AdamWN, `AutoTarget(rule="inflection")`',
        "method=adamcpr": "AdamCPR (pytorch-cpr, inflection-point bound)",
        "method=hyperball": "HyperBallAdamW (heavyball, norm held at init)",
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
            cells = [names.get(label, label), str(loss["n"]), f"{loss['mean']:.4f} ± {loss['std']:.4f}"]
            for key in ("minus_adamw", "minus_adamwn"):
                diff = row.get(key)
                cells.append("—" if diff is None else f"{diff['mean']:+.4f}{_ci(diff['ci95'])}")
            cells.append(f"{ratio['mean']:.3f} ± {ratio['std']:.3f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def tune_table(summary: dict[str, Any]) -> str:
    """A tuned comparison (``normctl-lab tune``): the table its command prints."""
    from normctl_lab.tune import summary_table

    return summary_table(summary)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "auto_target_table": auto_target_table,
    "tune_table": tune_table,
}


def render(renderer: str, source: str) -> str:
    if renderer not in RENDERERS:
        raise SystemExit(f"unknown renderer {renderer!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[renderer](json.loads((ROOT / source).read_text())).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks from their sources")
    args = parser.parse_args(argv)
    drift, checked = [], 0
    for pattern in DOCUMENTS:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text()
            new = text
            for match in BLOCK.finditer(text):
                checked += 1
                expected = render(match.group(2), match.group(3))
                if match.group(4) != expected:
                    drift.append(f"{path.relative_to(ROOT)}: the {match.group(2)} block from {match.group(3)}")
                    new = new.replace(match.group(0), match.group(1) + expected + match.group(5))
            if args.write and new != text:
                path.write_text(new)
    if drift and not args.write:
        print("quoted numbers that do not regenerate from their source:\n  " + "\n  ".join(drift), file=sys.stderr)
        print("run `python scripts/check_results.py --write` if the source is right", file=sys.stderr)
        return 1
    print(f"{checked} generated block(s) {'rewritten' if args.write else 'regenerate exactly'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
