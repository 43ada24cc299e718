"""kill -9 at random moments of background project saves: every reopening shows the
polygons of the undo history's current step, and no step reported saved is lost.

A helper process imports the package once and forks one saver per trial (so the 24
trials do not pay 24 imports); each saver opens the project, saves, undoes and redoes in
a loop (waiting for each write, then reporting it), and is killed with SIGKILL after a
random delay. The parent then reopens the project and checks it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_vertebra.annotation.project import AnnotationProject

KEY = "lumbar"
TRIALS = 24
STEP_PX = 0.01  # state i: every polygon moved by i * STEP_PX rows (exact at 3 decimals)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL"),
]

_SAVER = r"""
import json, os, sys
import numpy as np
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.types import VertebraAnnotation


def say(fd, text):
    os.write(fd, (text + "\n").encode())  # unbuffered: reported is on record


def saver(folder, base_path, report, first):
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    base = json.loads(open(base_path, encoding="utf-8").read())
    proj = AnnotationProject(folder, background=True)
    proj.load("lumbar")
    say(fd, "ready")
    i = first
    while True:
        shift = [i * STEP_PX, 0]
        anns = [
            VertebraAnnotation(a["class_id"], [np.asarray(p) + shift for p in a["polygons"]])
            for a in base
        ]
        proj.save("lumbar", anns, label=f"s{i}")
        proj.flush()
        say(fd, f"saved {i}")
        if i % 4 == 3:
            proj.undo("lumbar"); proj.flush(); say(fd, f"undo {i}")
            proj.redo("lumbar"); proj.flush(); say(fd, f"redo {i}")
        i += 1


for line in sys.stdin:
    cmd = json.loads(line)
    if "reap" in cmd:
        os.waitpid(cmd["reap"], 0)
        print("reaped", flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        try:
            saver(cmd["folder"], cmd["base"], cmd["report"], cmd["first"])
        finally:
            os._exit(0)
    print(pid, flush=True)
""".replace("STEP_PX", repr(STEP_PX))


def _state(anns, base) -> int:
    """The state i of saved annotations (their shift over the base polygons)."""
    shift = np.asarray(anns[0]["polygons"][0])[0, 0] - base[0]["polygons"][0][0][0]
    return round(float(shift) / STEP_PX)


def _label_state(label: str) -> int:
    return int(label[1:]) if label.startswith("s") else 0


def _after(event: str) -> tuple[int, str]:
    """(state, next event) of the saver after reporting ``event``."""
    what, i = event.split()
    i = int(i)
    if what == "saved":
        return i, (f"undo {i}" if i % 4 == 3 else f"saved {i + 1}")
    if what == "undo":
        return i - 1, f"redo {i}"
    return i, f"saved {i + 1}"


def _wait_for(path: Path, text: str, proc, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < timeout, f"the saver never reported {text!r}"
        time.sleep(0.005)


def _check_reopened(folder: Path, base: list, events: list[str]) -> bool:
    """Reopen ``folder`` and check it; True when the kill had stopped a save half-way
    (the reopening completed it from the undo history)."""
    proj = AnnotationProject(folder)
    assert not list(folder.rglob(".*.tmp")), "temporary files left after opening"
    anns = [
        {"class_id": a.class_id, "polygons": [p.tolist() for p in a.polygons]}
        for a in proj.load(KEY)
    ]
    hist = proj.history(KEY)
    label = hist.steps[hist.cursor]["label"]
    state = _state(anns, base)
    assert state == _label_state(label), (state, label)  # polygons = the current step
    stored = json.loads((folder / "annotations" / f"{KEY}.json").read_text("utf-8"))
    assert stored["step"] == hist.current_id and stored["annotations"] == hist.payload()
    reported = [e for e in events if e != "ready"]
    if reported:
        done, upcoming = _after(reported[-1])  # the kill may have come during `upcoming`
        assert state in {done, _after(upcoming)[0]}, (state, reported[-1])
        saved = [e.split()[1] for e in reported if e.startswith("saved")][-100:]
        assert {f"s{i}" for i in saved} <= set(hist.labels()), "a reported step is lost"
    if hist.can_undo:  # undo and redo work from the reopened state
        before = _label_state(hist.steps[hist.cursor - 1]["label"])
        back = proj.undo(KEY)
        assert _state([{"polygons": [back[0].polygons[0].tolist()]}], base) == before
        assert proj.redo(KEY) is not None
    repaired = any("had not reached the annotation file" in w for w in proj.warnings)
    proj.close()
    return repaired


def test_kill_during_background_saves_reopens_consistent(tmp_path, lumbar_annotated):
    folder = tmp_path / "proj"
    proj = AnnotationProject(folder)
    proj.add_image(KEY, lumbar_annotated.image, scan="lumbar")
    proj.save(KEY, lumbar_annotated.annotations, label="labels from 3D")
    base = json.loads((folder / "annotations" / f"{KEY}.json").read_text("utf-8"))["annotations"]
    proj.close()
    base_path = tmp_path / "base.json"
    base_path.write_text(json.dumps(base), encoding="utf-8")
    helper = subprocess.Popen(
        [sys.executable, "-c", _SAVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rng = random.Random(19)
    first, repaired = 1, 0
    try:
        for trial in range(TRIALS):
            report = tmp_path / f"report{trial}.txt"
            cmd = {"folder": str(folder), "base": str(base_path), "report": str(report)}
            helper.stdin.write(json.dumps({**cmd, "first": first}) + "\n")
            helper.stdin.flush()
            pid = int(helper.stdout.readline())
            _wait_for(report, f"saved {first}\n", helper)  # saving has begun
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(pid, signal.SIGKILL)
            helper.stdin.write(json.dumps({"reap": pid}) + "\n")
            helper.stdin.flush()
            assert helper.stdout.readline().strip() == "reaped"
            events = report.read_text().split("\n")[:-1]  # complete lines only
            repaired += _check_reopened(folder, base, events)
            last = max(int(e.split()[1]) for e in events if e != "ready")
            first = last + 10  # new labels for the next trial
    finally:
        helper.stdin.close()
        helper.wait(timeout=60)
    print(f"{TRIALS} kills, {repaired} stopped a save half-way")
