"""Sub-commands of the ``napari-vertebra`` command line, one module per area.

Each module defines ``register(subparsers)``; each command sets ``func`` to a function
taking the parsed ``argparse.Namespace`` and returning an exit status. The options
several commands share come from :func:`add_common_args`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_common_args"]


def add_common_args(
    parser: argparse.ArgumentParser,
    output: str | None = None,
    *,
    min_score: str | None = None,
    device: bool = False,
) -> None:
    """Add the options the commands share: ``-o/--output DIR`` (required; ``output`` is
    its help), ``--min-score`` (a float; ``min_score`` is its help, saying the default)
    and ``--device`` (cpu or cuda, default cpu)."""
    if output is not None:
        parser.add_argument("-o", "--output", required=True, metavar="DIR", help=output)
    if min_score is not None:
        parser.add_argument("--min-score", type=float, help=min_score)
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
