"""Fixtures for the annotation tests: synthetic annotated MIPs and the lumbar sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.draw import ellipse

from napari_vertebra.annotation.polygons import mask_to_polygons
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation


def synthetic_image(
    scan: str, first: int = 1, n: int = 17, seed: int = 0, step: int = 22
) -> AnnotatedImage:
    """A fake sagittal MIP: ``n`` ellipses stacked top to bottom labelled ``first``.. in
    anatomical order, with bone-like values (HU) and the polygons of their masks."""
    rng = np.random.default_rng(seed)
    h, w = n * step + 30, 90
    img = rng.uniform(0, 50, (h, w)).astype(np.float32)
    anns = []
    for k in range(n):
        r = 15 + k * step + step / 2
        c = 45 + rng.uniform(-5, 5)
        rr, cc = ellipse(r, c, step * 0.4, 25 + rng.uniform(-4, 4), (h, w))
        mask = np.zeros((h, w), bool)
        mask[rr, cc] = True
        img[mask] = rng.uniform(300, 1200)
        anns.append(VertebraAnnotation(first + k, mask_to_polygons(mask)))
    return AnnotatedImage(f"{scan}.png", h, w, anns, image=img, scan=scan)


@pytest.fixture
def make_synthetic():
    return synthetic_image


@pytest.fixture(scope="session")
def lumbar_pipeline(lumbar_ct_path, lumbar_labels_path):
    """(ct, labels, PipelineResult) of the lumbar sample with its labels (run once)."""
    from napari_vertebra.core import read_ct, read_labels, run_pipeline

    ct = read_ct(lumbar_ct_path)
    labels = read_labels(lumbar_labels_path, like=ct)
    return ct, labels, run_pipeline(ct, labels=labels)


@pytest.fixture(scope="session")
def lumbar_annotated(lumbar_pipeline):
    """The lumbar sample's MIP annotated from its TotalSegmentator labels."""
    from napari_vertebra.annotation.from3d import labels_to_annotations

    ct, labels, result = lumbar_pipeline
    return labels_to_annotations(ct, labels, "totalsegmentator", result=result, scan="lumbar")


def _files_in(folder) -> set:
    folder = Path(folder)
    if not folder.exists():
        return set()
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.fixture
def files_in():
    """Every file under a folder (relative paths), for 'nothing written' checks."""
    return _files_in


@pytest.fixture
def cli(monkeypatch):
    """``napari_vertebra.cli.main`` with only the annotation commands registered (the
    other areas' imports are not this area's test cost)."""
    from napari_vertebra import cli as cli_module

    monkeypatch.setattr(cli_module, "COMMAND_MODULES", ("napari_vertebra.commands.annotation",))
    return cli_module.main
