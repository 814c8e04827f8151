"""IPython and Jupyter: ``%load_ext mirror_py``, then ``%mirror connect deploy/api -n staging``.

The kernel's own interpreter is interposed for as long as the session is connected; ``%mirror disconnect``
puts every patched name and environment variable back exactly. ``%%mirror_local`` runs one cell locally.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

_state: dict[str, Any] = {"session": None}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="%mirror", add_help=False)
    sub = parser.add_subparsers(dest="command")
    connect = sub.add_parser("connect", add_help=False)
    connect.add_argument("target", nargs="?")
    connect.add_argument("-n", "--namespace")
    connect.add_argument("-f", "--config")
    sub.add_parser("status", add_help=False)
    sub.add_parser("disconnect", add_help=False)
    return parser


def mirror(line: str) -> None:
    """%mirror connect TARGET [-n NS] [-f CONFIG] | status | disconnect"""
    import os

    from .errors import MirrorError

    try:
        args = _parser().parse_args(shlex.split(line))
    except SystemExit:
        print("usage: %mirror connect TARGET [-n NAMESPACE] [-f CONFIG] | %mirror status | %mirror disconnect")
        return
    session = _state["session"]
    if args.command == "connect":
        if session is not None:
            print(f"mirror-py: already connected to {session.target}; %mirror disconnect first")
            return
        from .api import connect

        saved_ns = os.environ.get("MIRROR_PY_NAMESPACE")
        if args.namespace:
            os.environ["MIRROR_PY_NAMESPACE"] = args.namespace
        try:
            _state["session"] = connect(args.target, config=args.config)
        except MirrorError as exc:
            print(f"mirror-py: error: {exc}")
            return
        finally:
            if args.namespace:
                if saved_ns is None:
                    os.environ.pop("MIRROR_PY_NAMESPACE", None)
                else:
                    os.environ["MIRROR_PY_NAMESPACE"] = saved_ns
        print(f"mirror-py: connected to {_state['session'].target}")
    elif args.command == "disconnect":
        if session is None:
            print("mirror-py: not connected")
            return
        _state["session"] = None
        try:
            session.close()
        except Exception as exc:  # close() did every step it could; say what went wrong in one line
            print(f"mirror-py: error: {str(exc).removeprefix('mirror-py: ')}")
        print("mirror-py: disconnected; everything is local again")
    elif args.command == "status":
        if session is None:
            print("mirror-py: not connected")
            return
        from .session.status_text import render
        from .terminal import printable

        try:
            info = session.status()
        except MirrorError as exc:
            print(f"mirror-py: error: {exc}")
            return
        print(f"mirror-py: connected to {session.target}")
        for line in render(info):
            print(printable(line))
    else:
        print("usage: %mirror connect TARGET [-n NAMESPACE] [-f CONFIG] | %mirror status | %mirror disconnect")


def mirror_local(line: str, cell: str) -> None:
    """Runs the cell with this machine's network, DNS, files and listeners; the session stays connected, and
    what earlier cells opened (sockets, remote files) keeps the target's view."""
    from IPython import get_ipython

    from .shim.scope import local

    with local():
        get_ipython().run_cell(cell)


def load(ipython: Any) -> None:
    ipython.register_magic_function(mirror, "line", "mirror")
    ipython.register_magic_function(mirror_local, "cell", "mirror_local")


def unload(ipython: Any) -> None:
    if _state["session"] is not None:
        _state["session"].close()
        _state["session"] = None
