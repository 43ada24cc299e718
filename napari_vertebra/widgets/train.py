"""The "Train model" widget: start, follow, stop and resume ``napari-vertebra train``.

Training runs in a separate process, the same code as the command line
(``python -m napari_vertebra.cli train --config CFG --data DIR -o RUN [--resume]``), so
the viewer never waits on it and there is no second training loop. The widget polls
``RUN/log.csv`` with a QTimer and redraws the loss and validation-mAP curves as rows
arrive. Stop writes ``RUN/STOP``: the training loop sees it between steps, saves a
resumable ``RUN/last.pt`` and exits; Resume starts it again with ``--resume``.

The process is started detached (its own session): closing napari does not kill it.
It goes on to its last epoch, writing ``last.pt`` (and ``best.pt``) atomically after
every epoch; reopen the run with "Load run" to follow it, stop it or use its
checkpoints.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ._base import VertebraWidget

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

    from napari_vertebra.model.config import TrainConfig

__all__ = [
    "LOG_NAME",
    "STOP_NAME",
    "TrainWidget",
    "default_config_path",
    "read_log",
    "train_command",
    "write_cluster_job",
]

#: Files of a run folder that the widget reads or writes.
LOG_NAME = "log.csv"
STOP_NAME = "STOP"
STDOUT_NAME = "train.out"
PID_NAME = "train.pid"
REQUESTED_CONFIG_NAME = "widget_config.yaml"
JOB_CONFIG_NAME = "job_config.yaml"

SOURCE_COCO = "COCO dataset folder"
_OWN_FILE = "(a YAML file)"
SOURCE_PROJECT = "the open annotation project"

BACKBONES = ("resnet101", "resnet50", "resnet34", "resnet18")
DEVICES = ("auto", "cpu", "cuda")

_TQDM_RE = re.compile(r"\b(\d+)/(\d+) \[")
_BG = "#262930"  # napari's dark theme
_MAP_COLOUR = "#ffd54f"
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: Cached result of the GPU probe (None: not known yet), shared by all widgets.
_GPU_AVAILABLE: bool | None = None

_CLOSE_TIP = (
    "Training runs in its own detached process: closing napari does not stop it. It\n"
    "writes RUN/last.pt atomically after every epoch (and best.pt); reopen the run\n"
    "folder with 'Load run' to follow it, stop it or use its checkpoints."
)


def default_config_path() -> Path | None:
    """The shipped ``paper`` configuration (package data, also in an installed wheel), or
    None (then the model defaults, which are the paper's setup, apply)."""
    return shipped_config_paths().get("paper")


def shipped_config_paths() -> dict[str, Path]:
    """{name: YAML path} of the configurations shipped in the package."""
    from napari_vertebra.model.config import shipped_configs

    try:
        return shipped_configs()
    except OSError:
        return {}


def train_command(
    config: str | os.PathLike,
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    resume: bool = False,
    device: str | None = None,
) -> list[str]:
    """The ``napari-vertebra train`` command line the widget runs, as an argv list."""
    cmd = [sys.executable, "-m", "napari_vertebra.cli", "train"]
    cmd += ["--config", str(config), "--data", str(data), "-o", str(run_dir)]
    if resume:
        cmd.append("--resume")
    if device and device != "auto":
        cmd += ["--device", device]
    return cmd


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a training ``log.csv`` as float arrays (empty cells become NaN).

    Returns {} when the file is missing or has no data row yet; a partly written last
    line (the trainer may be mid-write) is ignored.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return {}
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    rows = list(csv.reader(lines))
    if len(rows) < 2:
        return {}
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        for h, v in zip(header, row, strict=True):
            try:
                cols[h].append(float(v))
            except ValueError:
                cols[h].append(np.nan)
    if not any(cols.values()):
        return {}
    return {h: np.asarray(v, float) for h, v in cols.items()}


def completed_epochs(log: dict[str, np.ndarray]) -> int:
    """Number of epochs with a row in ``log`` (0 for an empty log)."""
    ep = log.get("epoch")
    if ep is None or not len(ep):
        return 0
    return int(np.nanmax(ep))


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, i.e. finished but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def export_project_dataset(
    project: Any, out_dir: str | os.PathLike, progress: Any = None
) -> list[str]:
    """Write an annotation project as COCO splits ``out_dir/{train,val,test}``.

    Uses :func:`napari_vertebra.annotation.dataset.build_dataset` (partial views, split by
    scan). A project of a single scan gets no validation images: then the training split
    is copied as ``val`` (its mAP is then measured on training images) and a note says
    so. Returns such notes.
    """
    import json
    import shutil

    from napari_vertebra.annotation.dataset import build_dataset

    images = [im for im in project.images(load_pixels=True) if im.annotations]
    if not images:
        raise ValueError(f"{project.folder}: the project has no annotated image to train on")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    build_dataset(images, out, progress=progress)
    notes = []
    val = out / "val"
    try:
        n_val = len(
            json.loads((val / "annotations.json").read_text(encoding="utf-8")).get("images", [])
        )
    except (OSError, ValueError):
        n_val = 0
    if n_val == 0:
        shutil.rmtree(val, ignore_errors=True)
        shutil.copytree(out / "train", val)
        scans = {im.scan for im in images}
        notes.append(
            f"the project holds {len(scans)} scan(s), too few for a validation split: "
            "validating on the training images (optimistic mAP)"
        )
    return notes


# ------------------------------------------------------------------------- cluster job
_RUN_SH = """#!/usr/bin/env bash
# Train napari-vertebra on a GPU machine with torchrun (one process per GPU), like
# training/torchrun.sh of the source tree. Written by napari's "Train model" widget on
# {date}. Copy this run folder{data_note} to the machine and run:  bash run.sh
# Run again (or re-submit the job) to continue from last.pt; DATA=/path bash run.sh uses
# another dataset folder; NGPU=2 sets the number of GPUs (default: all nvidia-smi lists).
set -euo pipefail
RUN="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
DATA="${{DATA:-{data}}}"
if [ -z "${{NGPU:-}}" ]; then
  NGPU="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
  [ "${{NGPU:-0}}" -ge 1 ] || NGPU=1
fi
EXTRA=()
if [ -f "$RUN/last.pt" ]; then EXTRA+=(--resume); fi
exec torchrun --standalone --nnodes=1 --nproc_per_node="$NGPU" \\
  -m napari_vertebra.cli train \\
  --config "$RUN/{config}" --data "$DATA" -o "$RUN" --device cuda ${{EXTRA[@]+"${{EXTRA[@]}}"}}
"""

_SBATCH = """#!/bin/bash
# Slurm job for napari-vertebra training; submit from this run folder:  sbatch job.sbatch
# Written by napari's "Train model" widget on {date}. Adjust partition, time and the
# environment activation to your cluster.
#SBATCH --job-name=napari-vertebra
#SBATCH --nodes=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(dirname "$0")}}"
# source /path/to/venv/bin/activate   # an environment with napari-vertebra[train]
export NGPU="${{SLURM_GPUS_ON_NODE:-1}}"
bash ./run.sh
"""


def write_cluster_job(
    run_dir: str | os.PathLike, config: dict[str, Any], data_dir: str | os.PathLike
) -> list[Path]:
    """Write ``RUN/job_config.yaml``, ``RUN/run.sh`` (torchrun) and ``RUN/job.sbatch``.

    ``data_dir`` inside ``run_dir`` is written relative to it (so the folder can be
    copied as a whole); elsewhere its absolute path is used (override with DATA=...).
    When the checkout has ``training/torchrun.sh`` or ``training/slurm.sbatch``, they
    are copied beside as references. Returns the written paths.
    """
    import yaml

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    try:
        rel = data.relative_to(run.resolve())
        data_text, data_note = f"$RUN/{rel.as_posix()}", " (it holds the dataset)"
    except ValueError:
        data_text, data_note = str(data), f" and the dataset {data}"
    date = time.strftime("%Y-%m-%d %H:%M")
    written = []
    cfg_path = run / JOB_CONFIG_NAME
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    written.append(cfg_path)
    sh = run / "run.sh"
    sh.write_text(
        _RUN_SH.format(date=date, data=data_text, data_note=data_note, config=JOB_CONFIG_NAME),
        encoding="utf-8",
    )
    sh.chmod(0o755)
    written.append(sh)
    sb = run / "job.sbatch"
    sb.write_text(_SBATCH.format(date=date), encoding="utf-8")
    written.append(sb)
    for name in ("torchrun.sh", "slurm.sbatch"):
        src = _REPO_ROOT / "training" / name
        if src.is_file():
            dst = run / f"reference_{name}"
            dst.write_text(src.read_text(encoding="utf-8"))
            written.append(dst)
    return written


# ------------------------------------------------------------------------- the plot
class LossPlot(QWidget):
    """Matplotlib canvas (FigureCanvasQTAgg): training losses and validation mAP.

    :meth:`draw` renders on a background thread (Agg) and only the finished image is
    painted on the GUI thread, so a redraw never stalls the viewer (drawing the figure
    takes 0.2-0.5 s on a busy CPU).
    """

    rendered = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.8), dpi=90)
        self.figure.patch.set_facecolor(_BG)
        self.figure.subplots_adjust(left=0.14, right=0.86, bottom=0.16, top=0.96)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(230)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_map = self.ax_loss.twinx()
        #: Rows of the last log given to :meth:`draw`, and renders finished so far.
        self.n_rows = 0
        self.n_draws = 0
        self._lock = threading.Lock()
        self._pending: dict[str, np.ndarray] | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self.rendered.connect(self._on_rendered)
        self.draw({})

    def draw(self, log: dict[str, np.ndarray]) -> None:
        """Redraw from a :func:`read_log` result (rendered off the GUI thread)."""
        self.n_rows = max((len(v) for v in log.values()), default=0)
        with self._lock:
            self._pending = dict(log)
            if self._busy:
                return  # the running render picks it up next
            self._busy = True
        self._thread = threading.Thread(target=self._render_loop, daemon=True)
        self._thread.start()

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the background renders are done (for tests and screenshots)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _render_loop(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        while True:
            with self._lock:
                log, self._pending = self._pending, None
                if log is None:
                    self._busy = False
                    return
            try:
                self._update_artists(log)
                FigureCanvasAgg.draw(self.canvas)
            except Exception as e:  # a plot must never take the widget down
                print(f"[napari-vertebra] loss plot: {e}", file=sys.stderr)
                continue
            try:
                self.rendered.emit()
            except RuntimeError:  # the widget was deleted
                return

    def _on_rendered(self) -> None:
        self.n_draws += 1
        self.canvas.update()

    def _update_artists(self, log: dict[str, np.ndarray]) -> None:
        ax, ax2 = self.ax_loss, self.ax_map
        ax.clear()
        ax2.clear()
        n = max((len(v) for v in log.values()), default=0)
        x = log.get("epoch", np.arange(1, n + 1, dtype=float))
        handles = []
        for k in log:
            if "loss" not in k or np.all(np.isnan(log[k])):
                continue
            total = k == "loss"
            (h,) = ax.plot(
                x, log[k], marker="o" if total else ".", ms=4 if total else 3,
                lw=2.2 if total else 1.0, color="white" if total else None,
                label="loss (total)" if total else k.removeprefix("loss_"),
            )  # fmt: skip
            handles.append(h)
        for k, style in (("val_mask_mAP", "-"), ("val_box_mAP", ":")):
            if k in log and not np.all(np.isnan(log[k])):
                (h,) = ax2.plot(
                    x, log[k], style, color=_MAP_COLOUR, marker="s", ms=3, lw=1.8,
                    label=k.replace("val_", "val ").replace("_", " "),
                )  # fmt: skip
                handles.append(h)
        for a in (ax, ax2):
            a.set_facecolor(_BG)
            a.tick_params(colors="0.85", labelsize=7)
            for spine in a.spines.values():
                spine.set_color("0.6")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.yaxis.tick_right()  # clear() puts the twin's axis back on the left
        ax2.yaxis.set_label_position("right")
        ax.set_xlabel("epoch", color="0.85", fontsize=8)
        ax.set_ylabel("training loss", color="0.85", fontsize=8)
        ax2.set_ylabel("validation mAP", color=_MAP_COLOUR, fontsize=8)
        ax2.set_ylim(0, 1)
        if n:
            ax.set_xlim(0.5, max(float(np.nanmax(x)), 1.0) + 0.5)
        if handles:
            leg = ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.5)
            for t in leg.get_texts():
                t.set_color("0.9")
            leg.get_frame().set_facecolor("#1e1f24")
        else:
            ax.text(0.5, 0.5, "no epochs logged yet", ha="center", va="center",
                    transform=ax.transAxes, color="0.6", fontsize=9)  # fmt: skip


