"""Sub-commands of the ``napari-vertebra`` command line, one module per area.

Each module defines ``register(subparsers)``; each command sets ``func`` to a function
taking the parsed ``argparse.Namespace`` and returning an exit status. The options
several commands share come from :func:`add_common_args`; the value types below refuse
a number outside its range while the command line is parsed (argparse prints the
option, the value and the valid range, and the command exits with status 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "FractionsAction",
    "add_common_args",
    "add_fractions",
    "at_least",
    "not_negative",
    "positive",
    "probability",
]


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in 0..1 (a score, a threshold, a fraction)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a value in 0..1")
    return float(value)


def positive(text: str) -> float:
    """An argparse type: a number above 0 (a distance, a size, a scale)."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number above 0")
    return float(value)


def not_negative(text: str) -> float:
    """An argparse type: a number of 0 or more (a tolerance, a margin)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number of 0 or more")
    return float(value)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (a count)."""

    def check(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give an integer of at least {low}"
            )
        return value

    check.__name__ = f"integer >= {low}"  # how argparse names the type in messages
    return check


class FractionsAction(argparse.Action):
    """``--fractions TRAIN VAL TEST``: three values in 0..1 (the :func:`probability`
    type) that sum to 1."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        total = float(sum(values))
        if abs(total - 1.0) > 1e-3:
            shown = " + ".join(f"{v:g}" for v in values)
            parser.error(
                f"argument {option_string}: {shown} = {total:g}: the train, val and test "
                "fractions must sum to 1 (e.g. 0.7 0.15 0.15)"
            )
        setattr(namespace, self.dest, tuple(values))


def add_common_args(
    parser: argparse.ArgumentParser,
    output: str | None = None,
    *,
    min_score: str | None = None,
    device: bool = False,
) -> None:
    """Add the options the commands share: ``-o/--output DIR`` (required; ``output`` is
    its help), ``--min-score`` (a probability 0..1; ``min_score`` is its help, saying the
    default) and ``--device`` (cpu or cuda, default cpu)."""
    if output is not None:
        parser.add_argument("-o", "--output", required=True, metavar="DIR", help=output)
    if min_score is not None:
        parser.add_argument("--min-score", type=probability, metavar="P", help=min_score)
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def add_fractions(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--fractions TRAIN VAL TEST`` (default 0.7 0.15 0.15; see :class:`FractionsAction`)."""
    parser.add_argument(
        "--fractions",
        type=probability,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        action=FractionsAction,
        metavar=("TRAIN", "VAL", "TEST"),
        help=f"{help_text}, summing to 1 (default 0.7 0.15 0.15)",
    )
