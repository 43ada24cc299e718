"""The annotation session behind 'Annotate vertebrae': no Qt, no napari.

An :class:`AnnotationSession` holds the open :class:`~.project.AnnotationProject`
(autosaved: the files are written on the project's background thread), names the MIPs
of the viewer (:meth:`~AnnotationSession.key_for`: project keys), saves each change as
one undoable step, imports COCO / VIA files and exports the whole project. It emits
psygnal events that the widgets listen to: ``project_changed(project)`` and
``saved(key, n_annotations, "HH:MM:SS")``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from .project import AnnotationProject, safe_key
from .types import AnnotatedImage, VertebraAnnotation

__all__ = ["AnnotationSession", "ImportResult", "default_project_dir", "drop_small_polygons"]


def default_project_dir() -> Path:
    """``$NAPARI_VERTEBRA_PROJECT`` or ``~/napari-vertebra-projects/default``."""
    env = os.environ.get("NAPARI_VERTEBRA_PROJECT")
    if env:
        return Path(env).expanduser()
    return Path.home() / "napari-vertebra-projects" / "default"


@dataclass
class ImportResult:
    """What :meth:`AnnotationSession.import_file` took in.

    ``images``: every image of the file; ``match``: the one for the current MIP (or
    None); ``stored``: how many others were added to the project; ``warnings``: repairs
    made while reading (e.g. polygons clipped to the image); ``errors``: images that
    could not be stored ("key: why").
    """

    images: list[AnnotatedImage]
    match: AnnotatedImage | None = None
    stored: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def drop_small_polygons(images: Sequence[AnnotatedImage]) -> int:
    """Leave out (in place) polygons of fewer than 3 points; returns how many went."""
    skipped = 0
    for im in images:
        kept = []
        for a in im.annotations:
            polys = [p for p in a.polygons if len(p) >= 3]
            skipped += len(a.polygons) - len(polys)
            if polys:
                kept.append(dataclasses.replace(a, polygons=polys))
        im.annotations = kept
    return skipped


class AnnotationSession:
    """The open annotation project and the actions on it (see the module docstring).

    Attributes: ``project`` (None until :meth:`open` succeeded), ``n_saves``,
    ``last_saved`` ("HH:MM:SS" of the last save, "" before).
    """

    #: Emitted with the new project (or None) after :meth:`open` / :meth:`close`.
    project_changed = Signal(object)
    #: Emitted after each save: (image key, number of annotations, "HH:MM:SS").
    saved = Signal(str, int, str)

    def __init__(self) -> None:
        self.project: AnnotationProject | None = None
        self.n_saves = 0
        self.last_saved = ""

    # -- project -------------------------------------------------------------------------
    def open(self, folder: str | os.PathLike) -> AnnotationProject:
        """Open (or create) the project in ``folder``, closing the current one first.

        Raises ValueError / OSError when the folder cannot be a project (the session is
        then without a project); an error saving the old project's last changes is
        raised too, after the new one is open.
        """
        pending: OSError | None = None
        if self.project is not None:
            try:
                self.project.close()
            except OSError as e:
                pending = e
        self.project = None
        try:
            self.project = AnnotationProject(Path(folder).expanduser(), background=True)
        finally:
            self.project_changed.emit(self.project)
        if pending is not None:
            raise pending
        return self.project

    def close(self) -> None:
        """Write every pending save to disk and forget the project (raises OSError)."""
        project, self.project = self.project, None
        if project is not None:
            project.close()
            self.project_changed.emit(None)

    def take_warnings(self) -> list[str]:
        """What opening and reading the project repaired since last asked (e.g. a lost
        index rebuilt, an interrupted save completed from the undo history)."""
        return [] if self.project is None else self.project.take_warnings()

    def list_images(self) -> list[str]:
        """The image keys of the project ([] without one, or when it cannot be read)."""
        if self.project is None:
            return []
        try:
            return self.project.list_images()
        except (ValueError, OSError):
            return []

    def __contains__(self, key: str) -> bool:
        return self.project is not None and key in self.project

    # -- naming MIPs ---------------------------------------------------------------------
    def key_for(
        self, name: str, metadata: dict | None, shape: Sequence[int], avoid: str = ""
    ) -> str:
        """The project key of a MIP called ``name`` (a layer's metadata and 2D shape):
        its ``project_key``, its name when the project holds it, else scan + size (with
        ``_2``, ``_3``... when the project holds that key for another grid). A key the
        project holds for an image of another size or grid (``metadata["mip_grid"]``
        against the stored one, see :func:`~.regrid.mip_grid`), or equal to ``avoid``,
        is passed over: polygons are never loaded onto, nor saved against, another
        image."""
        meta = metadata or {}
        size = tuple(int(n) for n in tuple(shape)[-2:])
        grid = meta.get("mip_grid")
        fits = lambda k: k != avoid and self.fits(k, size, grid)  # noqa: E731
        if meta.get("project_key") and fits(safe_key(meta["project_key"])):
            return safe_key(meta["project_key"])
        named = safe_key(name)
        if named in self and fits(named):
            return named
        source = meta.get("source_path") or ""
        base = Path(source).name if source else (meta.get("mip_of") or name)
        key = safe_key(f"{safe_key(base)}_{size[0]}x{size[1]}")
        stem, n = key, 2
        while not fits(key):
            key, n = safe_key(f"{stem}_{n}"), n + 1
        return key

    def fits(self, key: str, shape: tuple[int, int], grid: dict | None = None) -> bool:
        """Whether a MIP of ``shape`` (and ``grid``, when known) may be saved as ``key``:
        the project does not hold it, or holds an image of that size whose recorded grid
        is the same (or unknown)."""
        if self.project is None or key not in self.project:
            return True
        try:
            stored = self.project.image(key, load_pixels=False)
        except (KeyError, ValueError, OSError):  # unreadable polygons: loading says so
            return True
        if (stored.height, stored.width) != tuple(shape):
            return False
        recorded = (stored.meta or {}).get("mip_grid")
        return recorded is None or grid is None or recorded == grid

    @staticmethod
    def scan_for(name: str, metadata: dict | None) -> str:
        """The scan (patient) name of a MIP: its CT's file name, else its name."""
        meta = metadata or {}
        source = meta.get("source_path") or ""
        return safe_key(Path(source).name if source else (meta.get("mip_of") or name))

    # -- saving and history --------------------------------------------------------------
    def save(
        self,
        key: str,
        annotations: Sequence[VertebraAnnotation],
        label: str = "edit",
        image: np.ndarray | None = None,
        scan: str | None = None,
        meta: dict | None = None,
        explicit: bool = False,
    ) -> str:
        """Save ``annotations`` of image ``key`` as one history step named ``label``;
        returns the time stamp "HH:MM:SS".

        The MIP ``image`` is stored first when the project does not hold ``key`` yet (a
        PNG written once, on the calling thread), else ``meta`` fills what the stored
        image does not record; the annotations are written on the
        project's background thread, and with ``explicit`` waited for. Raises
        ValueError / OSError (no project, a bad key, a failed earlier write).
        """
        if self.project is None:
            raise ValueError("no project folder is open")
        if key not in self.project:
            if image is None:
                raise ValueError(f"the project does not hold the image {key!r}")
            self.project.add_image(key, np.asarray(image, np.float32), scan=scan, meta=meta)
        elif meta:
            self.project.fill_meta(key, meta)  # e.g. the pixel spacing of an imported COCO
        self.project.save(key, list(annotations), label=label)
        if explicit:
            self.project.flush()
        self.n_saves += 1
        self.last_saved = time.strftime("%H:%M:%S")
        self.saved.emit(key, len(annotations), self.last_saved)
        return self.last_saved

    def load(self, key: str) -> list[VertebraAnnotation]:
        """The saved annotations of ``key`` ([] when none or without a project)."""
        if self.project is None or key not in self.project:
            return []
        return self.project.load(key)

    def history(self, key: str) -> Any:
        """The undo :class:`~.history.History` of ``key``, or None (no project / key)."""
        if self.project is None or not key:
            return None
        try:
            return self.project.history(key)
        except (ValueError, OSError):
            return None

    def undo(self, key: str) -> list[VertebraAnnotation] | None:
        """The annotations before the last change of ``key`` (None: nothing to undo)."""
        return None if self.project is None else self.project.undo(key)

    def redo(self, key: str) -> list[VertebraAnnotation] | None:
        """The annotations after the last undone change of ``key`` (None: nothing)."""
        return None if self.project is None else self.project.redo(key)

    # -- files ---------------------------------------------------------------------------
    def import_file(
        self, path: str | os.PathLike, key: str, shape: Sequence[int] | None
    ) -> ImportResult:
        """Read a COCO or VIA JSON: the image whose key (or, alone, whose size) matches
        the current MIP ``key`` / ``shape`` is returned as ``match`` (the caller shows
        it); other images with pixels are stored in the project. Raises ValueError /
        OSError for an unreadable file."""
        from .convert import read_annotations

        _, images = read_annotations(path, load_images=True)
        out = ImportResult(images=list(images))
        out.warnings = [w for im in images for w in im.warnings]
        for im in images:
            if safe_key(Path(im.file_name).stem) == key:
                out.match = im
        if out.match is None and len(images) == 1 and shape is not None:
            if (images[0].height, images[0].width) == tuple(shape)[-2:]:
                out.match = images[0]
        name = Path(path).name
        for im in images:
            if im is out.match or im.image is None or self.project is None:
                continue
            k = safe_key(Path(im.file_name).stem)
            try:
                meta = {m: v for m, v in (im.meta or {}).items() if m != "hu_scale"}
                self.project.add_image(k, im.image, scan=im.scan, meta=meta)  # spacing_mm too
                self.project.save(k, im.annotations, label=f"import {name}")
                out.stored += 1
            except (ValueError, OSError) as e:
                out.errors.append(f"{k}: {e}")
        return out

    def export_images(self) -> tuple[list[AnnotatedImage], int]:
        """The project's images with pixels (every save on disk first) and the number
        of polygons of fewer than 3 points left out."""
        if self.project is None:
            raise ValueError("no project folder")
        self.project.flush()
        images = self.project.images(load_pixels=True)
        return images, drop_small_polygons(images)

    def export_coco(self, out_dir: str | os.PathLike) -> tuple[Path, int]:
        """Write the project as COCO into ``out_dir``: (JSON path, polygons left out)."""
        from .coco import write_coco

        images, skipped = self.export_images()
        return Path(write_coco(images, out_dir)), skipped

    def export_via(self, path: str | os.PathLike) -> tuple[Path, int]:
        """Write the project as a VIA 2 project JSON: (its path, polygons left out)."""
        from .via import write_via

        images, skipped = self.export_images()
        return Path(write_via(images, path)), skipped