# ------------------------------------------------------------------------- the widget
class TrainWidget(VertebraWidget):
    """Train the Mask R-CNN on a COCO split folder or on the open annotation project.

    Children are attributes (``source``, ``data_dir``, ``config_file``, ``backbone``,
    ``epochs``, ``lr``, ``batch_size``, ``device``, ``weights``, ``run_folder``, the
    buttons, ``plot``, ``checkpoint``) and handlers are methods (:meth:`start`,
    :meth:`stop`, :meth:`resume`, :meth:`load_run`, :meth:`write_job`,
    :meth:`use_checkpoint`), so tests drive it directly. ``config_overrides``
    (configuration keys) is applied after the form's fields.
    """

    #: Emitted with the exit status when a training process started here ends.
    finished = Signal(int)
    #: Emitted with the number of log rows when new rows arrive.
    log_updated = Signal(int)

    def __init__(self, viewer: napari.viewer.Viewer, parent: Any = None) -> None:
        super().__init__(viewer, parent)
        self.config_overrides: dict[str, Any] = {}
        self.process: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self.log: dict[str, np.ndarray] = {}
        self._log_sig: tuple[float, int] | None = None
        self._epochs_target = 0
        self._epochs_at_launch = 0
        self._stop_requested = False
        self._gpu_probe: subprocess.Popen | None = None

        self.source = ComboBox(
            label="dataset", choices=[SOURCE_COCO, SOURCE_PROJECT], value=SOURCE_COCO
        )
        self.source.tooltip = (
            "A folder with train/ and val/ COCO splits (Export dataset writes one), or the\n"
            "project open in 'Annotate vertebrae', exported into RUN/dataset first."
        )
        self.data_dir = FileEdit(label="folder", mode="d", nullable=True)
        self.data_dir.tooltip = "COCO split folder with train/ and val/ (annotations.json)"
        default_cfg = default_config_path()
        self.config_file = FileEdit(
            label="config", mode="r", filter="*.yaml *.yml", nullable=True,
            value=str(default_cfg) if default_cfg else None,
        )  # fmt: skip
        self.config_file.tooltip = (
            "YAML training configuration (the shipped 'paper' one by default);\n"
            "the fields below override it. Empty: the model defaults (the paper's setup)."
        )
        self._shipped = shipped_config_paths()
        self.preset = ComboBox(
            label="shipped config", choices=[_OWN_FILE, *self._shipped],
            value="paper" if default_cfg and "paper" in self._shipped else _OWN_FILE,
        )  # fmt: skip
        self.preset.tooltip = (
            "The configurations shipped with napari-vertebra (paper: the paper's setup;\n"
            "smoke: a small CPU model; synth-r50: ResNet-50 on synthetic MIPs);\n"
            f"{_OWN_FILE}: the YAML file below."
        )
        self.preset.changed.connect(self._on_preset)
        self.backbone = ComboBox(label="backbone", choices=list(BACKBONES))
        self.epochs = SpinBox(label="epochs", min=1, max=10000)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.batch_size = SpinBox(label="batch size", min=1, max=256)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.device.tooltip = "auto: the GPU when torch sees one, else the CPU"
        self.weights = FileEdit(
            label="weights", mode="r", filter="*.pt *.pth *.pkl", nullable=True
        )
        self.weights.tooltip = (
            "Optional starting weights (a local file): a napari-vertebra checkpoint, a COCO\n"
            "Mask R-CNN file (torchvision .pth or detectron2 .pkl, docs/transfer.md) or\n"
            "ImageNet backbone weights. Empty: random start."
        )
        self.run_folder = FileEdit(label="run folder", mode="d", value=str(_default_run_dir()))
        self.run_folder.tooltip = "Where checkpoints (last.pt, best.pt), log.csv and config go"
        self.add_form(
            self.source, self.data_dir, self.preset, self.config_file, self.backbone,
            self.epochs,
            self.lr, self.batch_size, self.device, self.weights, self.run_folder,
        )  # fmt: skip
        self.start_button = PushButton(text="Start")
        self.start_button.tooltip = _CLOSE_TIP
        self.stop_button = PushButton(text="Stop")
        self.stop_button.tooltip = "Stop after the current step, saving a resumable RUN/last.pt"
        self.resume_button = PushButton(text="Resume")
        self.resume_button.tooltip = "Continue the run folder's training from RUN/last.pt"
        self.add_buttons(self.start_button, self.stop_button, self.resume_button)
        self.load_button = PushButton(text="Load run…")
        self.load_button.tooltip = "Show a run folder's curves and checkpoints"
        self.cluster_button = PushButton(text="Write cluster job")
        self.cluster_button.tooltip = (
            "Write the dataset, RUN/job_config.yaml, a torchrun command (RUN/run.sh)\n"
            "and a Slurm script (RUN/job.sbatch); copy the run folder to a GPU machine."
        )
        self.add_buttons(self.load_button, self.cluster_button)
        self.gpu_label = Label(value="")
        self.gpu_label.native.setWordWrap(True)
        self.gpu_label.visible = False
        self.add(self.gpu_label)
        self.plot = LossPlot()
        self.add(self.plot, stretch=1)
        self.checkpoint = ComboBox(label="checkpoint", choices=[])
        self.checkpoint.tooltip = "Checkpoints of the run folder (best.pt first)"
        self.add_form(self.checkpoint)
        self.use_button = PushButton(text="Use for prediction")
        self.use_button.tooltip = "Set this checkpoint in 'Predict vertebrae' (docking it)"
        self.add_buttons(self.use_button)
        self.progress_bar.visible = True
        self.add_status()
        self.status.set("Ready", "info")

        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._poll)

        self.config_file.changed.connect(lambda *_: self._fill_from_config())
        self.config_file.changed.connect(lambda *_: self._sync_preset())
        self.source.changed.connect(self._on_source_changed)
        self.start_button.changed.connect(lambda *_: self.start())
        self.stop_button.changed.connect(lambda *_: self.stop())
        self.resume_button.changed.connect(lambda *_: self.resume())
        self.load_button.changed.connect(lambda *_: self._browse_load_run())
        self.cluster_button.changed.connect(lambda *_: self.write_job())
        self.use_button.changed.connect(lambda *_: self.use_checkpoint())
        self._fill_from_config()
        self._update_buttons()
        QTimer.singleShot(0, self.probe_gpu)

    # ----------------------------------------------------------------- configuration
    def _fill_from_config(self) -> None:
        """Set the fields from the config file (or the model defaults)."""
        from napari_vertebra.model.config import load_config

        path = self.config_file.value
        try:
            cfg = load_config(path or None)
        except (ValueError, OSError) as e:
            self.status.set(f"config: {e}", "error")
            return
        if cfg.backbone not in self.backbone.choices:
            self.backbone.choices = [*self.backbone.choices, cfg.backbone]
        self.backbone.value = cfg.backbone
        self.epochs.value = cfg.epochs
        self.lr.value = cfg.lr
        self.batch_size.value = cfg.batch_size
        # the file's starting weights, or none: a field left from another config would
        # start this one from weights it does not name
        self.weights.value = str(cfg.weights) if cfg.weights else None

    def _on_preset(self, name: str) -> None:
        """Point the config field at the shipped configuration ``name``."""
        path = self._shipped.get(name)
        if path is not None and str(self.config_file.value or "") != str(path):
            self.config_file.value = str(path)

    def _sync_preset(self) -> None:
        """Show the shipped name of the config file, or that it is the user's own file."""
        value = str(self.config_file.value or "")
        name = next((n for n, p in self._shipped.items() if str(p) == value), _OWN_FILE)
        if self.preset.value != name:
            with self.preset.changed.blocked():
                self.preset.value = name

    def config(self) -> TrainConfig:
        """The configuration of the next run: file, then the fields, then overrides."""
        from napari_vertebra.model.config import load_config

        fields: dict[str, Any] = {
            "backbone": self.backbone.value,
            "epochs": int(self.epochs.value),
            "lr": float(self.lr.value),
            "batch_size": int(self.batch_size.value),
        }
        weights = self.weights.value
        if weights:
            w = Path(weights).expanduser()
            if not w.is_file():
                raise ValueError(
                    f"starting weights {w}: no such file. Put the file there (the paper "
                    "configuration starts from detectron2's COCO R101 model_final_a3ec72.pkl, "
                    "see docs/transfer.md), choose another, or clear the field to train "
                    "from random weights"
                )
            fields["weights"] = str(w.resolve())
        fields.update(self.config_overrides)
        return load_config(self.config_file.value or None, overrides=fields)

    def _on_source_changed(self, value: str) -> None:
        self.data_dir.enabled = value != SOURCE_PROJECT

    # ----------------------------------------------------------------- run control
    @property
    def running(self) -> bool:
        """True while a training process started (or followed) by this widget runs."""
        if self.process is not None:
            return self.process.poll() is None
        pid = self._followed_pid()
        return pid is not None and _pid_alive(pid)

    def _followed_pid(self) -> int | None:
        if self.run_dir is None:
            return None
        try:
            return int((self.run_dir / PID_NAME).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def _run_path(self) -> Path:
        value = self.run_folder.value
        if value is None or str(value) in ("", "."):
            raise ValueError("choose a run folder")
        return Path(value).expanduser().resolve()

    def _dataset_path(self) -> Path:
        data = self.data_dir.value
        if not data:
            raise ValueError("choose a dataset folder (with train/ and val/)")
        data = Path(data).expanduser().resolve()
        if not (data / "train" / "annotations.json").is_file():
            raise ValueError(f"{data}: no train/annotations.json (need train/ and val/ splits)")
        return data

    def _prepare(self, resume: bool) -> tuple[Path, dict[str, Any]]:
        run_dir = self._run_path()
        if resume and not (run_dir / "last.pt").is_file():
            raise ValueError(f"{run_dir}: no last.pt to resume from")
        if not resume and (run_dir / "last.pt").is_file():
            raise ValueError(
                f"{run_dir} already holds a run (last.pt): Resume it or choose a new run folder"
            )
        return run_dir, self.config()

    def _with_dataset(self, run_dir: Path, then) -> None:
        """Call ``then(data_dir)``: directly for a COCO folder, after exporting the open
        project into ``run_dir/dataset`` on a worker thread otherwise."""
        if self.source.value != SOURCE_PROJECT:
            then(self._dataset_path())
            return
        from .predict import find_annotation_project

        project = find_annotation_project(self.viewer)
        if project is None:
            raise ValueError(
                "no annotation project is open: open one in 'Annotate vertebrae', or train "
                "on a COCO dataset folder"
            )
        from functools import partial

        out = run_dir / "dataset"

        def done(notes: list[str]) -> None:
            then(out)
            if notes:
                from ._threading import notify

                notify("Train model: " + "; ".join(notes), "warning")

        self.runner.start(
            partial(export_project_dataset, project, out),
            on_done=done,
            description="Exporting the project",
        )

    def start(self, resume: bool = False) -> bool:
        """Start training (a new run, or with ``resume`` the run folder's last.pt).

        Returns False (reason in the status line) when it cannot start; with the open
        project as dataset, the process starts once the export is done.
        """
        if self.running or self.runner.busy:
            self.status.set("a training run is already going", "warning")
            return False
        try:
            run_dir, cfg = self._prepare(resume)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._with_dataset(run_dir, lambda data: self._launch(run_dir, cfg, data, resume))
        except (ValueError, OSError) as e:
            self.status.set(f"cannot start: {e}", "error")
            return False
        return True

    def _launch(self, run_dir: Path, cfg: TrainConfig, data: Path, resume: bool) -> None:
        cfg_path = run_dir / REQUESTED_CONFIG_NAME
        cfg_path.write_text(cfg.to_yaml(), encoding="utf-8")
        (run_dir / STOP_NAME).unlink(missing_ok=True)
        cmd = train_command(cfg_path, data, run_dir, resume, self.device.value)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        with open(run_dir / STDOUT_NAME, "ab") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(run_dir), env=env,
                start_new_session=True,  # detached: survives napari closing
            )  # fmt: skip
        _lower_priority(self.process.pid)
        (run_dir / PID_NAME).write_text(str(self.process.pid), encoding="utf-8")
        self.run_dir = run_dir
        self._epochs_target = cfg.epochs
        self._stop_requested = False
        self._log_sig = None
        self._refresh_log()
        self._epochs_at_launch = completed_epochs(self.log) if resume else 0
        verb = "resuming" if resume else "starting"
        self.status.set(f"{verb} training in {run_dir}", "busy")
        self._timer.start()
        self._update_buttons()

    def resume(self) -> bool:
        """Continue the run folder's training from its last.pt (``--resume``)."""
        return self.start(resume=True)

    def stop(self) -> None:
        """Ask the run to stop: it saves a resumable last.pt and exits.

        Pressed again while it is still stopping, it interrupts the process (SIGINT).
        """
        if self.run_dir is None or not self.running:
            self.status.set("no training is running", "warning")
            return
        if self._stop_requested:
            pid = self.process.pid if self.process is not None else self._followed_pid()
            if pid is not None:
                os.kill(pid, signal.SIGINT)
            self.status.set("interrupting the training process…", "warning")
            return
        (self.run_dir / STOP_NAME).write_text(
            time.strftime("stop requested %Y-%m-%d %H:%M:%S\n"), encoding="utf-8"
        )
        self._stop_requested = True
        self.status.set("stopping after the current step (saving last.pt)…", "busy")
        self._update_buttons()

    def _browse_load_run(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        d = QFileDialog.getExistingDirectory(self, "Load a run folder")
        if d:
            self.load_run(d)

    def load_run(self, run_dir: str | os.PathLike) -> None:
        """Show a run folder's curves and checkpoints (and follow it while it runs)."""
        run = Path(run_dir).expanduser().resolve()
        if not run.is_dir():
            self.fail(f"Load run: {run}: no such folder")
            return
        markers = (LOG_NAME, "config.yaml", "last.pt", "best.pt", PID_NAME)
        if not any((run / name).exists() for name in markers):
            self.fail(
                f"Load run: {run} is not a training run (no log.csv, config.yaml or "
                "checkpoint in it); choose the folder that 'napari-vertebra train -o' wrote"
            )
            return
        if self.running:
            self.status.set("a training run is going; stop it before loading another", "warning")
            return
        self.process = None
        self.run_dir = run
        self.run_folder.value = str(run)
        cfg_file = run / "config.yaml"
        if cfg_file.is_file():
            import yaml

            try:
                cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
                self._epochs_target = int(cfg.get("epochs") or 0)
                self._show_run_config(cfg)
            except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:
                self.status.set(f"{cfg_file}: {e}", "warning")
        self._log_sig = None
        self._refresh_log()
        self._refresh_checkpoints()
        if self.running:
            self.status.set(f"following the training running in {run}", "busy")
            self._timer.start()
        else:
            n = completed_epochs(self.log)
            self.status.set(
                f"loaded {run.name}: {n} epoch(s), {len(self.checkpoint.choices)} checkpoint(s)",
                "ok",
            )
        self._update_buttons()

    def _show_run_config(self, cfg: dict[str, Any]) -> None:
        """Fill the fields from a run's config.yaml (what Resume continues with)."""
        from napari_vertebra.model.config import load_config

        cfg_file = self.run_dir / "config.yaml" if self.run_dir is not None else None
        try:
            load_config(cfg_file)
        except (ValueError, OSError, TypeError):
            pass  # keep the config field; the run's settings are in its checkpoint
        else:
            with self.config_file.changed.blocked():
                self.config_file.value = str(cfg_file)
        if cfg.get("backbone") in self.backbone.choices:
            self.backbone.value = cfg["backbone"]
        for key, field, cast in (
            ("epochs", self.epochs, int),
            ("lr", self.lr, float),
            ("batch_size", self.batch_size, int),
        ):
            if cfg.get(key) is not None:
                field.value = cast(cfg[key])
        self.weights.value = cfg.get("weights") or None

    # ----------------------------------------------------------------- polling
    def _poll(self) -> None:
        self._refresh_log()
        if self.running:
            if not self._stop_requested:
                tail = self._tail_line()
                if tail:
                    self.status.set(tail, "busy")
                    self._step_progress(tail)
            return
        self._timer.stop()
        rc = self.process.returncode if self.process is not None else 0
        run = self.run_dir
        self._refresh_checkpoints()
        stopped = run is not None and (run / STOP_NAME).exists()
        if rc == 0 and stopped:
            self.status.set(f"stopped; Resume continues from {run / 'last.pt'}", "ok")
        elif rc == 0:
            self.progress_bar.value = 100
            self.status.set(f"finished: {completed_epochs(self.log)} epoch(s) in {run}", "ok")
        else:
            tail = self._tail_line()
            self.status.set(
                f"training failed (exit {rc}), see {run / STDOUT_NAME}"
                + (f":\n{tail}" * bool(tail)),
                "error",
            )
        if run is not None:
            (run / PID_NAME).unlink(missing_ok=True)
        self._stop_requested = False
        self._update_buttons()
        self.finished.emit(int(rc or 0))

    def _refresh_log(self) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / LOG_NAME
        try:
            st = path.stat()
            sig = (st.st_mtime, st.st_size)
        except OSError:
            sig = None
        if sig == self._log_sig:
            return
        self._log_sig = sig
        self.log = read_log(path)
        self.plot.draw(self.log)
        if self._epochs_target:
            done = completed_epochs(self.log)
            self.progress_bar.value = round(100 * min(1.0, done / self._epochs_target))
        self.log_updated.emit(self.plot.n_rows)

    def _step_progress(self, line: str) -> None:
        """Finer progress from the trainer's tqdm line (``... 4/10 [...``)."""
        m = _TQDM_RE.search(line)
        if m is None or not self._epochs_target:
            return
        done, total = int(m.group(1)), int(m.group(2))
        if total <= 0:
            return
        start = self._epochs_at_launch
        frac = (start + (done / total) * (self._epochs_target - start)) / self._epochs_target
        self.progress_bar.value = max(self.progress_bar.value, round(100 * min(1.0, frac)))

    def _tail_line(self) -> str:
        """The last line the training process printed (tqdm's bar included)."""
        if self.run_dir is None:
            return ""
        try:
            with open(self.run_dir / STDOUT_NAME, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                data = f.read().decode(errors="replace")
        except OSError:
            return ""
        parts = [p.strip() for p in data.replace("\r", "\n").split("\n") if p.strip()]
        return parts[-1][:300] if parts else ""

    def _refresh_checkpoints(self) -> None:
        if self.run_dir is None:
            self.checkpoint.choices = []
            return
        order = {"best.pt": 0, "last.pt": 1}
        paths = sorted(self.run_dir.glob("*.pt"), key=lambda p: (order.get(p.name, 2), p.name))
        self.checkpoint.choices = [(p.name, str(p)) for p in paths]
        self._update_buttons()

    def selected_checkpoint(self) -> Path | None:
        """The checkpoint chosen in the combo box, or None."""
        value = self.checkpoint.value
        return Path(value) if value else None

    def use_checkpoint(self) -> None:
        """Set the chosen checkpoint in 'Predict vertebrae' (docking it if needed)."""
        ckpt = self.selected_checkpoint()
        if ckpt is None:
            self.status.set("no checkpoint: train or load a run first", "warning")
            return
        from .predict import PredictWidget, find_dock_widget

        widget = find_dock_widget(self.viewer, PredictWidget, dock_name="Predict vertebrae")
        if widget is None:
            self.status.set(f"open 'Predict vertebrae' to use {ckpt}", "warning")
            return
        widget.set_checkpoint(ckpt)
        self.status.set(f"'Predict vertebrae' uses {ckpt}", "ok")

    # ----------------------------------------------------------------- GPU / cluster
    def probe_gpu(self) -> None:
        """Find out in a subprocess (the viewer does not wait for torch to import)
        whether torch sees a GPU; without one, suggest writing a cluster job."""
        if _GPU_AVAILABLE is not None:
            self._show_gpu(_GPU_AVAILABLE)
            return
        if self._gpu_probe is not None:
            return
        try:
            self._gpu_probe = subprocess.Popen(
                [sys.executable, "-c", "import torch; print(int(torch.cuda.is_available()))"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return
        QTimer.singleShot(300, self._check_gpu_probe)

    def _check_gpu_probe(self) -> None:
        global _GPU_AVAILABLE
        probe = self._gpu_probe
        if probe is None:
            return
        if probe.poll() is None:
            QTimer.singleShot(300, self._check_gpu_probe)
            return
        out = probe.stdout.read().decode().strip() if probe.stdout else ""
        if probe.stdout:
            probe.stdout.close()
        self._gpu_probe = None
        _GPU_AVAILABLE = out == "1"
        try:
            self._show_gpu(_GPU_AVAILABLE)
        except RuntimeError:  # the widget was closed meanwhile
            pass

    @property
    def gpu_available(self) -> bool | None:
        """Whether torch sees a GPU here (None until the probe has answered)."""
        return _GPU_AVAILABLE

    def _show_gpu(self, available: bool) -> None:
        if available:
            self.gpu_label.value = ""
            self.gpu_label.visible = False
            return
        self.gpu_label.visible = True
        self.gpu_label.value = (
            "No GPU here: training on the CPU is slow. 'Write cluster job' prepares a GPU "
            "run; 'Load run' shows it back here."
        )
        self.gpu_label.native.setWordWrap(True)
        self.gpu_label.native.setStyleSheet("color: #ffb454;")
        self.cluster_button.native.setStyleSheet("font-weight: bold;")

    def write_job(self) -> Path | None:
        """Write the dataset (for the open project), RUN/job_config.yaml, RUN/run.sh
        (torchrun) and RUN/job.sbatch (Slurm). Returns the run folder, or None."""
        try:
            run_dir = self._run_path()
            cfg = self.config()
            run_dir.mkdir(parents=True, exist_ok=True)

            def then(data: Path) -> None:
                files = write_cluster_job(run_dir, cfg, data)
                names = ", ".join(f.name for f in files)
                self.status.set(f"wrote {names} in {run_dir}", "ok")

            self._with_dataset(run_dir, then)
        except (ValueError, OSError) as e:
            self.status.set(f"cannot write the job: {e}", "error")
            return None
        return run_dir

    # ----------------------------------------------------------------- helpers
    def _update_buttons(self) -> None:
        running = self.running
        self.start_button.enabled = not running
        self.resume_button.enabled = not running
        self.stop_button.enabled = running
        self.load_button.enabled = not running
        self.cluster_button.enabled = not running
        self.use_button.enabled = bool(self.checkpoint.choices)


def _lower_priority(pid: int, step: int = 5) -> None:
    """Nice the training process a little: the viewer stays responsive while it runs in
    the background (no effect on an otherwise idle CPU or on the GPU)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + step))
    except (OSError, AttributeError):
        pass


def _default_run_dir() -> Path:
    return Path.home() / "napari-vertebra-runs" / time.strftime("run-%Y%m%d-%H%M%S")
