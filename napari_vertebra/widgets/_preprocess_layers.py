"""The layers of 'Preprocess CT': each pipeline step shown, updated in place.

:class:`PreprocessLayers` is the half of :class:`~.preprocess.PreprocessWidget` that
turns a :class:`~napari_vertebra.core.PipelineResult` into napari layers and switches
between the MIP (2D) and the volume (3D) views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.annotation.regrid import mip_grid
from napari_vertebra.core import PipelineResult
from napari_vertebra.core.box_outline import box_edges_path, box_rectangles
from napari_vertebra.core.pipeline import mip_labels

from ._layers import (
    class_label_colormap,
    class_label_features,
    find_layer,
    geometry_metadata,
    layer_kwargs,
    same_layer,
    upsert_layer,
)
from ._shapes import hex_rgba
from ._view import fit_to_layer

__all__ = ["BOX_COLOUR", "CARRIED_COLOUR", "FOUND_COLOUR", "PreprocessLayers"]

FOUND_COLOUR = "#00e5ff"
CARRIED_COLOUR = "#ff4fd8"
BOX_COLOUR = "#ffd400"


class PreprocessLayers:
    """Mixin of the Preprocess widget: result layers, MIP / volume views.

    Uses the widget's ``viewer``, ``session``, ``result``, ``result_layers``,
    ``labels_layer``, ``view_button``, ``_ct_name`` and ``_ct_layer_ref``.
    """

    # -- layers ------------------------------------------------------------------------
    def layer_names(self, ct_name: str | None = None) -> dict[str, str]:
        """{role: layer name} of the result layers of CT ``ct_name``."""
        n = ct_name or self._ct_name
        return {
            "windowed": f"windowed {n}",
            "canal": f"canal centres {n}",
            "box": f"crop box {n}",
            "mip": f"MIP {n}",
            "mip_labels": f"MIP labels {n}",
        }

    def _show_layers(self, r: PipelineResult) -> None:
        names = self.layer_names()
        layers: dict[str, Any] = {
            "windowed": self._show_windowed(r, names["windowed"]),
            "canal": self._show_canal(r, names["canal"]),
            "box": self._show_box(r, names["box"]),
            "mip": self._show_mip_image(r, names["mip"]),
        }
        self.session.set_result(layers["mip"], r)
        lab = mip_labels(r)
        if lab is not None:
            layers["mip_labels"], _ = upsert_layer(
                self.viewer, names["mip_labels"], lab, "Labels",
                colormap=class_label_colormap(), features=class_label_features(),
                opacity=0.45, metadata={"mip_of": self._ct_name},
            )  # fmt: skip
        self.result_layers = layers
        self.show_mip()

    def _show_windowed(self, r: PipelineResult, name: str) -> Any:
        """The windowed 1 mm volume."""
        layer, _ = upsert_layer(
            self.viewer,
            name,
            r.windowed.array,
            "Image",
            **layer_kwargs(
                r.windowed,
                colormap="gray",
                contrast_limits=(0.0, float(r.params.hu_max)),
                metadata={"source_layer": self._ct_name},
            ),
        )
        return layer

    def _show_canal(self, r: PipelineResult, name: str) -> Any:
        """The canal centre of every slice: found (cyan) or carried across (magenta)."""
        found = np.asarray(r.canal_found, bool)
        colours = np.where(found[:, None], hex_rgba(FOUND_COLOUR), hex_rgba(CARRIED_COLOUR))
        layer, _ = upsert_layer(
            self.viewer, name, np.asarray(r.canal_centres, float), "Points",
            features={"found": found}, face_color=colours, border_color=colours,
            size=max(3.0, 6.0 / r.params.spacing_mm), **r.resampled.napari_kwargs(),
        )  # fmt: skip
        # keep the colours right on re-run (setting data may recycle the old colours)
        layer.face_color = colours
        layer.border_color = colours
        return layer

    def _show_box(self, r: PipelineResult, name: str) -> Any:
        """The crop box: its outline on every slice in 2D, its edges in 3D."""
        shapes, kinds = self._box_shapes(r.crop_box)
        layer, added = upsert_layer(
            self.viewer, name, shapes, "Shapes", shape_type=kinds, edge_color=BOX_COLOUR,
            face_color="transparent", edge_width=1.5, **r.resampled.napari_kwargs(),
        )  # fmt: skip
        layer.metadata["crop_box"] = [list(map(int, b)) for b in r.crop_box]
        if not added:
            layer.edge_color = BOX_COLOUR
            layer.face_color = "transparent"
        return layer

    def _show_mip_image(self, r: PipelineResult, name: str) -> Any:
        """The MIP, with what Annotate and a saved project need in its metadata."""
        source = (getattr(self._ct_layer_ref, "metadata", None) or {}).get("source_path", "")
        meta = {
            "mip_of": self._ct_name,
            "source_path": source,
            "crop_box": [list(map(int, b)) for b in r.crop_box],
            "params": r.params.to_dict(),
            "resampled_geometry": geometry_metadata(r.resampled)["volume_geometry"],
            "preprocess_result": True,
            "mip_grid": mip_grid(r),
        }
        layer, _ = upsert_layer(
            self.viewer, name, r.mip, "Image", colormap="gray",
            contrast_limits=(0.0, float(r.params.hu_max)), metadata=meta,
        )  # fmt: skip
        return layer

    def _box_shapes(self, box: Any) -> tuple[list[np.ndarray], list[str]]:
        """The crop box as napari shows it: per-slice rectangles in 2D, edges in 3D."""
        if self.viewer.dims.ndisplay == 3:
            return [box_edges_path(box)], ["path"]
        rects = box_rectangles(box)
        return rects, ["rectangle"] * len(rects)

    def _on_ndisplay(self, *_: Any) -> None:
        layer = self.result_layers.get("box")
        if self.result is None or layer is None or layer not in self.viewer.layers:
            return
        shapes, kinds = self._box_shapes(self.result.crop_box)
        upsert_layer(self.viewer, layer.name, shapes, "Shapes", shape_type=kinds)
        layer.edge_color = BOX_COLOUR
        layer.face_color = "transparent"

    def _volume_layers(self) -> list[Any]:
        out = [self._ct_layer_ref] if self._ct_layer_ref is not None else []
        if self.labels_layer.value is not None:
            out.append(self.labels_layer.value)
        out += [self.result_layers.get(k) for k in ("windowed", "canal", "box")]
        return [x for x in out if x is not None and x in self.viewer.layers]

    def _mip_layers(self) -> list[Any]:
        out = [self.result_layers.get(k) for k in ("mip", "mip_labels")]
        return [x for x in out if x is not None and x in self.viewer.layers]

    def show_mip(self) -> None:
        """Hide the 3D layers, show the MIP (2D view, fitted)."""
        for layer in self._volume_layers():
            layer.visible = False
        for layer in self._mip_layers():
            layer.visible = True
        mip = self.result_layers.get("mip")
        if mip is not None and mip in self.viewer.layers:
            self.viewer.dims.ndisplay = 2
            self.viewer.layers.selection.active = mip
            fit_to_layer(self.viewer, mip)
        self.view_button.text = "Show volume"

    def show_volume(self) -> None:
        """Show the CT and the 3D steps (windowed volume, canal, box), hide the MIP."""
        for layer in self._mip_layers():
            layer.visible = False
        vols = self._volume_layers()
        labels = self.labels_layer.value
        for layer in vols:
            # the windowed volume replaces the CT (and covers the labels) on screen
            is_ct = same_layer(layer, self._ct_layer_ref)
            layer.visible = (not is_ct or len(vols) == 1) and not same_layer(layer, labels)
        box = self.result_layers.get("box")
        if box is not None and box in self.viewer.layers:
            fit_to_layer(self.viewer, box, margin=0.25)
        elif vols:
            fit_to_layer(self.viewer, vols[0])
        self.view_button.text = "Show MIP"

    def _toggle_view(self) -> None:
        if self.view_button.text == "Show volume":
            self.show_volume()
        else:
            self.show_mip()

    def mip_layer(self) -> Any:
        """The MIP layer of the last run (or None)."""
        layer = self.result_layers.get("mip")
        if layer is None or layer not in self.viewer.layers:
            return find_layer(self.viewer, self.layer_names()["mip"], "Image")
        return layer
