"""`monoscale`: one entry point; each area registers its own subcommands.

    cache, train              sae_core/cli.py
    analyze                   sweeps/analysis_commands.py
    plan, plan-lr             sweeps/plan_commands.py
    eval                      sweeps/eval_commands.py
    submit, resume, status,   sweeps/commands.py
    ui
    demo                      sweeps/demo.py

Each area adds its parsers with `add_commands(subparsers)` (the demo: `add_command`, given
`main` to run its steps) and
imports heavy modules (torch, ray, mlflow) inside its handlers, so `monoscale --help`
stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sae_core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from sae_core import cli as core_cli
    from sweeps import analysis_commands, demo, eval_commands, plan_commands
    from sweeps import commands as sweep_cli

    parser = argparse.ArgumentParser(
        prog="monoscale",
        description="Plan sparse-autoencoder training with scaling laws.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_cli.add_commands(sub)
    sweep_cli.add_commands(sub)
    analysis_commands.add_commands(sub)
    plan_commands.add_commands(sub)
    eval_commands.add_commands(sub)
    demo.add_command(sub, run=main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"monoscale {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"monoscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
