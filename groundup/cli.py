"""The ``groundup`` command: roadmap, run, train, sample, bench (and more as they land).

Each command group lives in its own module and registers its subcommands here, so this file
stays a table of contents:
    roadmap, run            groundup.roadmap.cli
    train, sample, bench    groundup.commands
    export, import          groundup.interop.cli
"""

from __future__ import annotations

import argparse
import importlib
import sys

_GROUPS = ("groundup.roadmap.cli", "groundup.commands", "groundup.interop.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groundup",
        description="Deep learning from the ground up: train, sample, benchmark and run the roadmap "
                    "from a single neuron to a GPT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
