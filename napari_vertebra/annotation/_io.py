"""JSON reading and format errors shared by the annotation readers (pure Python)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

#: Problems listed in a format error's message (the rest are counted).
MAX_ERRORS = 50


class AnnotationFormatError(ValueError):
    """An annotation file is malformed; ``errors`` lists every problem found."""

    #: Format name in the message ("COCO", "VIA").
    kind = "annotation"

    def __init__(self, path: str | os.PathLike | None, errors: Sequence[str]):
        self.path = path
        self.errors = list(errors)
        shown = self.errors[:MAX_ERRORS]
        where = f"{path}: " if path is not None else ""
        text = f"{where}invalid {self.kind} file ({len(self.errors)} problem(s)):\n  "
        text += "\n  ".join(shown)
        if len(self.errors) > len(shown):
            text += f"\n  ... and {len(self.errors) - len(shown)} more"
        super().__init__(text)


def read_json(path: Path, error: type[AnnotationFormatError] | None = None) -> object:
    """The parsed JSON file at ``path``. A missing file is a ValueError; invalid JSON is
    ``error(path, [...])`` (or a ValueError without ``error``)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if error is None:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        raise error(path, [f"not valid JSON ({e})"]) from e
