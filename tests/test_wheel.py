"""The wheel: what it holds, its metadata, and shipped configurations found by name from
an install that has no source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel built from the repository, the build's output)."""
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # a copy of what the build reads, so that the build leaves no build/ in the checkout
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "napari_vertebra",
        src / "napari_vertebra",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         str(src), "-w", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=out,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    wheels = list(out.glob("napari_vertebra-*.whl"))
    assert len(wheels) == 1
    return wheels[0], p.stdout + p.stderr


def test_wheel_holds_manifest_samples_and_configs(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    for name in (
        "napari_vertebra/napari.yaml",
        "napari_vertebra/_sample_data/example_ct.nii.gz",
        "napari_vertebra/_sample_data/example_seg_fast_force_split.nii.gz",
        "napari_vertebra/_sample_data/LICENSE",
        "napari_vertebra/configs/paper.yaml",
        "napari_vertebra/configs/smoke.yaml",
        "napari_vertebra/configs/synth-r50.yaml",
        "napari_vertebra/configs/levels.yaml",
        "napari_vertebra/configs/starter.yaml",
        "napari_vertebra/weights/starter.pt",
        "napari_vertebra/weights/starter_replay/annotations.json",
    ):
        assert name in names, name
    assert any(n.startswith("napari_vertebra/weights/starter_replay/images/") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(path).read(meta).decode()
    assert "License-Expression: BSD-3-Clause" in text


def test_packaging_metadata_raises_no_deprecation_warning(wheel):
    _, output = wheel
    flagged = [
        line
        for line in output.splitlines()
        if "BuildBackendWarning" in line or "SetuptoolsDeprecationWarning" in line
    ]
    assert not flagged, flagged


def test_configs_and_the_starter_model_from_an_install_without_source_tree(wheel, tmp_path):
    path, _ = wheel
    target = tmp_path / "site"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), str(path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    # -S: no site processing, so the editable install of the checkout is not found; the
    # environment's packages (numpy, yaml, torch) come after the installed wheel
    site = sysconfig.get_paths()["purelib"]
    code = f"""
import sys
sys.path[:] = [{str(target)!r}, {site!r}] + [p for p in sys.path if "site-packages" not in p
                                             and not p.startswith({str(ROOT)!r}) and p]
import napari_vertebra
assert napari_vertebra.__file__.startswith({str(target)!r}), napari_vertebra.__file__
from napari_vertebra.model.config import config_path, load_config, shipped_configs
assert set(shipped_configs()) >= {{"paper", "smoke", "synth-r50"}}
assert str(config_path("paper")).startswith({str(target)!r})
from napari_vertebra.model.train import get_args_parser, given_keys
args = get_args_parser().parse_args(["--config", "paper", "--data", "D", "-o", "R"])
keys = given_keys(args)
from napari_vertebra.model.starter import replay_folder, starter_checkpoint
assert str(starter_checkpoint()).startswith({str(target)!r}), starter_checkpoint()
assert str(replay_folder()).startswith({str(target)!r}), replay_folder()
from napari_vertebra.model.predict import Predictor
assert Predictor(starter_checkpoint()).config.class_set == "extended"
print(load_config("paper").backbone, keys["backbone"], keys["batch_size"])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
        check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    import yaml

    paper = yaml.safe_load((ROOT / "napari_vertebra" / "configs" / "paper.yaml").read_text())
    backbone, given_backbone, batch = r.stdout.split()
    assert backbone == given_backbone == paper["backbone"]
    assert int(batch) == paper["batch_size"]
