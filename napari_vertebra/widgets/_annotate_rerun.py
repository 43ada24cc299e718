"""Polygons that follow a re-run of 'Preprocess CT' (a mixin of
:class:`~.annotate.AnnotateWidget`).

A re-run with another crop margin or voxel size changes the MIP's grid in place (the
same layer, another size or offset). The polygons then move with the anatomy onto the new
grid (:func:`~napari_vertebra.annotation.regrid.carry_annotations`) and are saved, as one
undoable step, under the new MIP's own key (a key names one image: the earlier MIP keeps
its key, image and polygons in the project). A MIP that is not on screen has its saved
polygons carried the same way. The user is told what moved, what the new crop cuts and
under which key it is saved.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.annotation.regrid import Carried, carry_annotations, mip_grid

from ._layers import same_layer
from ._status import error_message, notify

__all__ = ["AnnotateRerun"]


class AnnotateRerun:
    """Mixin: follow the session's ``result_changed`` (a MIP shown again by 'Preprocess
    CT').

    Uses the widget's ``session``, ``shapes``, ``_mip``, ``image_key``, ``status``,
    ``key_for``, ``scan_for``, ``annotations``, ``set_annotations``, ``_load_saved``,
    ``_publish``, ``_image_meta`` and ``fail``.
    """

    def _on_result_changed(self, mip: Any, result: Any, previous: Any = None) -> None:
        """Session: ``mip`` shows ``result`` now (``previous`` before)."""
        if previous is None or previous is result or mip_grid(previous) == mip_grid(result):
            return  # the polygons fit the new MIP as they are
        try:
            if same_layer(mip, self._mip) and self.shapes is not None:
                self._carry_shown(mip, previous, result)
            else:
                self._carry_saved(mip, previous, result)
        except (ValueError, OSError) as e:
            self.fail(f"Annotate: the polygons of {mip.name} could not follow the re-run: "
                      f"{error_message(e)}")  # fmt: skip

    def _carry_shown(self, mip: Any, previous: Any, result: Any) -> None:
        """The polygons on screen move onto the re-run MIP, under its own key."""
        old_key = self.image_key.value
        anns = self.annotations()
        mip.metadata.pop("project_key", None)  # the key of the earlier image
        key = self.key_for(mip, avoid=old_key)
        with self.image_key.changed.blocked():
            self.image_key.value = key
        self._publish()
        if not anns:  # nothing drawn: the new MIP's own saved polygons, if any
            self.set_annotations([], save=False)
            self._load_saved(key)
            return
        carried = carry_annotations(anns, previous, result)
        self.set_annotations(carried.annotations, label=f"moved from {old_key} (re-run)")
        self._say_carried(mip, previous, result, carried, old_key, key)

    def _carry_saved(self, mip: Any, previous: Any, result: Any) -> None:
        """The saved polygons of a MIP not on screen move onto its re-run MIP."""
        session = self.session.annotation
        meta = dict(mip.metadata or {}, mip_grid=mip_grid(previous))
        old_key = session.key_for(mip.name, meta, np.shape(previous.mip))
        mip.metadata.pop("project_key", None)
        saved = session.load(old_key)
        if not saved:
            return
        key = self.key_for(mip, avoid=old_key)
        carried = carry_annotations(saved, previous, result)
        session.save(
            key, carried.annotations, f"moved from {old_key} (re-run)",
            image=np.asarray(mip.data, np.float32), scan=self.scan_for(mip),
            meta={"layer": mip.name, "mip_grid": mip_grid(result)},
        )  # fmt: skip
        self._say_carried(mip, previous, result, carried, old_key, key)

    def _say_carried(
        self, mip: Any, previous: Any, result: Any, carried: Carried, old_key: str, key: str
    ) -> None:
        (h0, w0), (h1, w1) = np.shape(previous.mip), np.shape(result.mip)
        dr, dc = carried.shift
        msg = (
            f"{mip.name} was re-run: the MIP is {h1}x{w1} px now ({h0}x{w0} before). Its "
            f"{len(carried.annotations)} vertebra polygon(s) moved with the anatomy "
            f"({dr:+.0f} rows, {dc:+.0f} columns) and are saved as {key}; {old_key} keeps "
            "the earlier MIP and its polygons in the project."
        )
        if carried.clipped:
            its = "its outline" if len(carried.clipped) == 1 else "their outlines"
            msg += f" The new crop cuts into {', '.join(carried.clipped)}: check {its}."
        if carried.dropped:
            msg += f" It leaves out {', '.join(carried.dropped)} (not on the new MIP)."
        level = "warning" if carried.clipped or carried.dropped else "ok"
        self.status.set(msg, level)
        notify(msg, "warning" if level == "warning" else "info")
