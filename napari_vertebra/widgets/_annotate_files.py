"""Conversions and files of 'Annotate vertebrae': labels from 3D, mask <-> polygons,
COCO / VIA import and export, opening a project image (a mixin of
:class:`~.annotate.AnnotateWidget`; the file work is the annotation session's).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog

from napari_vertebra.annotation.polygons import (
    annotations_to_label_image,
    label_image_to_annotations,
)
from napari_vertebra.annotation.project import safe_key
from napari_vertebra.annotation.types import AnnotatedImage
from napari_vertebra.core.labels import resolve_convention

from ._layers import class_label_colormap, class_label_features, find_layer, upsert_layer
from ._status import error_message, notify

__all__ = ["AnnotateFiles"]


class AnnotateFiles:
    """Mixin: labels from 3D, mask <-> polygons, import / export, project images.

    Uses the widget's ``viewer``, ``session``, ``runner``, ``shapes``, ``_mip``,
    ``mip_layer``, ``image_key``, ``project_dir``, the 3D / mask pickers and the other
    mixins' ``annotations`` / ``set_annotations`` / ``save``.
    """

    # -- conversions ---------------------------------------------------------------------
    def mask_to_polygons(self) -> None:
        """Outline the chosen 2D Labels layer (class ids) as polygons (replacing them)."""
        layer = self.mask_layer.value
        if layer is None:
            self.fail("Mask → polygons: choose a 2D labels layer of class ids (1..17)")
            return
        try:
            anns = label_image_to_annotations(np.asarray(layer.data))
            self.set_annotations(anns, label="mask → polygons")
        except ValueError as e:
            self.fail(f"Mask → polygons: {error_message(e)}")
            return
        self.status.set(f"{len(anns)} vertebrae outlined from {layer.name}", "ok")

    def polygons_to_mask(self) -> Any:
        """Paint the polygons into a Labels layer "mask <mip>" (class ids); returns it."""
        if self.shapes is None or self._mip is None:
            self.fail("Polygons → mask: choose a MIP image first")
            return None
        shape = np.asarray(self._mip.data).shape[-2:]
        img = annotations_to_label_image(self.annotations(), shape)
        layer, _ = upsert_layer(
            self.viewer,
            f"mask {self._mip.name}",
            img,
            "Labels",
            colormap=class_label_colormap(),
            features=class_label_features(),
            opacity=0.5,
            scale=tuple(self._mip.scale),
            translate=tuple(self._mip.translate),
        )
        self.status.set(f"mask of {len(self.annotations())} vertebrae in {layer.name}", "ok")
        return layer

    def labels_from_3d(self) -> bool:
        """Fill the polygons from a 3D label map (worker thread); False if it cannot start.

        With a MIP from "Preprocess CT" run with labels, its result is used directly;
        otherwise the CT and 3D labels pickers are run through the pipeline.
        """
        from napari_vertebra.annotation.from3d import labels_to_annotations

        mip = self.mip_layer.value
        result = self.session.result_for(mip)
        if result is not None and result.labels_cropped is not None:
            work = partial(
                labels_to_annotations, result.source, result.labels_source, "class ids",
                params=result.params, result=result,
                scan=self.scan_for(mip) if mip is not None else "scan",
                labels_name="the labels of Preprocess CT (class ids from its 'label ids' choice)",
            )  # fmt: skip
            ct_name = None
        else:
            try:
                ct_name, ct, labels, conv = self._picked_3d_labels()
            except ValueError as e:
                self.fail(f"Labels from 3D: {error_message(e)}")
                return False
            work = partial(
                labels_to_annotations, ct, labels, conv, scan=safe_key(ct_name),
                labels_name=f"labels {self.labels3d_layer.value.name!r}",
            )  # fmt: skip
        work = partial(
            work, class_set=self.class_set.value, min_visible=float(self.min_visible.value)
        )
        return self.runner.start(
            work, on_done=partial(self._on_from3d, ct_name), description="Labels from 3D"
        )

    def _picked_3d_labels(self) -> tuple[str, Any, Any, Any]:
        """(CT layer name, CT volume, labels volume, convention) of the 3D pickers;
        ValueError when they are not set or do not match."""
        from ._layers import volume_from_layer

        ct_layer, lab_layer = self.ct_layer.value, self.labels3d_layer.value
        if ct_layer is None or lab_layer is None:
            raise ValueError(
                "run Preprocess CT with a labels layer, or choose a CT and its 3D labels here"
            )
        ct = volume_from_layer(ct_layer)
        arr = np.asarray(lab_layer.data)
        if arr.shape != ct.shape:
            raise ValueError(f"labels {lab_layer.name!r} {arr.shape} vs CT {ct.shape}")
        hint = (lab_layer.metadata or {}).get("convention")
        conv = resolve_convention(self.labels_convention.value, arr, hint)
        return ct_layer.name, ct, ct.with_array(arr), conv

    def _on_from3d(self, ct_name: str | None, image: AnnotatedImage) -> None:
        if ct_name is not None:  # a new MIP: show it and annotate it
            mip, _ = upsert_layer(
                self.viewer,
                f"MIP {ct_name}",
                image.image,
                "Image",
                colormap="gray",
                contrast_limits=(0.0, 1500.0),
                metadata={"mip_of": ct_name, "crop_box": image.meta.get("crop_box")},
            )
            self.refresh_choices()
            self.mip_layer.value = mip
        elif self._mip is not None and tuple(np.asarray(self._mip.data).shape) != (
            image.height,
            image.width,
        ):
            raise ValueError("the labels' MIP does not match the chosen MIP image")
        self.set_annotations(image.annotations, label="labels from 3D")
        self.pick_first_missing()
        for note in image.warnings:  # e.g. ids the convention does not define
            notify(f"Labels from 3D: {note}", "warning")
        dropped = image.meta.get("dropped") or []
        msg = f"{len(image.annotations)} vertebrae from the 3D labels"
        if dropped:
            msg += f" (dropped as cut off: {', '.join(dropped)})"
        if ct_name is not None and self.labels_convention.value == "auto":
            msg += f"; label ids read as {image.meta.get('convention')!r} (guessed)"
        self.status.set(msg, "ok")

    # -- files -------------------------------------------------------------------------
    def _ask_path(self, title: str, save: bool, filt: str, directory: bool = False) -> str:
        if directory:
            return QFileDialog.getExistingDirectory(self, title, str(self.project_dir.value))
        fn = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = fn(self, title, str(self.project_dir.value), filt)
        return path

    def import_annotations(self, path: str | os.PathLike | None = None) -> int:
        """Import a COCO or VIA JSON; returns the number of images taken in.

        The image whose key or size matches the current MIP fills the polygons; other
        images with pixels are added to the project.
        """
        if path is None:
            path = self._ask_path("Import annotations", False, "JSON (*.json)")
            if not path:
                return 0
        name = Path(path).name
        shape = np.asarray(self._mip.data).shape[-2:] if self._mip is not None else None
        try:
            got = self.session.annotation.import_file(path, self.image_key.value, shape)
        except (ValueError, OSError) as e:  # malformed files: one message, no traceback
            self.fail(f"Import: {error_message(e)}")
            return 0
        if got.warnings:  # e.g. polygons clipped to the image: say so
            notify(f"Import {name}: " + "; ".join(got.warnings), "warning")
        for err in got.errors:
            notify(f"Import: {err}", "warning")
        images, match, stored = got.images, got.match, got.stored
        self._refresh_project_images()
        if match is not None and self.shapes is not None:
            self._take_pixel_spacing(match)
            self.set_annotations(match.annotations, label=f"import {Path(path).name}")
        msg = f"imported {Path(path).name}: {len(images)} image(s)"
        msg += "; current MIP filled" if match is not None else "; none matches the current MIP"
        if stored:
            msg += f"; {stored} added to the project"
        self.status.set(msg, "ok")
        return len(images)

    def _take_pixel_spacing(self, match: AnnotatedImage) -> None:
        """Give the current MIP layer the pixel spacing the imported image records, unless
        the layer knows its own (a MIP of 'Preprocess CT' has its grid); a spacing that
        cannot be one is said and not taken."""
        from napari_vertebra.model.evaluate import image_spacing  # no torch

        layer_meta = self._mip.metadata
        if layer_meta.get("mip_grid") or layer_meta.get("spacing_mm"):
            return
        try:
            spacing = image_spacing(match.meta, default=None)
        except ValueError as e:
            notify(f"Import: {error_message(e)}; the MIP keeps no pixel spacing", "warning")
            return
        if spacing is not None:
            row, col = spacing
            layer_meta["spacing_mm"] = row if row == col else [row, col]

    def export_coco(self, out_dir: str | os.PathLike | None = None) -> Path | None:
        """Write the whole project as COCO into ``out_dir``; returns the JSON path."""
        if out_dir is None:
            out_dir = self._ask_path("Export COCO to folder", True, "", directory=True)
            if not out_dir:
                return None
        self.save()
        try:
            path, skipped = self.session.annotation.export_coco(out_dir)
        except (ValueError, OSError) as e:
            self.fail(f"Export COCO: {error_message(e)}")
            return None
        _warn_skipped(skipped)
        self.status.set(f"COCO written: {path}", "ok")
        return path

    def export_via(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the whole project as a VIA 2 project JSON (images beside it)."""
        if path is None:
            path = self._ask_path("Export VIA project", True, "JSON (*.json)")
            if not path:
                return None
        self.save()
        try:
            out, skipped = self.session.annotation.export_via(path)
        except (ValueError, OSError) as e:
            self.fail(f"Export VIA: {error_message(e)}")
            return None
        _warn_skipped(skipped)
        self.status.set(f"VIA written: {out}", "ok")
        return Path(out)

    def open_project_image(self, key: str | None = None) -> Any:
        """Add a stored MIP of the project as a layer and load its polygons; returns it."""
        key = key or self.project_images.value
        if not key or self.project is None:
            self.fail("Open: no project image chosen")
            return None
        try:
            im = self.project.image(key, load_pixels=True)
        except (KeyError, ValueError, OSError) as e:
            self.fail(f"Open: {error_message(e)}")
            return None
        layer = find_layer(self.viewer, f"MIP {key}", "Image")
        if layer is None:
            layer = self.viewer.add_image(
                im.image,
                name=f"MIP {key}",
                colormap="gray",
                contrast_limits=(0.0, 1500.0),
                metadata={"project_key": key},
            )
        self.refresh_choices()
        self.mip_layer.value = layer
        return layer


def _warn_skipped(skipped: int) -> None:
    if skipped:
        notify(f"export: left out {skipped} polygon(s) with fewer than 3 points", "warning")
