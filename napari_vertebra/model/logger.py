"""The trainer's one logger: each step and epoch to every place that follows a run.

:class:`TrainLogger` plays the part of the torchvision references' ``MetricLogger``: the
training loop calls :meth:`~TrainLogger.step` after every optimizer step and
:meth:`~TrainLogger.epoch` after every validated epoch, plus the run's events (setup,
start, validate, stopped, done, error), and the logger feeds

- the ``progress(fraction, message)`` callback of a Python caller (every rank);
- ``RUN/progress.jsonl`` (:mod:`napari_vertebra.model.progress`: what a front end
  follows), ``RUN/log.csv`` (one row per epoch, :data:`LOG_FIELDS`) and TensorBoard
  events in ``RUN/tensorboard`` when tensorboard is installed (rank 0);
- a tqdm bar on stderr (rank 0, ``verbose``).
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_vertebra.core.progress import ProgressCallback, report

from .progress import PROGRESS_NAME, ProgressWriter

if TYPE_CHECKING:
    from .resume import ResumeState

__all__ = ["LOG_FIELDS", "LOSS_KEYS", "TrainLogger"]

#: The loss terms of torchvision's Mask R-CNN (their sum is ``loss``).
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
#: Columns of ``RUN/log.csv``.
LOG_FIELDS = (
    "epoch",
    "step",
    "loss",
    *LOSS_KEYS,
    "lr",
    "val_box_mAP",
    "val_mask_mAP",
    "val_mask_mAP50",
    "val_id_rate",
    "val_mask_mAP_at_threshold",
    "val_localisation_mm",
    "time_s",
)


class TrainLogger:
    """Steps, epochs and events of one training process (module doc).

    ``run_dir``: the run folder this process writes (rank 0), None for the other ranks
    of a torchrun job (the progress callback only).
    """

    def __init__(
        self,
        run_dir: Path | None,
        progress: ProgressCallback | None = None,
        verbose: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.progress = progress
        self.verbose = verbose
        self.events: ProgressWriter | None = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.events = ProgressWriter(run_dir / PROGRESS_NAME)
        self.bar: Any = None
        self.board: Any = None
        self.epochs = self.steps_in_epoch = self.run_steps = 0
        self.total = 1  # the steps this process takes
        self.done = 0
        self._t0 = time.time()

    # ----------------------------------------------------------------- events
    def _emit(self, phase: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.write(phase, **fields)

    def _report(self, message: str) -> None:
        report(self.progress, self.done / self.total, message)

    def setup(self, resume: bool) -> None:
        """Loading the data and building the model."""
        self._emit("setup", message="loading the data and building the model", resume=resume)

    def start(self, state: ResumeState, epochs: int, steps_in_epoch: int, resume: bool) -> None:
        """The loop begins at ``state`` (opens the tqdm bar and TensorBoard)."""
        self.epochs, self.steps_in_epoch = epochs, steps_in_epoch
        self.run_steps = epochs * steps_in_epoch  # the whole run's, for progress.jsonl
        self.total = max(1, (epochs - state.epoch) * steps_in_epoch - state.step_in_epoch)
        if self.run_dir is not None:
            self.board = _tensorboard(self.run_dir)
            if self.verbose:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc="train", unit="step", file=sys.stderr)
        self._t0 = time.time()
        self._emit(
            "start", epoch=state.epoch, epochs=epochs, step=state.step,
            step_in_epoch=state.step_in_epoch, steps_in_epoch=steps_in_epoch,
            total_steps=self.run_steps, resume=resume,
        )  # fmt: skip

    def step(self, state: ResumeState, losses: dict[str, float], lr: float) -> None:
        """One optimizer step done (``state`` counts it already)."""
        self.done += 1
        epoch, k, loss = state.epoch + 1, state.step_in_epoch, losses["loss"]
        self._report(f"epoch {epoch}/{self.epochs} step {k}/{self.steps_in_epoch} loss {loss:.3f}")
        self._emit(
            "train", epoch=epoch, epochs=self.epochs, step=state.step, step_in_epoch=k,
            steps_in_epoch=self.steps_in_epoch, total_steps=self.run_steps, lr=lr, **losses,
        )  # fmt: skip
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
        if self.board is not None:
            for key, v in losses.items():
                self.board.add_scalar(f"train/{key}", v, state.step)
            self.board.add_scalar("train/lr", lr, state.step)

    def validating(self, state: ResumeState) -> None:
        """Validation of the epoch in progress begins."""
        self._report(f"epoch {state.epoch + 1}/{self.epochs} validating")
        self._emit("validate", epoch=state.epoch + 1, epochs=self.epochs, step=state.step)

    def epoch(
        self, epoch: int, step: int, means: dict[str, float], lr: float, metrics: dict[str, Any]
    ) -> None:
        """Epoch ``epoch`` (1-based) validated and saved: its row of log.csv, its
        ``epoch`` event (mean losses, ``lr``, the ``val_*`` metrics) and TensorBoard."""
        if self.run_dir is not None:
            row = {"epoch": epoch, "step": step, **means, "lr": lr, **metrics}
            row["time_s"] = round(time.time() - self._t0, 2)
            _append_csv(self.run_dir / "log.csv", row)
            self._emit("epoch", epochs=self.epochs, total_steps=self.run_steps, **row)
            if self.board is not None:
                for k, v in metrics.items():
                    if v is not None:
                        self.board.add_scalar(k.replace("val_", "val/"), v, epoch)
        self._report(f"epoch {epoch}/{self.epochs} done")

    def stopped(self, state: ResumeState) -> None:
        """Stopped by a request, ``last.pt`` saved."""
        msg = f"stopped in epoch {state.epoch + 1} after step {state.step_in_epoch}"
        self._report(msg)
        self._emit(
            "stopped", epoch=state.epoch + 1, epochs=self.epochs, step=state.step,
            step_in_epoch=state.step_in_epoch, message=msg,
        )  # fmt: skip

    def finished(self, state: ResumeState) -> None:
        """Every epoch done."""
        self._emit(
            "done", epoch=state.epoch, epochs=self.epochs, step=state.step, message="finished"
        )

    def error(self, error: BaseException) -> None:
        """The run ended with ``error`` (said in one plain line)."""
        self._emit("error", message=str(error).strip() or type(error).__name__,
                   kind=type(error).__name__)  # fmt: skip

    def close(self) -> None:
        """Close the tqdm bar and the TensorBoard writer."""
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter of ``RUN/tensorboard``, None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
