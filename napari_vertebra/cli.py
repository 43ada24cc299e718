"""The ``napari-vertebra`` command line.

Each area registers its own sub-commands (``napari_vertebra.commands.*``); heavy imports
(torch, napari) happen inside the commands, so ``--help`` is fast. Expected failures (bad
input files, wrong options) print one ``error:`` line and exit with status 2; set
``NAPARI_VERTEBRA_DEBUG=1`` to see the traceback. Ctrl+C (SIGINT) stops any command: it
is turned into ``KeyboardInterrupt`` even where the shell started the command with
SIGINT ignored (a background job); each command leaves its finished work and no
half-written file (README, "Stopping a command"), and the exit status is 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

#: Modules that add sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "napari_vertebra.commands.preprocess",
    "napari_vertebra.commands.annotation",
    "napari_vertebra.commands.model",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="napari-vertebra",
        description="Vertebrae on clinical CT: preprocess, annotate, train, predict, evaluate.",
    )
    from napari_vertebra import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # area not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("NAPARI_VERTEBRA_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
