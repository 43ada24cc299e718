"""The "Train model" widget: start, follow, stop and resume ``napari-vertebra train``.

A thin view over :class:`napari_vertebra.model.run.TrainingRun` (Qt-free): training runs
in a separate, detached process, the same code as the command line, which writes
``RUN/progress.jsonl`` (one JSON line per step and per epoch); a QTimer polls the run and
shows the current phase in the progress bar (the project's export, then the training
steps), the loss per step and the validation metrics per epoch in the plot. Stop writes
``RUN/STOP`` (the trainer saves a resumable ``last.pt`` and exits); Resume starts it again
with ``--resume``. Closing napari does not stop the process: reopen the folder with
"Load run" to follow it. Every error is a napari notification in plain words.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Label
from qtpy.QtCore import QTimer, Signal

from napari_vertebra.annotation.dataset import (
    check_dataset,
    export_project_dataset,
    validation_note,
)
from napari_vertebra.model.run import RunError, TrainingRun, level_check, open_run

from ._base import VertebraWidget
from ._status import notify
from ._train_checkpoints import CheckpointsMixin
from ._train_form import SOURCE_PROJECT, TrainForm
from ._train_job import ClusterJobMixin
from ._train_plot import LossPlot, plot_data

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import subprocess

    import napari.viewer

    from napari_vertebra.model.config import TrainConfig

__all__ = ["TrainWidget"]

_FINE_TUNE_TIP = (
    "Train the model Predict uses (the shipped starter model by default) further on the\n"
    "polygons of the open project (accepted and fixed predictions, drawn ones, Labels\n"
    "from 3D), mixed with the starter's real MIPs, in the run folder: a short run at a\n"
    "lower learning rate. Then 'Use for prediction' and predict again."
)
_CLOSE_TIP = (
    "Training runs in its own detached process: closing napari does not stop it. It\n"
    "writes RUN/last.pt atomically after every epoch (and best.pt); reopen the run\n"
    "folder with 'Load run' to follow it, stop it or use its checkpoints."
)
#: Form fields the widget also keeps as its own attributes (tests set their values).
_FIELDS = ("source", "data_dir", "preset", "config_file", "backbone", "class_set", "epochs",
           "lr", "batch_size", "device", "weights", "run_folder")  # fmt: skip


class TrainWidget(CheckpointsMixin, ClusterJobMixin, VertebraWidget):
    """Train the Mask R-CNN on a COCO split folder or on the open annotation project.

    Children are attributes (the form's fields, the buttons, ``plot``, ``checkpoint``)
    and handlers are methods (:meth:`start`, :meth:`stop`, :meth:`resume`,
    :meth:`load_run`, :meth:`write_job`, :meth:`use_checkpoint`), so tests drive it
    directly. ``config_overrides`` (configuration keys) is applied after the fields;
    ``run`` is the :class:`~napari_vertebra.model.run.TrainingRun` shown (or None).
    """

    #: Emitted with the exit status when a followed training process ends.
    finished = Signal(int)
    #: Emitted with the number of validated epochs when an epoch of the run ends.
    epochs_updated = Signal(int)

    def __init__(self, viewer: napari.viewer.Viewer, parent: Any = None) -> None:
        super().__init__(viewer, parent)
        self.form = TrainForm(on_error=self._message)
        for name in _FIELDS:
            setattr(self, name, getattr(self.form, name))
        self.run: TrainingRun | None = None
        self._epochs_shown = 0  # validated epochs of the run shown, for epochs_updated
        self._gpu_probe: Any = None  # a model.run.GpuProbe once asked
        self.add_form(*self.form.fields)
        self.start_button = self.button("Start", self.start, _CLOSE_TIP)
        self.stop_button = self.button(
            "Stop",
            self.stop,
            "Stop after the current step or validation image, saving\na resumable RUN/last.pt",
        )
        self.resume_button = self.button(
            "Resume", self.resume, "Continue the run folder's training from RUN/last.pt"
        )
        self.add_buttons(self.start_button, self.stop_button, self.resume_button)
        self.load_button = self.button(
            "Load run…", self._browse_load_run, "Show a run folder's curves and checkpoints"
        )
        self.cluster_button = self.button(
            "Write cluster job", self.write_job,
            "Write the dataset, RUN/job_config.yaml, a torchrun command (RUN/run.sh)\n"
            "and a Slurm script (RUN/job.sbatch); copy the run folder to a GPU machine.",
        )  # fmt: skip
        self.add_buttons(self.load_button, self.cluster_button)
        self.fine_tune_button = self.button(
            "Fine-tune on this project", self.fine_tune, _FINE_TUNE_TIP
        )
        self.add_buttons(self.fine_tune_button)
        self.gpu_label = Label(value="")
        self.gpu_label.native.setWordWrap(True)
        self.gpu_label.visible = False
        self.add(self.gpu_label)
        self.plot = LossPlot()
        self.add(self.plot, stretch=1)
        self.checkpoint = ComboBox(label="checkpoint", choices=[])
        self.checkpoint.tooltip = "Checkpoints of the run folder (best.pt first)"
        self.add_form(self.checkpoint)
        self.use_button = self.button(
            "Use for prediction", self.use_checkpoint,
            "Predict with this checkpoint in 'Predict vertebrae'",
        )  # fmt: skip
        self.add_buttons(self.use_button)
        self.progress_bar.visible = True
        self.add_status()
        self.status.set("Ready", "info")

        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._poll)
        self._gpu_timer = QTimer(self)
        self._gpu_timer.setInterval(300)
        self._gpu_timer.timeout.connect(self._check_gpu_probe)
        self.form.fill_from_config()
        self._update_buttons()
        self.probe_gpu()

    # ----------------------------------------------------------------- state
    @property
    def config_overrides(self) -> dict[str, Any]:
        """Configuration keys applied after the form's fields."""
        return self.form.overrides

    @config_overrides.setter
    def config_overrides(self, value: dict[str, Any]) -> None:
        self.form.overrides = dict(value)

    @property
    def running(self) -> bool:
        """True while a training process started (or followed) here runs."""
        return self.run is not None and self.run.running

    @property
    def process(self) -> subprocess.Popen | None:
        """The training process started here (None for a followed or no run)."""
        return self.run.process if self.run is not None else None

    @property
    def run_dir(self) -> Path | None:
        """The run folder shown (None before a run was started or loaded)."""
        return self.run.run_dir if self.run is not None else None

    def config(self) -> TrainConfig:
        """The configuration of the next run: file, then the fields, then overrides."""
        return self.form.config()

    def _message(self, message: str, level: str = "error") -> None:
        """Status line and napari notification (levels error, warning, info)."""
        if level == "error":
            self.fail(message)
            return
        self.status.set(message, level)
        notify(message, level)

    # ----------------------------------------------------------------- run control
    def start(self, resume: bool = False) -> bool:
        """Start training (a new run, or with ``resume`` the run folder's last.pt).

        Returns False (reason in a notification and the status line) when it cannot
        start; with the open project as dataset, the process starts after the export.
        """
        verb = "resume" if resume else "start"
        if self.running:
            self._message("Train: a training run is already going; stop it first", "warning")
            return False
        if self.runner.busy:
            self._message(_BUSY.format(what="Train"), "warning")
            return False
        try:
            run_dir = TrainingRun.check_start(self.form.run_path(), resume)
            shown = self.run
            if resume and shown is not None and shown.run_dir == run_dir:
                if shown.is_unreadable(run_dir / "last.pt"):
                    raise RunError(shown.unreadable_note())
            cfg = self.config()
            data, project = self._data_source()
            run_dir.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as e:
            self._message(f"Train: cannot {verb}: {e}")
            return False
        if project is None:
            # whether the process was started (a short run may have ended already)
            return self._launch(run_dir, cfg, data, resume)
        self._export(project, run_dir, lambda out: self._launch(run_dir, cfg, out, resume))
        return True

    def _data_source(self) -> tuple[Path | None, Any]:
        """(the COCO folder, None) or (None, the open project); RunError when neither."""
        if self.source.value != SOURCE_PROJECT:
            return check_dataset(self.data_dir.value), None
        project = self.session.project
        if project is None:
            raise RunError(
                "no annotation project is open: open one in 'Annotate vertebrae', or train "
                "on a COCO dataset folder"
            )
        return None, project

    def _export(self, project: Any, run_dir: Path, then: Callable[[Path], None]) -> None:
        """Export ``project`` into ``run_dir/dataset`` on a worker thread, then ``then``."""
        out = run_dir / "dataset"

        def done(notes: list[str]) -> None:
            if notes:
                self._message("Train: " + "; ".join(notes), "warning")
            then(out)

        self.progress_bar.native.setFormat("%p% · exporting the project")
        self.runner.start(
            partial(export_project_dataset, project, out),
            on_done=done,
            on_error=lambda e: self._message(f"Train: cannot export the project: {e}"),
            description="Exporting the project",
        )

    def _launch(
        self, run_dir: Path, cfg: TrainConfig, data: Path, resume: bool,
        follow_classes: bool = True,
    ) -> bool:  # fmt: skip
        """Start the trainer process on ``data``; False (said) when it was not started.
        ``follow_classes``: the config came from the form, whose class set must fit
        the data's levels."""
        need = self.form.follow_data(data) if follow_classes and not resume else None
        if need is not None:  # the config was made with the field's old class set
            self._message(
                f"Train: the dataset's labels hold levels outside the {cfg.class_set} class "
                f"set (C7, T13, L6 or the sacrum); classes set to '{need}': press Start again"
            )
            return False
        note = validation_note(data)
        if note:
            self._message(f"Train: {note}", "warning")
        run = TrainingRun(run_dir)
        try:
            run.launch(cfg.to_yaml(), data, resume, self.device.value)
        except OSError as e:
            self._message(f"Train: cannot start the training process: {e}")
            return False
        self.run, self._epochs_shown = run, 0
        self.progress_bar.value = 0
        self.progress_bar.native.setFormat("%p% · starting: loading the data and the model")
        self.plot.draw(plot_data(run.progress))
        verb = "resuming" if resume else "starting"
        self.status.set(f"{verb} training in {run_dir}", "busy")
        self._timer.start()
        self._update_buttons()
        return True

    def resume(self) -> bool:
        """Continue the run folder's training from its last.pt (``--resume``)."""
        return self.start(resume=True)

    def fine_tune(self, checkpoint: str | os.PathLike | None = None) -> bool:
        """Fine-tune a model on the open annotation project in a new run folder: the
        checkpoint Predict uses (else the shipped starter model), its own configuration
        with a short schedule (model.starter.FINE_TUNE), the project's polygons with the
        starter's real MIPs mixed in. False (said) when it cannot start."""
        from napari_vertebra.model.starter import prepare_fine_tune, starter_checkpoint

        ckpt = checkpoint or self.session.checkpoint or starter_checkpoint()
        project = self.session.project
        problem = (
            "a training run is already going; stop it first" if self.running
            else "no model to start from: predict with a checkpoint first" if ckpt is None
            else "no annotation project is open: open one in 'Annotate vertebrae'"
            if project is None else ""
        )  # fmt: skip
        if problem or self.runner.busy:
            self._message(f"Train: cannot fine-tune: {problem or _BUSY.format(what='Train')}")
            return False
        try:
            run_dir = TrainingRun.check_start(self.form.run_path(), False)
            run_dir.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as e:
            self._message(f"Train: cannot fine-tune: {e}")
            return False

        def done(out: tuple[TrainConfig, Path, list[str]]) -> None:
            cfg, data, notes = out
            if self._launch(run_dir, cfg, data, False, follow_classes=False):
                self.status.set(f"fine-tuning in {run_dir}: " + "; ".join(notes), "busy")

        self.progress_bar.native.setFormat("%p% · preparing the fine-tuning data")
        return self.runner.start(
            partial(prepare_fine_tune, project, run_dir / "dataset", str(ckpt)),
            on_done=done,
            on_error=lambda e: self._message(f"Train: cannot fine-tune: {e}"),
            description="Preparing the fine-tuning data",
        )

    def stop(self) -> None:
        """Ask the run to stop: it saves a resumable last.pt and exits.

        Pressed again while it is still stopping, it interrupts the process (SIGINT).
        """
        answer = self.run.stop() if self.run is not None else "not running"
        if answer == "requested":
            self.status.set(
                "stopping after the current step or validation image (saving last.pt)…",
                "busy",
            )
        elif answer == "interrupted":
            self.status.set("interrupting the training process…", "warning")
        else:
            self._message("Train: no training is running", "warning")
        self._update_buttons()

    def _browse_load_run(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        d = QFileDialog.getExistingDirectory(self, "Load a run folder")
        if d:
            self.load_run(d)

    def load_run(self, run_dir: str | os.PathLike) -> bool:
        """Show a run folder's curves and checkpoints (and follow it while it runs).

        The folder is read on a worker thread (a long run's progress.jsonl takes
        seconds); returns whether reading started.
        """
        if self.running:
            self._message("Load run: a training run is going; stop it first", "warning")
            return False
        if self.runner.busy:
            self._message(_BUSY.format(what="Load run"), "warning")
            return False
        self.progress_bar.native.setFormat("%p% · reading the run folder")
        return self.runner.start(
            partial(open_run, run_dir),
            on_done=self._show_loaded_run,
            on_error=lambda e: self._message(f"Load run: {e}"),
            description="Reading the run folder",
            pass_progress=False,
        )

    def _show_loaded_run(self, loaded: tuple[TrainingRun, dict[str, Any], str]) -> None:
        run, cfg, cfg_error = loaded
        if self.running:  # a run started meanwhile is the one shown
            return
        self.run, self._epochs_shown = run, 0
        self.run_folder.value = str(run.run_dir)
        if cfg_error:
            self._message(f"Load run: {cfg_error}", "warning")
        if cfg:
            self.form.show_run_config(cfg, run.run_dir / "config.yaml")
        self._show_progress(draw=True)
        self._refresh_checkpoints()
        if run.running:
            self.status.set(f"following the training running in {run.run_dir}", "busy")
            self._timer.start()
        elif run.progress.phase == "error":
            self._message(f"Load run: its last start failed: {run.progress.message}", "warning")
        else:
            n, ckpts = run.progress.completed_epochs, len(self.checkpoint.choices)
            note, warning = level_check(run.progress)
            damaged = run.unreadable_note()
            self.status.set(
                f"loaded {run.run_dir.name}: {n} epoch(s), {ckpts} usable checkpoint(s)"
                + (f"; {damaged}" if damaged else "")
                + (f"; {note}" if note else ""),
                "warning" if warning or damaged else "ok",  # the facts stay in view
            )
            if warning:
                notify(f"Load run: {warning}", "warning")
        if run.unreadable:
            notify(f"Load run: {run.unreadable_note()}", "warning")
        self._update_buttons()

    # ----------------------------------------------------------------- following
    def _poll(self) -> None:
        run = self.run
        if run is None:
            self._timer.stop()
            return
        outcome = run.poll()
        self._show_progress()
        if outcome is None:
            if run.running:
                return
            self._timer.stop()
            return
        self._timer.stop()
        self._refresh_checkpoints()
        if outcome.kind == "failed":
            self._message(outcome.message)
        elif outcome.kind == "stopped":
            self._message(outcome.message, "info")
            self.status.set(outcome.message, "ok")
        else:
            self.progress_bar.value = 100
            self.progress_bar.native.setFormat("%p% · " + outcome.message)
            self._message(outcome.message, "info")
            self.status.set(outcome.message, "warning" if outcome.warning else "ok")
            if outcome.warning:
                notify(f"Train: {outcome.warning}", "warning")
        self._update_buttons()
        rc = outcome.returncode
        self.finished.emit(int(rc) if rc is not None else int(outcome.kind == "failed"))

    def _show_progress(self, draw: bool = False) -> None:
        """The progress bar, status and plot from the run's progress events."""
        run = self.run
        if run is None:
            return
        p = run.progress
        if p.total_steps:
            pct = round(100 * p.fraction)
            text = p.describe()
        else:  # no start event (a run not started, or its epochs only): its epochs
            target = int(self.epochs.value or 0)
            done = p.completed_epochs
            pct = round(100 * min(1.0, done / target)) if target else 0
            text = p.describe() if p.phase else f"{done} epoch(s) logged"
        if run.running:
            pct = min(pct, 99)  # 100 % is the end of the run, not its last step
            if not run.stop_requested and p.phase:
                self.status.set(f"training: {text}", "busy")
        self.progress_bar.value = pct
        self.progress_bar.native.setFormat(f"%p% · {text}")
        if draw or run.new_events:
            self.plot.draw(plot_data(p))
            self._refresh_checkpoints()  # last.pt / best.pt after each epoch
        if p.completed_epochs != self._epochs_shown:
            self._epochs_shown = p.completed_epochs
            self.epochs_updated.emit(p.completed_epochs)

    # ----------------------------------------------------------------- helpers
    def _update_buttons(self) -> None:
        running = self.running
        self.start_button.enabled = not running
        self.resume_button.enabled = not running
        self.stop_button.enabled = running
        self.load_button.enabled = not running
        self.cluster_button.enabled = not running
        self.fine_tune_button.enabled = not running
        self.use_button.enabled = bool(self.checkpoint.choices)

    def close_widget(self) -> None:
        """Stop polling (the training process goes on) and disconnect from the viewer."""
        self._timer.stop()
        self._gpu_timer.stop()
        super().close_widget()


#: Said when a button is pressed while the widget's worker is busy.
_BUSY = "{what}: still exporting the project or reading a run folder; try again when it is done"
