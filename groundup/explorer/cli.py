"""``groundup explore``: serve the local web explorer on 127.0.0.1.

    groundup explore runs/gpt-baby                     one run
    groundup explore runs/a runs/b                     two runs (their curves on one chart)
    groundup explore --runs runs --port 8001 --open    every run and roadmap stage in runs/

With no RUN_DIR and no --runs it serves ./runs when there is one. The explorer has no
authentication: a --host other than the loopback prints a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from groundup.cli_options import HelpFormatter, UsageError, int_range

__all__ = ["add_parser", "register", "explore_command", "is_loopback", "ServeError"]


class ServeError(RuntimeError):
    """The server cannot start (the port is taken): exit status 1, one line."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explore`` to the ``groundup`` parser."""
    p = subparsers.add_parser(
        "explore", allow_abbrev=False, help="a local web page to look inside a trained GPT and watch it train",
        formatter_class=HelpFormatter,
        description="Serve the explorer (FastAPI + uvicorn): type text and see its tokens, the next-token "
                    "probabilities, every head's attention, head scores, the logit lens, direct logit "
                    "attribution and ablations; stream generation; follow training curves live; browse the "
                    "roadmap's stages. The API's schema is at /openapi.json, its docs at /docs.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories written by `groundup train gpt`")
    p.add_argument("--runs", metavar="DIR", default=None,
                   help="a folder of runs and roadmap stages, searched 3 levels deep and rescanned as runs appear "
                        "(default: ./runs when no RUN_DIR is given and it exists)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; the explorer has no authentication, so keep it on the loopback")
    p.add_argument("--port", type=int_range(1, 65535), default=8000, help="port to listen on")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(handler=explore_command)


register = add_parser  # the name groundup.cli calls


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Refuse, before loading anything, a port something else already listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port "
                               f"or --host") from None


def _holds_runs(path: Path) -> bool:
    """Whether ``path`` is a runs folder rather than one run: no run files of its own, runs or stages below it."""
    from groundup.explorer.runs import Registry, is_run_dir

    if is_run_dir(path):
        return False
    registry = Registry(runs_root=path)
    return bool(registry.runs() or registry.stages())


def explore_command(args: argparse.Namespace) -> int:
    """Check the arguments, build the app and serve it until Ctrl-C."""
    waiting = []
    for given in args.run_dirs:
        path = Path(given)
        if path.exists() and not path.is_dir():
            raise UsageError(f"RUN_DIR {given} is a file, not a run directory")
        if not path.is_dir():
            raise UsageError(f"RUN_DIR {given}: no such directory")
        if (path / "model.safetensors").is_file():
            continue
        if (path / "metrics.json").is_file():
            raise UsageError(f"RUN_DIR {given} is a roadmap stage's folder, not a training run: "
                             f"`groundup explore --runs {path.parent}` shows the stages and the models in them")
        if _holds_runs(path):
            raise UsageError(f"RUN_DIR {given} is a folder of runs, not a training run: "
                             f"`groundup explore --runs {given}` serves every run and stage in it")
        waiting.append(str(given))
    runs_root = args.runs
    if runs_root is not None and not Path(runs_root).is_dir():
        raise UsageError(f"--runs {runs_root}: no such directory")
    if runs_root is None and not args.run_dirs:
        if not Path("runs").is_dir():
            raise UsageError("nothing to explore: give a RUN_DIR (from `groundup train gpt --out DIR`) or --runs DIR")
        runs_root = "runs"
    if not args.host.strip():
        raise UsageError("--host is empty")
    try:
        import uvicorn

        from groundup.explorer.app import create_app
    except ModuleNotFoundError as err:
        raise UsageError(f"the explorer needs {err.name}: pip install 'groundup[explore]' "
                         f"(fastapi and uvicorn)") from None
    if not is_loopback(args.host):
        print(f"groundup: warning: the explorer has no authentication; on --host {args.host} anyone who can reach "
              f"this machine can use it and read the runs it serves", file=sys.stderr)
    for given in waiting:                          # a run being trained may not have written one yet
        print(f"groundup: warning: RUN_DIR {given} has no checkpoint (model.safetensors) yet; its model shows "
              f"once a training run writes one there", file=sys.stderr)
    _check_port(args.host, args.port)
    app = create_app(args.run_dirs, runs_root)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/"
    served = [str(d) for d in args.run_dirs] + ([f"the runs folder {runs_root}"] if runs_root else [])
    print(f"groundup explore: serving {', '.join(served)} at {url} (Ctrl-C stops it)")
    if args.open:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
