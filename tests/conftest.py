"""Shared fixtures: paths of the real CT samples (copied into the repo, see tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "napari_vertebra" / "_sample_data"
DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def lumbar_ct_path() -> Path:
    """TotalSegmentator abdomen/pelvis CT, 3 mm, RAS (the bundled sample)."""
    return SAMPLE_DIR / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def lumbar_labels_path() -> Path:
    """TotalSegmentator v2 label map of the lumbar sample (27 L5 .. 33 T11, 77/78 hips)."""
    return SAMPLE_DIR / "example_seg_fast_force_split.nii.gz"


@pytest.fixture(scope="session")
def tptbox_ct_path() -> Path:
    """TPTBox lumbar crop, 1.5 mm, stored PIR."""
    return DATA_DIR / "tptbox-l3" / "sub-ct_label-22_ct.nii.gz"


@pytest.fixture(scope="session")
def tptbox_labels_path() -> Path:
    """VerSe-id vertebra mask of the TPTBox crop (21 L2, 22 L3, 23 L4)."""
    return DATA_DIR / "tptbox-l3" / "sub-ct_seg-vert_label-22_msk.nii.gz"


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """Folder of 20 axial DICOM slices."""
    return DATA_DIR / "totalseg-dicom" / "example_ct_dicom"


@pytest.fixture(scope="session")
def dicom_labels_path() -> Path:
    """TotalSegmentator label map on the DICOM folder's grid."""
    return DATA_DIR / "totalseg-dicom" / "example_seg_dicom.nii.gz"


# ----------------------------------------------------------------- commands to interrupt
class RunningCommand:
    """A ``napari-vertebra`` command started in a subprocess (this tree's package), its
    stdout and stderr collected line by line, to be interrupted as a user would.

    ``background``: started as a shell starts a background job, with SIGINT ignored.
    """

    def __init__(self, argv: list[str], background: bool = False):
        import os
        import subprocess
        import sys
        import threading

        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # the child writes UTF-8 and is read as UTF-8 whatever this machine's locale says
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "napari_vertebra.cli", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            encoding="utf-8", errors="replace", env=env,
            preexec_fn=_ignore_sigint if background else None,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout: float = 600.0) -> None:
        """Wait until ``condition()`` holds (the command is at work); AssertionError when
        the command ends first or after ``timeout`` seconds (a generous limit)."""
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the command ended first:\n{self.output}"
            assert time.monotonic() < deadline, f"not at work after {timeout} s:\n{self.output}"
            time.sleep(0.05)

    def interrupt(self, timeout: float = 120.0) -> int:
        """Ctrl+C (SIGINT to the command); its exit status. ``children``: the processes
        it had started, as they were just before."""
        import signal

        import psutil

        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout)
        self._reader.join(10)
        return status

    @staticmethod
    def temporary_files(folder: Path) -> list[Path]:
        """The temporary files of atomic writes left under ``folder``."""
        return [p for p in Path(folder).rglob(".*") if ".tmp" in p.name]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture()
def run_command():
    """Start :class:`RunningCommand` s (``run_command(argv, background=False)``); each is
    killed at the end of the test if it still runs."""
    started: list[RunningCommand] = []

    def start(argv: list[str], background: bool = False) -> RunningCommand:
        started.append(RunningCommand([str(a) for a in argv], background))
        return started[-1]

    yield start
    for cmd in started:
        cmd.kill()
