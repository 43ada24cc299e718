"""The Train widget's plot: the loss per logged step and the validation metrics per epoch.

The figure is drawn with Agg on a worker thread (a :class:`~._threading.TaskRunner`, the
widgets' one threading style) and only the finished image is painted on the GUI
thread: drawing takes 0.2-0.5 s on a busy CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ._threading import TaskRunner

if TYPE_CHECKING:
    from napari_vertebra.model.progress import TrainProgress

__all__ = ["LossPlot", "PlotData", "plot_data", "render"]

_BG = "#262930"  # napari's dark theme
_VAL_STYLE = {  # key: (label, line style, colour)
    "val_mask_mAP": ("val mask mAP", "-", "#ffd54f"),
    "val_box_mAP": ("val box mAP", ":", "#ffd54f"),
    "val_id_rate": ("val id rate", "--", "#4dd0e1"),
}


@dataclass
class PlotData:
    """What the plot shows: ``x`` (epochs, fractional for steps) and ``losses`` per logged
    step (or per epoch for a run that logged no steps), ``val_x`` and ``val`` per epoch."""

    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    per_step: bool = True
    val_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val: dict[str, np.ndarray] = field(default_factory=dict)
    waiting: str = "no steps logged yet"


def plot_data(progress: TrainProgress | None) -> PlotData:
    """PlotData from a run's :class:`~napari_vertebra.model.progress.TrainProgress`: the
    loss per logged step, or per epoch (its mean) for a run that logged no steps, and
    the validation metrics per epoch. Copies: the result can be drawn on another thread."""
    data = PlotData()
    if progress is None:
        return data
    if progress.steps:
        data.x = progress.step_epochs()
        data.losses = {k: np.asarray(v, float) for k, v in progress.losses.items()}
    elif progress.epoch_losses:
        data.x = np.asarray(progress.val_epochs, float)
        data.losses = {k: np.asarray(v, float) for k, v in progress.epoch_losses.items()}
        data.per_step = False
    if progress.val_epochs:
        data.val_x = np.asarray(progress.val_epochs, float)
        data.val = {k: np.asarray(v, float) for k, v in progress.val.items()}
    if progress.phase in ("setup", "start"):
        data.waiting = "waiting for the first step…"
    return data


class LossPlot(QWidget):
    """Matplotlib canvas (FigureCanvasQTAgg): training loss per step, validation per epoch.

    :meth:`draw` renders on a worker thread; ``n_draws`` counts finished renders and
    ``n_points`` the loss points of the last data given (tests).
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
        self.n_points = 0
        self.n_draws = 0
        self.runner = TaskRunner()
        self._pending: PlotData | None = None
        self.draw(PlotData())

    def draw(self, data: PlotData) -> None:
        """Redraw from ``data`` (rendered off the GUI thread; the latest data wins)."""
        self.n_points = len(data.x)
        self._pending = data
        if not self.runner.busy:
            self._render_next()

    def _render_next(self) -> None:
        data, self._pending = self._pending, None
        if data is None:
            return
        self.runner.start(
            lambda: self._render(data),
            on_done=self._on_rendered,
            on_error=lambda e: print(f"[napari-vertebra] loss plot: {e}", file=sys.stderr),
            description="Drawing the loss plot",
            pass_progress=False,
        )

    def _render(self, data: PlotData) -> None:
        render(self, data)

    def _on_rendered(self, _: Any) -> None:
        self.n_draws += 1
        try:
            self.canvas.update()
        except RuntimeError:  # the widget was deleted
            return
        self.rendered.emit()
        if self._pending is not None:
            self._render_next()

    def _update_artists(self, data: PlotData) -> None:
        ax, ax2 = self.ax_loss, self.ax_map
        ax.clear()
        ax2.clear()
        handles = []
        for k, y in data.losses.items():
            if np.all(np.isnan(y)):
                continue
            total = k == "loss"
            marker = None if data.per_step else ("o" if total else ".")
            (h,) = ax.plot(
                data.x, y, marker=marker, ms=4 if total else 3,
                lw=(1.4 if total else 0.8) if data.per_step else (2.2 if total else 1.0),
                color="white" if total else None, alpha=1.0 if total else 0.85,
                label="loss (total)" if total else k.removeprefix("loss_"),
            )  # fmt: skip
            handles.append(h)
        for k, (label, style, colour) in _VAL_STYLE.items():
            y = data.val.get(k)
            if y is not None and len(y) and not np.all(np.isnan(y)):
                (h,) = ax2.plot(
                    data.val_x, y, style, color=colour, marker="s", ms=4, lw=1.8, label=label
                )
                handles.append(h)
        for a in (ax, ax2):
            a.set_facecolor(_BG)
            a.tick_params(colors="0.85", labelsize=7)
            for spine in a.spines.values():
                spine.set_color("0.6")
        ax2.yaxis.tick_right()  # clear() puts the twin's axis back on the left
        ax2.yaxis.set_label_position("right")
        xlabel = "epoch (loss per step)" if data.per_step else "epoch"
        ax.set_xlabel(xlabel, color="0.85", fontsize=8)
        ax.set_ylabel("training loss", color="0.85", fontsize=8)
        ax2.set_ylabel("validation", color=_VAL_STYLE["val_mask_mAP"][2], fontsize=8)
        ax2.set_ylim(0, 1)
        xs = [v for v in (data.x, data.val_x) if len(v)]
        if xs:
            right = max(float(np.nanmax(v)) for v in xs)
            ax.set_xlim(0.0 if data.per_step else 0.5, max(right, 1.0) + 0.05)
        finite = [v[np.isfinite(v)] for v in data.losses.values()]
        top = max((float(v.max()) for v in finite if v.size), default=0.0)
        if top > 0:  # headroom: the legend sits above the curves, not on them
            ax.set_ylim(0, top / 0.68)
        if handles:
            leg = ax.legend(handles=handles, fontsize=6, loc="upper right", ncol=2, framealpha=0.5)
            for t in leg.get_texts():
                t.set_color("0.9")
            leg.get_frame().set_facecolor("#1e1f24")
        else:
            ax.text(0.5, 0.5, data.waiting, ha="center", va="center",
                    transform=ax.transAxes, color="0.6", fontsize=9)  # fmt: skip


def render(plot: LossPlot, data: PlotData) -> None:
    """Draw ``data`` into ``plot``'s figure with Agg (on the plot's worker thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    plot._update_artists(data)
    FigureCanvasAgg.draw(plot.canvas)
