"""The progress protocol of a training run: ``RUN/progress.jsonl``, written and read.

The trainer (rank 0) appends one JSON object per line, flushed per step
(:class:`ProgressWriter`). Every line has ``phase``: ``setup`` (loading data, building
the model), ``start`` (the loop begins: ``epoch`` done so far, ``epochs``, ``step``,
``steps_in_epoch``, ``total_steps``, ``resume``), ``train`` (one optimizer step:
``epoch`` (1-based), ``step`` (global, 1-based), ``step_in_epoch``, ``steps_in_epoch``,
``total_steps``, ``loss`` and its terms, ``lr``), ``validate`` (validation of ``epoch``
begins), ``epoch`` (``epoch`` done: mean losses, ``lr``, the ``val_*`` metrics,
``time_s``), ``stopped``, ``done`` and ``error`` (``message``). A front end reads it
incrementally (:class:`ProgressReader`) and folds it (:class:`TrainProgress`).

Imports neither Qt nor napari nor torch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROGRESS_NAME",
    "ProgressReader",
    "ProgressWriter",
    "TrainProgress",
    "read_progress",
]

#: The progress file of a run folder.
PROGRESS_NAME = "progress.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


class ProgressWriter:
    """Appends progress events to ``RUN/progress.jsonl``, one flushed line each.

    Used by the trainer on rank 0; writing never raises (a full disk must not stop
    training): a failure is remembered in ``error`` and writing stops.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.error: OSError | None = None
        self._t0 = time.time()

    def write(self, phase: str, **fields: Any) -> None:
        """Append ``{"phase": phase, "time": seconds since start, **fields}``."""
        if self.error is not None:
            return
        event = {"phase": phase, "time": round(time.time() - self._t0, 3)}
        event.update({k: _clean(v) for k, v in fields.items()})
        line = json.dumps(event, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as e:
            self.error = e


class ProgressReader:
    """Reads the events appended to a ``progress.jsonl`` since the last call.

    A partly written last line is left for the next call; a line that is not JSON is
    skipped (counted in ``skipped``). When the file is replaced or truncated, reading
    starts again from its beginning and ``reset`` is True after that call.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self.skipped = 0
        self.reset = False
        self._ino: int | None = None

    def read(self) -> list[dict[str, Any]]:
        """The complete new lines as dicts (possibly none)."""
        self.reset = False
        data = self._new_bytes()
        end = data.rfind(b"\n")
        if end < 0:
            return []  # nothing new, or only a partial line so far
        self.offset += end + 1
        events = []
        for raw in data[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                event = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.skipped += 1
                continue
            if isinstance(event, dict) and "phase" in event:
                events.append(event)
            else:
                self.skipped += 1
        return events

    def _new_bytes(self) -> bytes:
        """The file's bytes past ``offset`` (from 0 again for a new or shorter file)."""
        try:
            st = self.path.stat()
        except OSError:
            return b""
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
            self.offset, self.reset = 0, True
        self._ino = st.st_ino
        if st.st_size == self.offset:
            return b""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return f.read(st.st_size - self.offset)
        except OSError:
            return b""


#: Keys of a ``train`` event that are not loss terms.
_STEP_KEYS = {"phase", "time", "epoch", "epochs", "step", "step_in_epoch", "steps_in_epoch",
              "total_steps", "lr"}  # fmt: skip
#: Position keys every event may carry, folded into :class:`TrainProgress`'s fields.
_POSITION_KEYS = ("epoch", "epochs", "step", "step_in_epoch", "steps_in_epoch", "total_steps")


def _is_loss(key: str) -> bool:
    return key not in _STEP_KEYS and (key == "loss" or key.startswith("loss_"))


def _append_row(
    table: dict[str, list[float]], n: int, ev: dict[str, Any], wanted: Callable[[str], bool]
) -> None:
    """Append row ``n`` (0-based) of ``ev``'s ``wanted`` keys to the columns of
    ``table``: NaN for a column the event lacks, a new column NaN-padded before it."""
    for key, v in ev.items():
        if wanted(key):
            if key not in table:
                table[key] = [math.nan] * n
            table[key].append(_num(v))
    for v in table.values():
        if len(v) < n + 1:
            v.append(math.nan)


@dataclass
class TrainProgress:
    """The state of a run folded from its progress events (:meth:`update`).

    ``steps`` and ``losses`` hold one entry per logged step (``losses[key][i]`` at global
    step ``steps[i]``); ``val_epochs``, ``val`` (the ``val_*`` metrics) and
    ``epoch_losses`` (the epoch's mean losses) one per validated epoch. After a ``start``
    event (a resume), entries past its step and epoch are dropped: a run killed after its
    last checkpoint repeats those steps.
    """

    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    step_in_epoch: int = 0
    steps_in_epoch: int = 0
    total_steps: int = 0
    message: str = ""
    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)
    epoch_losses: dict[str, list[float]] = field(default_factory=dict)

    def update(self, events: Iterable[dict[str, Any]]) -> int:
        """Fold ``events`` in; returns how many there were."""
        n = 0
        for ev in events:
            n += 1
            phase = str(ev.get("phase", ""))
            self.phase = phase
            for key in _POSITION_KEYS:
                v = ev.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    setattr(self, key, int(v))
            if phase == "start":
                self._truncate(self.step, self.epoch)
            elif phase == "train":
                self._add_step(ev)
            elif phase == "epoch":
                self._add_epoch(ev)
            self.message = str(ev.get("message") or "")
        return n

    def _truncate(self, step: int, epoch: int) -> None:
        keep = sum(s <= step for s in self.steps)
        del self.steps[keep:], self.lr[keep:]
        for v in self.losses.values():
            del v[keep:]
        keep = sum(e <= epoch for e in self.val_epochs)
        del self.val_epochs[keep:]
        for v in (*self.val.values(), *self.epoch_losses.values()):
            del v[keep:]

    def _add_step(self, ev: dict[str, Any]) -> None:
        n = len(self.steps)
        self.steps.append(int(ev.get("step", n + 1)))
        self.lr.append(_num(ev.get("lr")))
        _append_row(self.losses, n, ev, _is_loss)

    def _add_epoch(self, ev: dict[str, Any]) -> None:
        n = len(self.val_epochs)
        self.val_epochs.append(int(ev.get("epoch", n + 1)))
        _append_row(self.val, n, ev, lambda key: key.startswith("val_"))
        _append_row(self.epoch_losses, n, ev, _is_loss)

    @property
    def completed_epochs(self) -> int:
        """The last epoch with an ``epoch`` event (0 before the first)."""
        return max(self.val_epochs, default=0)

    @property
    def fraction(self) -> float:
        """Steps done of the whole run (0..1); 0 before the first ``start`` event."""
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, max(0.0, self.step / self.total_steps))

    def describe(self) -> str:
        """One line for a status or a progress bar, e.g. 'epoch 2/24, step 13/40'."""
        ep = f"epoch {max(self.epoch, 1)}/{self.epochs}" if self.epochs else ""
        if self.phase == "setup":
            return self.message or "loading the data and the model"
        if self.phase == "start":
            first = f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}: " if ep else ""
            return f"{first}first step…"
        if self.phase == "train":
            text = f"{ep}, step {self.step_in_epoch}/{self.steps_in_epoch}"
            if self.losses.get("loss"):
                loss = self.losses["loss"][-1]
                if math.isfinite(loss):
                    text += f", loss {loss:.3f}"
            return text
        if self.phase == "validate":
            return f"{ep}: validating"
        if self.phase == "epoch":
            return f"{ep} done"
        return self.message or self.phase

    def step_epochs(self) -> np.ndarray:
        """The logged steps on an epoch axis (step 10 of 20-step epochs: 0.5)."""
        per = max(self.steps_in_epoch, 1)
        return np.asarray(self.steps, float) / per


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def read_progress(path: str | os.PathLike) -> TrainProgress:
    """The whole ``progress.jsonl`` of a run, folded."""
    state = TrainProgress()
    state.update(ProgressReader(path).read())
    return state
