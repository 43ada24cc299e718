"""The Train widget's checkpoints (a mixin of :class:`~.train.TrainWidget`): the run
folder's checkpoints in the combo box (best.pt first) and "Use for prediction", which
hands the chosen one to 'Predict vertebrae' through the viewer's session.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointsMixin"]


class CheckpointsMixin:
    """The checkpoint list (uses the widget's ``run``, ``checkpoint``, ``session``,
    ``status``, ``_message`` and ``_update_buttons``)."""

    def _refresh_checkpoints(self) -> None:
        paths = self.run.checkpoints() if self.run is not None else []
        choices = [(p.name, str(p)) for p in paths]
        before = [str(c) for c in self.checkpoint.choices]
        if before != [c[1] for c in choices]:
            value = self.checkpoint.value
            # the default (best.pt first) follows the run: a best.pt written just after
            # last.pt replaces last.pt; a checkpoint the user picked stays picked
            # (the combo's order is ours: it is rebuilt below, so its first item was the
            # default of the last refresh)
            default = value is None or str(value) == before[0]
            self.checkpoint.choices = []  # the combo appends new items: keep the order
            self.checkpoint.choices = choices
            if not default and str(value) in dict(choices).values():
                self.checkpoint.value = str(value)
        self._update_buttons()

    def selected_checkpoint(self) -> Path | None:
        """The checkpoint chosen in the combo box, or None."""
        value = self.checkpoint.value
        return Path(value) if value else None

    def use_checkpoint(self) -> None:
        """Predict with the chosen checkpoint in 'Predict vertebrae' (docking it if needed)."""
        ckpt = self.selected_checkpoint()
        if ckpt is None:
            self._message("Train: no checkpoint yet: train or load a run first", "warning")
            return
        if self.session.use_checkpoint(str(ckpt)):
            self.status.set(f"'Predict vertebrae' uses {ckpt}", "ok")
        else:
            self._message(f"Train: open 'Predict vertebrae' to use {ckpt}", "warning")
