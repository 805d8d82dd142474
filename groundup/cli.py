"""The ``groundup`` command: roadmap, run, train, sample, bench (and more as they land).

Each command group lives in its own module and registers its subcommands here, so this file
stays a table of contents:
    roadmap, run            groundup.roadmap.cli
    compare                 groundup.roadmap.compare
    train, sample, bench    groundup.commands
    export, import          groundup.interop.cli
    explore                 groundup.explorer.cli

Errors: bad input is one line ``groundup: error: ...`` and exit status 2; a failure while working
is one line and exit status 1; Ctrl-C is exit status 130. ``--debug`` (or the environment variable
GROUNDUP_DEBUG=1) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from groundup.cli_options import UsageError

_GROUPS = ("groundup.roadmap.cli", "groundup.roadmap.compare", "groundup.commands", "groundup.interop.cli",
           "groundup.explorer.cli")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``groundup: error: ...``) instead of the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"groundup: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="groundup",
        description="Deep learning from the ground up: train, sample, benchmark and run the roadmap "
                    "from a single neuron to a GPT.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():  # `groundup train ... --debug` works too
        if not any("--debug" in action.option_strings for action in command._actions):
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the Python traceback of an error")
    _name_the_help(parser)
    return parser


def _did_you_mean(parser: argparse.ArgumentParser, prog: str, extras: list[str]) -> str:
    """'; did you mean --model.n_layer?' for flags of ``extras`` close to one of the command ``prog``'s, else ''."""
    def find(p: argparse.ArgumentParser) -> argparse.ArgumentParser | None:
        if p.prog == prog:
            return p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    if (found := find(command)) is not None:
                        return found
        return None

    command = find(parser)
    if command is None:
        return ""
    flags = [s for action in command._actions for s in action.option_strings if s.startswith("--")]
    close = [difflib.get_close_matches(extra.split("=", 1)[0], flags, n=1, cutoff=0.75)
             for extra in extras if extra.startswith("--")]
    names = list(dict.fromkeys(match[0] for match in close if match))
    return f"; did you mean {' or '.join(names)}?" if names else ""


def _name_the_help(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command records its prog, so that an unknown flag's error names that command's --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(help_prog=command.prog)
                _name_the_help(command)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and not type(err).__module__.startswith("groundup"):
        from groundup.train.files import describe_os_error

        text = describe_os_error(err)
    elif isinstance(err, MemoryError):
        text = "out of memory"
    else:
        text = str(err) or type(err).__name__
        if type(err).__module__ == "builtins" and not isinstance(err, ValueError | KeyError | OSError):
            text = f"{type(err).__name__}: {text}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:                                   # an unknown flag: name the command whose help lists the right ones
        prog = getattr(args, "help_prog", parser.prog)
        ArgumentParser(prog=prog).error(f"unrecognized arguments: {' '.join(extras)}"
                                        f"{_did_you_mean(parser, prog, extras)}")
    debug = bool(getattr(args, "debug", False)) or os.environ.get("GROUNDUP_DEBUG", "") not in ("", "0")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("groundup: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        print(f"groundup: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            raise
        print(f"groundup: error: {_one_line(err)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
