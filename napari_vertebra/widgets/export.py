"""The "Export dataset" dock widget: partial views + train / val / test split by scan.

Inputs are the annotated MIPs of an annotation project folder and/or COCO files; the
work is :func:`napari_vertebra.annotation.dataset.build_dataset` on a worker thread.
"Split by scan" (:class:`~._export_scans.ScanSplits`) puts chosen scans in chosen splits;
after a build the status line and a notification warn about an empty or tiny split, a
train split smaller than another and the biggest scan outside train
(:func:`~._export_scans.split_warnings`).
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, FileEdit, FloatSpinBox, Label, PushButton, SpinBox

from napari_vertebra.annotation.dataset import SPLITS, build_dataset
from napari_vertebra.annotation.project import AnnotationProject

from ._base import VertebraWidget
from ._export_scans import ScanSplits, split_warnings
from ._status import error_message, notify

if TYPE_CHECKING:  # napari passes the viewer to a parameter annotated like this
    import napari.viewer

__all__ = ["ExportDatasetWidget", "empty_split_warning", "summary_html"]


def empty_split_warning(summary: dict, fractions: dict[str, float]) -> str:
    """Plain words when a split that was asked for came out empty ("" when none did).

    The split is made by scan (one patient never sits in two splits), so a split is
    empty when there are fewer scans than splits asked for.
    """
    splits = summary.get("splits", {})
    empty = [n for n in SPLITS if fractions.get(n, 0) > 0 and not splits.get(n, {}).get("images")]
    if not empty:
        return ""
    scans = sorted({s for v in splits.values() for s in v.get("scans", [])})
    advice = (
        "Training will then validate on the train split (its scores say little about new "
        "scans); annotate MIPs of more scans, one split needs at least one scan of its own"
    )
    if "train" in empty:
        advice = "Training needs a train split: raise the train fraction or annotate more scans"
    return (
        f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: "
        f"the split is made by scan and {len(scans)} scan{'s' if len(scans) != 1 else ''} "
        f"{'were' if len(scans) != 1 else 'was'} exported. {advice}."
    )


def summary_html(summary: dict) -> str:
    """A small HTML table of images / vertebrae / scans per split (from dataset.json)."""
    rows = ["<tr><th>split</th><th>scans</th><th>images</th><th>vertebrae</th></tr>"]
    for name in SPLITS:
        s = summary.get("splits", {}).get(name, {})
        rows.append(
            f"<tr><td>{name}</td><td align='right'>{len(s.get('scans', []))}</td>"
            f"<td align='right'>{s.get('images', 0)}</td>"
            f"<td align='right'>{s.get('annotations', 0)}</td></tr>"
        )
    return "<table cellspacing='6'>" + "".join(rows) + "</table>"


class ExportDatasetWidget(VertebraWidget):
    """Build a Mask R-CNN training set from annotated MIPs.

    Attributes: ``project_dir`` (FileEdit, folder), ``use_project`` (CheckBox),
    ``coco_files`` (FileEdit, several files), ``output_dir``, ``views_per_image``,
    ``min_visible``, ``train_fraction`` / ``val_fraction`` / ``test_fraction``, ``seed``,
    ``include_full``, ``build_button``, ``summary_label``, ``paths`` ({split: JSON path}
    after a build), ``summary`` (dataset.json content). Handlers: :meth:`inputs`,
    :meth:`build`.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        parent: Any = None,
        project_dir: str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
    ):
        super().__init__(viewer, parent)
        from napari_vertebra.annotation.session import default_project_dir

        self.paths: dict[str, Path] = {}
        self.summary: dict = {}
        self._fractions: dict[str, float] = {}
        open_project = self.session.project  # the one 'Annotate vertebrae' opened
        if project_dir:
            proj = Path(project_dir)
        else:
            proj = open_project.folder if open_project is not None else default_project_dir()
        self.project_dir = FileEdit(mode="d", value=str(proj), label="project folder")
        self.use_project = CheckBox(value=True, label="use the project's MIPs")
        self.coco_files = FileEdit(mode="rm", filter="*.json", label="COCO files (optional)")
        out = Path(output_dir) if output_dir else proj.parent / f"{proj.name}-dataset"
        self.output_dir = FileEdit(mode="d", value=str(out), label="output folder")
        self.add_form(self.project_dir, self.use_project, self.coco_files, self.output_dir)

        self.views_per_image = SpinBox(value=10, min=0, max=1000, label="views per image")
        self.views_per_image.tooltip = "Partial views (random runs of vertebrae) per MIP."
        self.min_visible = FloatSpinBox(
            value=0.5, min=0.0, max=1.0, step=0.05, label="min visible fraction"
        )
        self.min_visible.tooltip = "A vertebra cut by a view is kept when this much shows."
        self.include_full = CheckBox(value=True, label="include the full MIPs")
        self.train_fraction = FloatSpinBox(value=0.7, min=0, max=1, step=0.05, label="train")
        self.val_fraction = FloatSpinBox(value=0.15, min=0, max=1, step=0.05, label="val")
        self.test_fraction = FloatSpinBox(value=0.15, min=0, max=1, step=0.05, label="test")
        self.seed = SpinBox(value=0, min=0, max=1_000_000, label="seed")
        self.add_form(
            self.views_per_image,
            self.min_visible,
            self.include_full,
            self.train_fraction,
            self.val_fraction,
            self.test_fraction,
            self.seed,
        )
        self._add_scan_splits()
        self.build_button = PushButton(text="Build dataset")
        self.build_button.changed.connect(lambda *_: self.build())
        self.add_buttons(self.build_button)
        self.summary_label = Label(value="")
        self.add(self.summary_label)
        self.add_status()
        self._listen(self.session.annotation.project_changed, self._on_project_changed)

    def _add_scan_splits(self) -> None:
        """The split-by-scan pickers (refreshed with the project, the fractions, the seed)."""
        self.add(Label(value="<b>Split by scan</b> (auto: by the fractions above)"))
        self.scan_splits = ScanSplits(on_change=self._show_auto)
        self.add(self.scan_splits.container)
        self.refresh_scans_button = self.button("Refresh scans", self.refresh_scans)
        self.add_buttons(self.refresh_scans_button)
        for w in (self.train_fraction, self.val_fraction, self.test_fraction, self.seed):
            w.changed.connect(lambda *_: self._show_auto())
        for w in (self.project_dir, self.use_project):
            w.changed.connect(lambda *_: self.refresh_scans())
        self.refresh_scans()

    def _fraction_values(self) -> tuple[float, float, float]:
        return (
            float(self.train_fraction.value),
            float(self.val_fraction.value),
            float(self.test_fraction.value),
        )

    def _show_auto(self) -> None:
        self.scan_splits.show_auto(self._fraction_values(), int(self.seed.value))

    def refresh_scans(self) -> None:
        """Read the project's annotated scans into the split-by-scan pickers."""
        try:
            images = self._project_images() if self.use_project.value else []
        except (ValueError, OSError):
            images = []
        self.scan_splits.set_scans(images, self._fraction_values(), int(self.seed.value))

    def _on_project_changed(self, project: Any) -> None:
        """Follow the project opened in 'Annotate vertebrae' (through the session)."""
        if project is not None:
            self.project_dir.value = str(project.folder)

    def inputs(self) -> list[Any]:
        """The builder's inputs: the project's images (with pixels) and the COCO files."""
        items: list[Any] = []
        if self.use_project.value:
            items.extend(self._project_images(load_pixels=True))
        files = self.coco_files.value or ()
        if isinstance(files, (str, os.PathLike)):
            files = (files,)
        items.extend(str(f) for f in files if str(f) not in ("", "."))
        if not items:
            raise ValueError("nothing to export: annotate some MIPs or choose COCO files")
        return items

    def _project_images(self, load_pixels: bool = False) -> list[Any]:
        """The project's images with at least one polygon of 3 points or more."""
        folder = Path(str(self.project_dir.value)).expanduser()
        if not any((folder / n).exists() for n in ("project.json", "images", "annotations")):
            raise ValueError(f"{folder}: not an annotation project (no project.json)")
        out = []
        for im in AnnotationProject(folder).images(load_pixels=load_pixels):
            im.annotations = [a for a in im.annotations if any(len(p) >= 3 for p in a.polygons)]
            if im.annotations:
                out.append(im)
        return out

    def build(self) -> bool:
        """Build the dataset on a worker thread; False if it cannot start."""
        try:
            items = self.inputs()
            self.refresh_scans()
            fractions = self._fraction_values()
            if sum(fractions) <= 0:
                raise ValueError("the split fractions are all 0")
            out = Path(str(self.output_dir.value)).expanduser()
        except (ValueError, OSError) as e:
            self.fail(f"Export: {error_message(e)}")
            return False
        self._fractions = dict(zip(SPLITS, fractions, strict=True))
        work = partial(
            build_dataset,
            items,
            out,
            views_per_image=int(self.views_per_image.value),
            seed=int(self.seed.value),
            fractions=fractions,
            min_visible=float(self.min_visible.value),
            include_full=bool(self.include_full.value),
            split_by_scan=self.scan_splits.fixed(),
        )
        self.summary_label.value = ""
        return self.runner.start(
            work, on_done=partial(self._on_built, out), description="Building the dataset"
        )

    def _on_built(self, out: Path, paths: dict[str, Path]) -> None:
        self.paths = {k: Path(v) for k, v in paths.items()}
        try:
            self.summary = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.summary = {}
        self.summary_label.value = summary_html(self.summary)
        n = sum(s.get("images", 0) for s in self.summary.get("splits", {}).values())
        warning = empty_split_warning(self.summary, self._fractions)
        sizes = split_warnings(self.summary, self._fractions, self.scan_splits.sizes)
        if sizes:
            sizes_text = "; ".join(sizes)
            advice = (
                "Choose the split by scan above (e.g. the biggest scan to train) and build again"
            )
            warning = f"{warning} Also: {sizes_text}." if warning else f"{sizes_text}. {advice}."
        if warning:
            self.status.set(f"dataset written to {out} ({n} images); {warning}", "warning")
            notify(f"Export: {warning}", "warning")
        else:
            self.status.set(f"dataset written to {out} ({n} images)", "ok")
