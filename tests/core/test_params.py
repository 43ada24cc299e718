"""PreprocessParams: defaults, validation, JSON."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from napari_vertebra.core import STEP_PARAMS, PreprocessParams


def test_defaults_follow_the_paper():
    p = PreprocessParams()
    assert (p.spacing_mm, p.hu_min, p.hu_max, p.n_clusters) == (1.0, 100.0, 1500.0, 3)
    assert 0 < p.canal_r_min_mm < p.canal_r_max_mm
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.hu_min = 0  # type: ignore[misc]


def test_json_round_trip():
    p = PreprocessParams(hu_min=150.0, n_clusters=2)
    assert PreprocessParams.from_json(p.to_json()) == p
    assert p.replace(hu_min=100.0) == PreprocessParams(n_clusters=2)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"spacing_mm": 0}, "spacing_mm"),
        ({"hu_min": 500, "hu_max": 400}, "hu_max"),
        ({"canal_r_min_mm": 9, "canal_r_max_mm": 8}, "canal_r_min_mm"),
        ({"n_clusters": 0}, "n_clusters"),
        ({"crop_margin_lr_mm": -1}, "crop_margin_lr_mm"),
        ({"interpolator": "cubic"}, "interpolator"),
    ],
)
def test_invalid_values(changes, match):
    with pytest.raises(ValueError, match=match):
        PreprocessParams(**changes)


def test_unknown_keys_and_bad_json():
    with pytest.raises(ValueError, match="hu_mim"):
        PreprocessParams.from_dict({"hu_mim": 3})
    with pytest.raises(ValueError, match="JSON"):
        PreprocessParams.from_json("{hu_min: 3")


def test_every_parameter_belongs_to_one_step():
    names = [n for step in STEP_PARAMS.values() for n in step]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(PreprocessParams))


def test_core_imports_no_gui_or_torch():
    code = (
        "import sys, napari_vertebra.core, napari_vertebra.commands.preprocess\n"
        "bad = [m for m in ('torch', 'napari', 'PyQt6', 'PyQt5', 'qtpy', 'PySide6', "
        "'magicgui', 'torchvision') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
