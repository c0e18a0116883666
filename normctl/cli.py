"""The ``normctl`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="normctl", description="Weight norm control for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="AdamW vs AdamWN vs AdamC on a small GPT (1-2 min on CPU)")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps per method")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument(
        "--methods",
        default=None,
        help="comma-separated optimizer names, e.g. adamw,adamwn,adamc,sgd+wn,lion+wn "
        "(see normctl.available_optimizers())",
    )
    demo.add_argument("--out", default=None, help="directory for run directories and report.html")
    voronoi = commands.add_parser("voronoi", help="optimizers compared on the Voronoi task (SPEC §3)")
    voronoi.add_argument("--methods", default=None, help="comma-separated optimizer names")
    voronoi.add_argument("--steps", type=int, default=None)
    voronoi.add_argument("--seed", type=int, default=None)
    voronoi.add_argument("--out", default=None, help="directory for run directories and report.html")
    train = commands.add_parser("train", help="one run of a config into a run directory (resumable)")
    train.add_argument("config", nargs="?", help="a JSON file of RunConfig fields (defaults if omitted)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    train.add_argument("--out", required=True, help="the run directory")
    sweep = commands.add_parser("sweep", help="a grid of configs x seeds (skips finished runs, resumes others)")
    sweep.add_argument("config", nargs="?", help="a JSON file of RunConfig fields (defaults if omitted)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept field")
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    sweep.add_argument("--out", required=True, help="the sweep directory")
    sweep.add_argument("--workers", type=int, default=1, help="runs at once (one thread each; default 1)")
    repro = commands.add_parser("repro-gpt", help="seeds 001/002 on the GPT: AdamW, AdamC, AdamWN over seeds")
    repro.add_argument("--out", default="results/repro_gpt", help="the reproduction's directory")
    repro.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    repro.add_argument(
        "--scale",
        default="laptop",
        help="laptop (2 CPU cores, ~1 h), steady (AdamW vs AdamC at steady state, ~40 min), gpu (GPT-2 small)",
    )
    repro.add_argument("--ablations", action="store_true", help="also AdamWN's rate, target shape, scope, gains")
    repro.add_argument("--ablation-seeds", default=None, help="seeds of the ablations (default: --seeds)")
    repro.add_argument(
        "--budgets",
        default="",
        help="also AdamW at these multiples of the steps, e.g. 1.2,1.5: the budget matching AdamWN",
    )
    voronoi_repro = commands.add_parser("repro-voronoi", help="seed 003: decay types and ablations, lr picked on val")
    voronoi_repro.add_argument("--out", default="results/repro_voronoi", help="the reproduction's directory")
    voronoi_repro.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    voronoi_repro.add_argument(
        "--scale",
        default="laptop",
        help="laptop (lr search, decay types, λ = 0.1; ~1 h) or paper (SPEC §3's grid, AdamWN, AdamC; ~7 h)",
    )
    voronoi_repro.add_argument("--workers", type=int, default=2, help="runs at once (one thread each)")
    voronoi_repro.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    voronoi_repro.add_argument("--steps", type=int, default=None, help="fewer than the original 10 000 steps")
    report = commands.add_parser("report", help="HTML report comparing monitored run directories")
    report.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    report.add_argument("--title", default="normctl report")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import DemoConfig, run_demo

        try:
            run_demo(dataclasses.replace(DemoConfig(), **_overrides(args, parser)))
        except ValueError as error:
            parser.error(str(error))
    elif args.command == "voronoi":
        from .experiments.voronoi_runs import VoronoiRunConfig, run_voronoi

        try:
            run_voronoi(dataclasses.replace(VoronoiRunConfig(), **_overrides(args, parser)))
        except ValueError as error:
            parser.error(str(error))
    elif args.command == "train":
        from .experiments.config import RunConfig, with_overrides
        from .experiments.train import train as train_run

        try:
            cfg = RunConfig.from_file(args.config) if args.config else RunConfig()
            cfg = with_overrides(cfg, args.set)
            final = train_run(cfg, args.out)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
                print(json.dumps(final))
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
    elif args.command == "repro-gpt":
        from .experiments.repro_gpt import run_repro

        try:
            ablation_seeds = None if args.ablation_seeds is None else _seeds(args.ablation_seeds)
            run_repro(
                args.out,
                _seeds(args.seeds),
                args.scale,
                ablations=args.ablations,
                ablation_seeds=ablation_seeds,
                budgets=_factors(args.budgets),
            )
        except ValueError as error:
            parser.error(str(error))
    elif args.command == "repro-voronoi":
        from .experiments.repro_voronoi import run_repro as run_voronoi_repro

        try:
            seeds = _seeds(args.seeds)
            run_voronoi_repro(
                args.out, seeds, scale=args.scale, workers=args.workers, device=args.device, steps=args.steps
            )
        except ValueError as error:
            parser.error(str(error))
    elif args.command == "sweep":
        from .experiments.config import RunConfig, with_overrides
        from .experiments.sweep import parse_grid, run_sweep

        try:
            base = with_overrides(RunConfig.from_file(args.config) if args.config else RunConfig(), args.set)
            seeds = _seeds(args.seeds)
            run_sweep(base, parse_grid(args.grid), seeds, args.out, workers=args.workers)
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
    elif args.command == "report":
        from .report import build_report

        try:
            path = build_report(args.runs, args.output, title=args.title)
        except FileNotFoundError as error:
            parser.error(str(error))
        print(f"wrote {path}")
    return 0


def _seeds(text: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]."""
    return _comma_separated(text, int, "seeds must be comma-separated integers")


def _factors(text: str) -> list[float]:
    """``"1.5,2"`` → [1.5, 2.0]."""
    return _comma_separated(text, float, "budgets must be comma-separated numbers")


def _comma_separated(text: str, convert, requirement: str) -> list:
    """Each non-empty item of ``text`` through ``convert``; a ValueError saying ``requirement``
    (which names the argument) otherwise."""
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise ValueError(f"{requirement}, got {text!r}") from error


def _overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Config fields set on the command line (--steps, --seed, --out, --methods)."""
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("out_dir", args.out)) if v is not None}
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if overrides.get("steps", 1) <= 0:
        parser.error("--steps must be > 0")
    return overrides


if __name__ == "__main__":
    sys.exit(main())
