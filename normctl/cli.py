"""The ``normctl`` command line: the report over monitored run directories, and ``doctor``
(what decay did to those runs; alone, the kernels this machine's steps take).

Training runs, sweeps, the demo and the reproductions are the lab's (``normctl-lab``, the
``lab/`` package of this repository); asked for here, they say where they went.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

LAB_COMMANDS = ("demo", "voronoi", "train", "sweep", "repro-gpt", "repro-voronoi")


def report(args: argparse.Namespace) -> None:
    from .report import build_report

    print(f"wrote {build_report(args.runs, args.output, title=args.title, interactive=args.interactive)}")


def doctor(args: argparse.Namespace) -> None:
    if not args.runs:
        from .doctor import report

        print(report())
        return
    from .report.runs import load_run
    from .verdict import diagnose

    for path in args.runs:
        run = load_run(path)
        print(f"== {run.path} ({run.status}, last measured step {run.records[-1]['step'] if run.records else 0})")
        print(diagnose(run))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normctl", description="Weight norm control for PyTorch.")
    parser.add_argument("--version", action="version", version=f"normctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("report", help="HTML report comparing monitored run directories")
    p.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    p.add_argument("--title", default="normctl report")
    p.add_argument(
        "--interactive", action="store_true", help="zoomable plotly charts (pip install 'normctl[interactive]')"
    )
    p.set_defaults(handler=report)
    p = commands.add_parser(
        "doctor",
        help="what weight decay did to monitored runs (given their directories), or, alone, which kernel each "
        "optimizer's step takes on this machine",
    )
    p.add_argument("runs", nargs="*", help="run directories holding metrics.jsonl")
    p.set_defaults(handler=doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] in LAB_COMMANDS:
        parser.error(
            f"'{argv[0]}' is a command of the experiment lab: run `normctl-lab {argv[0]} …` "
            "(installed by `make install`, or `pip install ./lab` from the repository)"
        )
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError, ImportError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
