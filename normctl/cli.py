"""The ``normctl`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="normctl", description="Weight norm control for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="AdamW vs AdamWN vs AdamC on a small GPT (1-2 min on CPU)")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps per method")
    demo.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import DemoConfig, run_demo

        overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
        if overrides.get("steps", 1) <= 0:
            parser.error("--steps must be > 0")
        run_demo(dataclasses.replace(DemoConfig(), **overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
