"""The ``normctl-lab`` command line: the demo, training runs, sweeps and the papers' reproductions.

Each command is one small function that receives the parsed arguments; ``main`` only builds
the parser and turns a ``ValueError`` (bad input, named by the code that found it) into
argparse's usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo

    run_demo(dataclasses.replace(DemoConfig(), **_overrides(args)))


def voronoi(args: argparse.Namespace) -> None:
    from .voronoi_runs import VoronoiRunConfig, run_voronoi

    run_voronoi(dataclasses.replace(VoronoiRunConfig(), **_overrides(args)))


def train(args: argparse.Namespace) -> int:
    from .config import RunConfig, with_overrides
    from .rundir import strict_json
    from .train import train as train_run

    cfg = with_overrides(RunConfig.from_file(args.config) if args.config else RunConfig(), args.set)
    final = train_run(cfg, args.out, restart=args.restart, restart_unsaved=args.restart_unsaved)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        print(strict_json(final))
    return EXIT_DIVERGED if final["status"] == "diverged" else 0


def sweep(args: argparse.Namespace) -> None:
    from .config import RunConfig, with_overrides
    from .sweep import parse_grid, run_sweep

    base = with_overrides(RunConfig.from_file(args.config) if args.config else RunConfig(), args.set)
    run_sweep(base, parse_grid(args.grid), _seeds(args.seeds), args.out, **_launch(args))


def tune(args: argparse.Namespace) -> None:
    from .config import RunConfig, with_overrides
    from .tune import GPU_SCALE, run_tune

    configured = RunConfig.from_file(args.config) if args.config else RunConfig()
    base = with_overrides(configured, args.set)
    if args.scale == "gpu":  # the task's GPU size, then --set again: what the user set wins
        base = with_overrides(configured, [*GPU_SCALE[base.task], *args.set])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_tune(
        base,
        methods,
        args.out,
        budget=args.budget,
        seeds=None if args.seeds is None else _seeds(args.seeds),
        search_seeds=_seeds(args.search_seeds),
        reference=args.reference,
        also_against=[m.strip() for m in args.also_against.split(",") if m.strip()] if args.also_against else None,
        knobs=[k.strip() for k in args.knobs.split(",") if k.strip()] if args.knobs else None,
        ranges=dict(_range(r) for r in args.range) or None,
        dry_run=args.dry_run,
        **_launch(args),
    )


def _range(text: str) -> tuple[str, tuple[float, float]]:
    """``FIELD=LOW:HIGH`` as (field, (low, high))."""
    field, _, bounds = text.partition("=")
    low, _, high = bounds.partition(":")
    try:
        return field.strip(), (float(low), float(high))
    except ValueError:
        raise ValueError(f"--range takes FIELD=LOW:HIGH (e.g. lr=1e-3:3e-2), got {text!r}") from None


def repro_gpt(args: argparse.Namespace) -> None:
    from .repro_gpt import run_repro

    ablation_seeds = None if args.ablation_seeds is None else _seeds(args.ablation_seeds)
    run_repro(
        args.out,
        _seeds(args.seeds),
        args.scale,
        ablations=args.ablations,
        ablation_seeds=ablation_seeds,
        budgets=_factors(args.budgets),
    )


def repro_voronoi(args: argparse.Namespace) -> None:
    from .repro_voronoi import run_repro

    run_repro(
        args.out, _seeds(args.seeds), scale=args.scale, workers=args.workers, device=args.device, steps=args.steps
    )


def repro_auto(args: argparse.Namespace) -> None:
    from .repro_auto import run_repro

    inits = tuple(i.strip() for i in args.inits.split(",") if i.strip())
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    run_repro(args.out, _seeds(args.seeds), inits=inits, peer_methods=peers, workers=args.workers)


def plain_call(args: argparse.Namespace) -> None:
    from .plain_call import run_plain_call

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    run_plain_call(args.out, _seeds(args.seeds), tasks=tasks, workers=args.workers)


def forecast_accuracy(args: argparse.Namespace) -> None:
    from .forecast_accuracy import run_forecast_accuracy

    run_forecast_accuracy(args.results, args.out, at=args.at)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normctl-lab", description="Experiments with normctl: the demo, runs, sweeps and reproductions."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo", help="AdamW, AdamWN and AdamC on a small GPT, 3 seeds (~3 min on 2 CPU cores)")
    _add_small_run_arguments(p)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.set_defaults(handler=demo)

    p = commands.add_parser("voronoi", help="optimizers compared on the Voronoi task of Yu (2022)")
    _add_small_run_arguments(p)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(handler=voronoi)

    p = _config_command(commands, "train", "one run of a config into a run directory (resumable)")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument(
        "--restart", action="store_true", help="train from step 0, deleting the directory's metrics and checkpoints"
    )
    p.add_argument(
        "--restart-unsaved",
        action="store_true",
        help="train from step 0 a run of this same config that stopped before its first checkpoint "
        "(what sweep and tune do with their own runs); any other earlier run is still refused",
    )
    p.set_defaults(handler=train)

    p = _config_command(commands, "sweep", "a grid of configs x seeds (skips finished runs, resumes others)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept field")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", required=True, help="the sweep directory")
    p.add_argument("--workers", type=int, default=1, help="runs at once (one thread each; default 1)")
    _add_executor_arguments(p)
    p.set_defaults(handler=sweep)

    p = _config_command(
        commands, "tune", "each method tuned with the same budget, selected on validation, reported on test"
    )
    from .search_spaces import SEARCH_SPACES

    spaces = ", ".join(SEARCH_SPACES)
    p.add_argument(
        "--methods",
        required=True,
        help=f"comma-separated, some of {spaces}; +KEY=VALUE after one fixes a field (adamw+decay=min)",
    )
    p.add_argument("--budget", type=int, default=8, help="configurations searched per method (default 8)")
    p.add_argument(
        "--seeds",
        default=None,
        help="seeds of the selected configurations, disjoint from the search seeds (default: the first three "
        "not searched, 1,2,3; 5 on close calls)",
    )
    p.add_argument(
        "--search-seeds",
        default="0",
        help="the seeds every searched configuration trains on, its score their mean (default 0)",
    )
    p.add_argument("--reference", default=None, help="the method paired differences are taken against (the first)")
    p.add_argument(
        "--also-against", default=None, help="comma-separated methods to take paired differences against as well"
    )
    p.add_argument(
        "--knobs",
        default=None,
        help="search only these fields of each method's space, e.g. lr (the others stay at the config's values)",
    )
    p.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="FIELD=LOW:HIGH",
        help="search a knob over these absolute bounds instead of its own (e.g. lr=1e-3:3e-2; repeatable)",
    )
    p.add_argument(
        "--scale",
        choices=("config", "gpu"),
        default="config",
        help="config: the sizes the config and --set give; gpu: the task at one GPU's size (GPT-2 small's "
        "shape, ResNet-20, the Voronoi study's net) with device=cuda, --set applied after",
    )
    p.add_argument("--out", required=True, help="the tuning's directory")
    p.add_argument("--workers", type=int, default=1, help="runs at once (one thread each; default 1)")
    p.add_argument(
        "--dry-run", action="store_true", help="print every configuration and the number of runs; train nothing"
    )
    _add_executor_arguments(p)
    p.set_defaults(handler=tune)

    p = commands.add_parser(
        "repro-gpt", help="Loshchilov (2023) and Defazio (2025) on the GPT: AdamW, AdamC, AdamWN over seeds"
    )
    p.add_argument("--out", default="results/repro_gpt", help="the reproduction's directory")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument(
        "--scale",
        default="laptop",
        help="laptop (2 CPU cores, ~1 h), steady (AdamW vs AdamC at steady state, ~40 min), gpu (GPT-2 small)",
    )
    p.add_argument("--ablations", action="store_true", help="also AdamWN's rate, target shape, scope, gains")
    p.add_argument("--ablation-seeds", default=None, help="seeds of the ablations (default: --seeds)")
    p.add_argument(
        "--budgets",
        default="",
        help="also AdamW at these multiples of the steps, e.g. 1.2,1.5: the budget matching AdamWN",
    )
    p.set_defaults(handler=repro_gpt)

    p = commands.add_parser(
        "repro-voronoi", help="Yu (2022): decay types and ablations on the Voronoi task, lr picked on validation"
    )
    p.add_argument("--out", default="results/repro_voronoi", help="the reproduction's directory")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument(
        "--scale",
        default="laptop",
        help="laptop (lr search, decay types, λ = 0.1; ~1 h) or paper (the study's whole grid, AdamWN, AdamC; ~7 h)",
    )
    p.add_argument("--workers", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--steps", type=int, default=None, help="fewer than the original 10 000 steps")
    p.set_defaults(handler=repro_voronoi)

    p = commands.add_parser(
        "repro-auto", help="AdamWN with target='auto' against AdamW and the AdamW-measured target, on the GPT"
    )
    p.add_argument("--out", default="results/auto_target", help="the comparison's directory")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--inits", default="gpt2,torch", help="the GPT's initialisations: gpt2 (nanoGPT), torch (defaults)")
    p.add_argument("--peers", default="adamcpr,hyperball", help="peer methods to train beside them ('' for none)")
    p.add_argument("--workers", type=int, default=2, help="runs at once (one thread each)")
    p.set_defaults(handler=repro_auto)

    p = commands.add_parser(
        "plain-call", help="each optimizer over model.parameters() with its defaults against AdamW's / SGD's, untuned"
    )
    p.add_argument("--out", default="results/plain_call", help="the comparison's directory")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--tasks", default=None, help="comma-separated, some of torchlm,gpt,fmnist,voronoi (default all)")
    p.add_argument("--workers", type=int, default=2, help="runs at once (one thread each)")
    p.set_defaults(handler=plain_call)

    p = commands.add_parser(
        "forecast-accuracy", help="NormMonitor.forecast at 10 %% of every committed run against the norm it reached"
    )
    p.add_argument("--results", default="results", help="the folder whose finished runs are the test cases")
    p.add_argument("--out", default="results/doctor", help="where summary.json goes")
    p.add_argument("--at", type=float, default=0.1, help="the fraction of each run the forecast sees (default 0.1)")
    p.set_defaults(handler=forecast_accuracy)
    return parser


EXIT_DIVERGED = 3  # a training run stopped on a non-finite loss (final.json says so)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .lock import RunDirectoryBusy
    from .train import RunInterrupted
    from .workers import terminate_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():  # kill (SIGTERM) stops a run or a sweep as Ctrl-C does
            return args.handler(args) or 0
    except (ValueError, FileNotFoundError) as error:  # bad input: usage and the message
        parser.error(str(error))
    except (CheckpointError, RunDirectoryBusy) as error:  # the directory's state: the message alone
        print(f"normctl-lab {args.command}: {error}", file=sys.stderr)
        return 1
    except (RunInterrupted, KeyboardInterrupt) as error:
        print(f"normctl-lab {args.command}: {str(error) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _add_small_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated optimizer names, e.g. adamw,adamwn,adamc,sgd+wn,lion+wn "
        "(see normctl.available_optimizers())",
    )
    p.add_argument("--out", default=None, help="directory for run directories and report.html")


def _config_command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """A command that takes a RunConfig (a JSON file and --set overrides); its help lists the fields."""
    from .config import field_help

    p = commands.add_parser(
        name, help=summary, epilog=field_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", help="a JSON file of RunConfig fields (defaults if omitted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    return p


def _add_executor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "submitit"],
        help="local: --workers processes here; submitit: one cluster job per run (Slurm, or cluster=local)",
    )
    p.add_argument(
        "--executor-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit parameter, e.g. slurm_partition=gpu, timeout_min=120, cluster=local",
    )


def _launch(args: argparse.Namespace) -> dict:
    """Where the runs train: --workers, --executor and its options."""
    from .cluster import parse_options

    return dict(workers=args.workers, executor=args.executor, executor_options=parse_options(args.executor_option))


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


def _overrides(args: argparse.Namespace) -> dict:
    """Config fields set on the command line (--steps, --seed or --seeds, --out, --methods)."""
    given = (("steps", args.steps), ("seed", getattr(args, "seed", None)), ("out_dir", args.out))
    overrides = {k: v for k, v in given if v is not None}
    if getattr(args, "seeds", None):
        overrides["seeds"] = tuple(_seeds(args.seeds))
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if overrides.get("steps", 1) <= 0:
        raise ValueError("--steps must be > 0")
    return overrides


if __name__ == "__main__":
    sys.exit(main())
