"""Ctrl+C (SIGINT) stops a command at once: exit status 130, the finished work kept and
nothing half-written (issue 19: ``preprocess`` went on to the end, with ``--workers 2``
too). Each command runs in a subprocess on the real samples and is interrupted once it is
at work; also as a shell's background job (SIGINT ignored when it starts), where the
command still stops. The timeouts are generous limits, not speed assertions."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from napari_vertebra.cli import main
from napari_vertebra.commands.preprocess import OUTPUT_FILES, output_name

pytestmark = pytest.mark.slow

N_SCANS = 6


def _snapshot(folder) -> dict[str, str]:
    """{relative path: SHA-1} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("workers", "background"), [(2, False), (1, True)])
def test_preprocess_stops_keeping_the_finished_scans(
    tmp_path, lumbar_ct_path, run_command, workers, background
):
    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(N_SCANS):
        shutil.copy(lumbar_ct_path, scans / f"ct{k}.nii.gz")
    out = tmp_path / "out"
    cmd = run_command(
        ["preprocess", scans, "-o", out, "--workers", workers], background=background
    )
    cmd.wait_for(lambda: any(out.glob("*/report.json")))  # a scan is finished
    assert cmd.interrupt() == 130, cmd.output
    assert "interrupted" in cmd.output and "Traceback" not in cmd.output
    assert not [p for p in cmd.children if p.is_running() and p.status() != "zombie"]
    # the finished scans are whole; the ones in progress left nothing
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < N_SCANS, done
    for name in done:
        assert all((out / name / f).is_file() for f in OUTPUT_FILES), name
        json.loads((out / name / "report.json").read_text(encoding="utf-8"))
    assert not cmd.temporary_files(out)
    # the same command does the rest, skipping the finished scans
    assert main(["preprocess", str(scans), "-o", str(out)]) == 0
    assert len(list(out.glob("*/report.json"))) == N_SCANS
    assert {output_name(p) for p in scans.iterdir()} == {p.name for p in out.iterdir()}


@pytest.mark.parametrize("background", [False, True])
def test_dataset_build_stops_leaving_the_dataset_as_it_was(
    tmp_path, lumbar_ct_path, lumbar_labels_path, tptbox_ct_path, tptbox_labels_path,
    run_command, background,
):  # fmt: skip
    from napari_vertebra.synth import write_synth_columns

    # a dataset built before: the finished work that the interrupted rebuild keeps
    write_synth_columns(tmp_path / "cols", 3, views_per_column=1, seed=2)
    out = tmp_path / "dataset"
    coco = tmp_path / "cols" / "train" / "annotations.json"
    assert main(["dataset", "build", str(coco), "-o", str(out), "-q"]) == 0
    before = _snapshot(out)
    pairs = tmp_path / "pairs.csv"
    rows = [
        (lumbar_ct_path, lumbar_labels_path, "totalsegmentator", "a"),
        (tptbox_ct_path, tptbox_labels_path, "verse", "b"),
        (lumbar_ct_path, lumbar_labels_path, "totalsegmentator", "c"),
    ]
    pairs.write_text(
        "ct,labels,convention,scan\n" + "".join(f"{c},{lab},{v},{s}\n" for c, lab, v, s in rows),
        encoding="utf-8",
    )
    cmd = run_command(["dataset", "build", "--pairs", pairs, "-o", out], background=background)
    cmd.wait_for(lambda: "reading" in cmd.output)  # at work on the first scan
    assert cmd.interrupt() == 130, cmd.output
    assert "interrupted" in cmd.output and "Traceback" not in cmd.output
    assert _snapshot(out) == before
    assert not cmd.temporary_files(out)
