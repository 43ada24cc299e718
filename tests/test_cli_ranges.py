"""Command-line values out of range are refused with the valid range, and nothing is
written (issue 19: ``--fractions 0.5 0.5 0.5``, ``--views-per-image -3``, ``predict
--min-score 2`` and ``train --data nodata`` were accepted, or left a run folder behind)."""

from __future__ import annotations

import pytest

from napari_vertebra.cli import main


def _refused(capsys, argv: list[str], *expected: str) -> str:
    """Run ``argv``; it must end with status 2 and an error naming ``expected``."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's refusal
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, (argv, err)
    assert "error" in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, (argv, text, err)
    return err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--fractions", "0.5", "0.5", "0.5"], ("--fractions", "= 1.5", "sum to 1")),
        (["--fractions", "1.2", "-0.1", "-0.1"], ("--fractions", "0..1")),
        (["--views-per-image", "-3"], ("--views-per-image", "-3", "at least 0")),
        (["--min-vertebrae", "0"], ("--min-vertebrae", "at least 1")),
        (["--min-vertebrae", "6", "--max-vertebrae", "5"], ("--min-vertebrae 6", "4..17")),
        (["--min-visible", "1.5"], ("--min-visible", "0..1")),
        (["--tolerance", "-1"], ("--tolerance", "0 or more")),
        (["--seed", "-1"], ("--seed", "at least 0")),
    ],
)
def test_dataset_build_refuses_values_out_of_range(tmp_path, capsys, args, expected):
    out = tmp_path / "ds"
    coco = tmp_path / "in.json"  # never read: the options are refused first
    _refused(capsys, ["dataset", "build", str(coco), "-o", str(out), "-q", *args], *expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["predict", "x.pt", "mip.png", "--min-score", "2"], ("--min-score", "0..1")),
        (["predict", "x.pt", "mip.png", "--min-score", "-0.1"], ("--min-score", "0..1")),
        (["predict", "x.pt", "mip.png", "--hu-scale", "0"], ("--hu-scale", "above 0")),
        (["predict", "x.pt", "mip.png", "--spacing", "-1"], ("--spacing", "above 0")),
        (["evaluate", "x.pt", "--data", "d", "--min-score", "7.5"], ("--min-score", "0..1")),
        (["evaluate", "x.pt", "--data", "d", "--max-dist", "0"], ("--max-dist", "above 0")),
        (["synth", "--n", "2"], ("--n", "at least 3")),
        (["synth", "--fractions", "0.5", "0.5", "0.5"], ("sum to 1",)),
        (["synth", "--views-per-image", "-1"], ("--views-per-image", "at least 0")),
        (["synth", "--spacing", "0"], ("--spacing", "above 0")),
        (["preprocess", "ct.nii.gz", "--workers", "0"], ("--workers", "at least 1")),
        (["labels-to-coco", "ct.nii.gz", "lab.nii.gz", "--min-visible", "2"], ("0..1",)),
        (["convert", "a.json", "b.json", "--image-size", "0", "10"], ("at least 1",)),
    ],
)
def test_commands_refuse_values_out_of_range(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    _refused(capsys, [*argv, "-o", str(out)] if argv[0] != "convert" else argv, *expected)
    assert not out.exists()


def test_synth_modes_refuse_the_other_modes_options(tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["synth", "-o", str(out), "--partial"], "--partial goes with --size")
    _refused(
        capsys, ["synth", "-o", str(out), "--size", "128", "64", "--views-per-image", "2"],
        "--size images take --partial",
    )  # fmt: skip
    assert not out.exists()


@pytest.mark.torch
def test_train_on_missing_data_writes_nothing(tmp_path, capsys):
    """``train --data nodata`` is refused before the run folder is made: no
    RUN/progress.jsonl is left behind."""
    run = tmp_path / "RUN"
    _refused(
        capsys, ["train", "--config", "smoke", "--data", str(tmp_path / "nodata"), "-o", str(run)],
        "nodata", "train/annotations.json",
    )  # fmt: skip
    assert not run.exists()
