"""A training run folder, without Qt: its files, the trainer process, stop, progress.

The Train widget (and any other front end) starts training as a separate process, the
same code as the command line (``python -m napari_vertebra.cli train --config CFG --data
DIR -o RUN [--resume]``), and follows it through the files of the run folder:

``progress.jsonl``
    the trainer's progress events, one JSON line per step and per epoch (the protocol
    of :mod:`napari_vertebra.model.progress`): the one file a front end reads to follow
    a run.
``log.csv``, ``last.pt``, ``best.pt``, ``config.yaml``
    the trainer's per-epoch table and checkpoints (:mod:`napari_vertebra.model.train`).
``STOP``
    a stop request: the trainer sees it before its next step, saves ``last.pt``, exits.
``train.out``, ``train.pid``, ``widget_config.yaml``
    the process's output, its id (so that a reopened run can be followed) and the
    configuration it was started with.

Imports neither Qt nor napari nor torch.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .progress import PROGRESS_NAME, ProgressReader, TrainProgress

__all__ = [
    "LOG_NAME",
    "PID_NAME",
    "STDOUT_NAME",
    "STOP_NAME",
    "GpuProbe",
    "Outcome",
    "RunError",
    "TrainingRun",
    "checkpoint_problem",
    "checkpoints",
    "default_run_dir",
    "is_run_folder",
    "last_meaningful_line",
    "level_check",
    "lower_priority",
    "open_run",
    "pid_alive",
    "train_command",
]

#: Files of a run folder.
LOG_NAME = "log.csv"
STOP_NAME = "STOP"
STDOUT_NAME = "train.out"
PID_NAME = "train.pid"
REQUESTED_CONFIG_NAME = "widget_config.yaml"
#: Files any of which makes a folder a run folder.
RUN_MARKERS = (LOG_NAME, PROGRESS_NAME, "config.yaml", "last.pt", "best.pt", PID_NAME)


class RunError(ValueError):
    """A run cannot start, resume or be opened; the message says why in plain words."""


# ------------------------------------------------------------------ run folders
def default_run_dir(root: str | os.PathLike | None = None, now: float | None = None) -> Path:
    """A new run folder name: ``ROOT/run-YYYYmmdd-HHMMSS`` (ROOT defaults to
    ``~/napari-vertebra-runs``), with ``-2``, ``-3``... when that folder exists."""
    base = Path(root) if root is not None else Path.home() / "napari-vertebra-runs"
    name = time.strftime("run-%Y%m%d-%H%M%S", time.localtime(now))
    path, n = base / name, 1
    while path.exists():
        n += 1
        path = base / f"{name}-{n}"
    return path


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that a training run wrote (log, config or checkpoint)."""
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in RUN_MARKERS)


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run folder's checkpoints, ``best.pt`` first, then ``last.pt``, then the rest."""
    order = {"best.pt": 0, "last.pt": 1}
    return sorted(Path(run_dir).glob("*.pt"), key=lambda p: (order.get(p.name, 2), p.name))


def checkpoint_problem(path: str | os.PathLike) -> str:
    """Why the checkpoint at ``path`` cannot be predicted with, in plain words ("" when
    it reads as one of our checkpoints with a valid configuration). Loads the file
    (torch, imported here without Triton, as the Predict widget does: see
    :func:`~.predict_jobs.avoid_triton`): call it off a viewer's GUI thread."""
    from .predict_jobs import avoid_triton

    avoid_triton()
    try:
        from .build import CheckpointError, config_from_checkpoint, load_checkpoint
    except ImportError:  # no torch here: the prediction will say so itself
        return ""
    p = Path(path)
    try:
        config_from_checkpoint(load_checkpoint(p), p)
    except CheckpointError as e:
        return str(e).removeprefix(f"{p}: ")
    return ""


def _stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def train_command(
    config: str | os.PathLike,
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    resume: bool = False,
    device: str | None = None,
) -> list[str]:
    """The ``napari-vertebra train`` command line of a run, as an argv list."""
    cmd = [sys.executable, "-m", "napari_vertebra.cli", "train"]
    cmd += ["--config", str(config), "--data", str(data), "-o", str(run_dir)]
    if resume:
        cmd.append("--resume")
    if device and device != "auto":
        cmd += ["--device", device]
    return cmd


# ------------------------------------------------------------------ process output
def last_meaningful_line(text: str) -> str:
    """The line of a process's output that says why it ended: the last one that is not
    blank, not an indented traceback or warning source line, not a ``Traceback`` header
    and not a progress bar redraw (carriage returns)."""
    for raw in reversed(text.replace("\r\n", "\n").split("\n")):
        line = raw.rsplit("\r", 1)[-1].rstrip()
        if not line.strip() or line[:1].isspace() or line.startswith("Traceback ("):
            continue
        if line.startswith("$ ") or "warnings.warn(" in line:
            continue
        return line.strip()
    return ""


def _tail(path: Path, size: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, i.e. finished but not reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process


def lower_priority(pid: int, step: int = 5) -> bool:
    """Nice process ``pid`` a little (the viewer stays responsive while it trains);
    returns whether it worked (POSIX only)."""
    import psutil

    if not psutil.POSIX:
        return False
    try:
        psutil.Process(pid).nice(min(19, psutil.Process().nice() + step))
    except (psutil.Error, OSError):
        return False
    return True


# ------------------------------------------------------------------ the controller
@dataclass
class Outcome:
    """How a run's process ended: ``kind`` is ``done``, ``stopped`` or ``failed``;
    ``message`` a plain sentence; ``returncode`` None for a followed process."""

    kind: str
    message: str
    returncode: int | None = None
    #: a finished run whose validation says its level confidence overstates certainty
    warning: str = ""


class TrainingRun:
    """One run folder and the trainer process writing it (started here or followed).

    ``poll()`` (call it periodically) reads the new progress events into ``progress``
    and returns an :class:`Outcome` once the process has ended (None while it runs or
    when there is none).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.process: subprocess.Popen | None = None
        self.progress = TrainProgress()
        self.stop_requested = False
        self._reader = ProgressReader(self.run_dir / PROGRESS_NAME)
        #: How many progress events the last :meth:`refresh` found.
        self.new_events = 0
        #: Checkpoints found unreadable by :meth:`check_checkpoints`: file name ->
        #: (its modification stamp then, why); left out of :meth:`checkpoints` until
        #: the file is written again.
        self.unreadable: dict[str, tuple[tuple[int, int] | None, str]] = {}
        self._followed = False
        self._finished = False

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> TrainingRun:
        """An existing run folder (its process followed while it runs); RunError when
        the folder is missing or not a run."""
        run = cls(run_dir)
        if not run.run_dir.is_dir():
            raise RunError(f"{run.run_dir}: no such folder")
        if not is_run_folder(run.run_dir):
            raise RunError(
                f"{run.run_dir} is not a training run (no log.csv, progress.jsonl, "
                "config.yaml or checkpoint in it); choose the folder that "
                "'napari-vertebra train -o' wrote"
            )
        run._followed = run.pid is not None and pid_alive(run.pid)
        run.refresh()
        return run

    @staticmethod
    def check_start(run_dir: str | os.PathLike, resume: bool) -> Path:
        """The resolved run folder if a run can start (or resume) there; RunError else."""
        run = Path(run_dir).expanduser().resolve()
        last = run / "last.pt"
        if resume and not last.is_file():
            raise RunError(
                f"{run}: no last.pt to resume from; start a new run there, or choose the "
                "folder of a stopped run"
            )
        if not resume and last.is_file():
            raise RunError(
                f"{run} already holds a run (last.pt): press Resume to continue it, or "
                "choose a new run folder"
            )
        if run.exists() and not run.is_dir():
            raise RunError(f"{run} is a file, not a folder: choose a run folder")
        return run

    # -- the process -----------------------------------------------------------------
    def launch(
        self, config_yaml: str, data_dir: str | os.PathLike, resume: bool = False,
        device: str | None = None, command: list[str] | None = None,
    ) -> subprocess.Popen:  # fmt: skip
        """Write the configuration and start the trainer (detached: it survives the
        viewer closing). ``command`` replaces :func:`train_command` (tests)."""
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        cfg_path = run / REQUESTED_CONFIG_NAME
        cfg_path.write_text(config_yaml, encoding="utf-8")
        (run / STOP_NAME).unlink(missing_ok=True)
        cmd = command or train_command(cfg_path, data_dir, run, resume, device)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TQDM_DISABLE="1")
        with open(run / STDOUT_NAME, "ab") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(run), env=env,
                start_new_session=True,  # detached: survives napari closing
            )  # fmt: skip
        lower_priority(self.process.pid)
        (run / PID_NAME).write_text(str(self.process.pid), encoding="utf-8")
        self.stop_requested = False
        self._finished = False
        self._followed = False
        self.refresh()
        return self.process

    @property
    def pid(self) -> int | None:
        """The trainer's process id (ours, or from ``train.pid``), or None."""
        if self.process is not None:
            return self.process.pid
        try:
            return int((self.run_dir / PID_NAME).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        """Whether the trainer process runs."""
        if self.process is not None:
            return self.process.poll() is None
        if not self._followed:
            return False
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def stop(self) -> str:
        """Ask the trainer to stop: it saves a resumable ``last.pt`` and exits
        (``requested``). Asked again while it is stopping, interrupt it (SIGINT:
        ``interrupted``). ``not running`` when there is nothing to stop."""
        if not self.running:
            return "not running"
        if self.stop_requested:
            pid = self.pid
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGINT)
                except OSError:
                    return "not running"
            return "interrupted"
        (self.run_dir / STOP_NAME).write_text(
            time.strftime("stop requested %Y-%m-%d %H:%M:%S\n"), encoding="utf-8"
        )
        self.stop_requested = True
        return "requested"

    # -- following ---------------------------------------------------------------------
    def refresh(self) -> int:
        """Read the new progress events into :attr:`progress`; returns how many."""
        events = self._reader.read()
        if self._reader.reset:
            self.progress = TrainProgress()
        self.new_events = self.progress.update(events)
        return self.new_events

    def poll(self) -> Outcome | None:
        """:meth:`refresh`, then the outcome once the process has ended (given once)."""
        self.refresh()
        if self._finished or self.running:
            return None
        if self.process is None and not self._followed:
            return None
        self._finished = True
        outcome = self._outcome()
        (self.run_dir / PID_NAME).unlink(missing_ok=True)
        self.stop_requested = False
        return outcome

    def _outcome(self) -> Outcome:
        rc = self.process.returncode if self.process is not None else None
        phase = self.progress.phase
        if rc not in (0, None) or phase == "error":
            return Outcome("failed", self.failure_message(rc), rc)
        if phase == "stopped" or (self.run_dir / STOP_NAME).exists():
            return Outcome(
                "stopped", f"stopped; Resume continues from {self.run_dir / 'last.pt'}", rc
            )
        if phase == "done" or rc == 0 or (rc is None and not phase):  # "": no progress.jsonl
            n = self.progress.completed_epochs
            note, warning = level_check(self.progress)
            message = f"finished: {n} epoch(s) in {self.run_dir}" + (f"; {note}" if note else "")
            return Outcome("done", message, rc, warning)
        return Outcome("failed", self.failure_message(rc), rc)

    def failure_message(self, returncode: int | None) -> str:
        """Why the trainer ended, in one plain sentence: its error event, else the last
        meaningful line it printed, else its exit status."""
        reason = self.progress.message if self.progress.phase == "error" else ""
        if not reason:
            reason = last_meaningful_line(_tail(self.run_dir / STDOUT_NAME))
        reason = reason.removeprefix("error: ")
        if returncode is not None and returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            why = f"the training process was killed ({name}"
            why += ", out of memory?)" if -returncode == signal.SIGKILL else ")"
            reason = f"{why}: {reason}" if reason else why
        elif not reason and returncode is None:
            reason = "the training process ended before it finished or stopped"
        elif not reason:
            reason = f"the training process ended with exit status {returncode}"
        return f"training failed: {reason} (the whole output is in {self.run_dir / STDOUT_NAME})"

    def tail_line(self) -> str:
        """The last meaningful line of the trainer's output (for a status)."""
        return last_meaningful_line(_tail(self.run_dir / STDOUT_NAME, 4096))

    def checkpoints(self) -> list[Path]:
        """:func:`checkpoints` of this run folder, without those found unreadable (a
        file written again since is offered again)."""
        return [p for p in checkpoints(self.run_dir) if not self.is_unreadable(p)]

    def is_unreadable(self, path: Path) -> bool:
        """Whether ``path`` is a checkpoint :meth:`check_checkpoints` could not read and
        that has not been written since."""
        bad = self.unreadable.get(path.name)
        return bad is not None and bad[0] == _stamp(path)

    def check_checkpoints(self) -> dict[str, str]:
        """Load every checkpoint of the folder (slow: off a GUI thread); remembers and
        returns the unreadable ones (file name -> why)."""
        self.unreadable = {}
        for p in checkpoints(self.run_dir):
            stamp = _stamp(p)
            why = checkpoint_problem(p)
            if why:
                self.unreadable[p.name] = (stamp, why)
        return {name: why for name, (_, why) in self.unreadable.items()}

    def unreadable_note(self) -> str:
        """One sentence naming the unreadable checkpoints and what follows ("" when
        none): they are not offered for prediction; without a readable last.pt the run
        cannot resume."""
        # the reason without its advice ("; choose the best.pt ..."): said here instead
        bad = {name: why.split("; ")[0] for name, (_, why) in self.unreadable.items()}
        if not bad:
            return ""
        names = [p.name for p in checkpoints(self.run_dir) if p.name in bad]
        names += sorted(set(bad) - set(names))  # gone from the folder since
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        reasons = set(bad.values())
        why = bad[names[0]] if len(reasons) == 1 else "; ".join(f"{n}: {bad[n]}" for n in names)
        what = "it is" if len(names) == 1 else "they are"
        text = f"{listed} in {self.run_dir}: {why}, so {what} not offered for prediction"
        if "last.pt" in bad:
            text += " and Resume needs a readable last.pt"
        return text

    def saved_config(self) -> dict[str, Any]:
        """The run's ``config.yaml`` as a dict ({} when missing); RunError when unreadable."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return {}
        import yaml

        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RunError(f"{path}: cannot be read ({e})") from e
        if not isinstance(cfg, dict):
            raise RunError(f"{path}: not a configuration (a YAML mapping)")
        return cfg

    def kill(self) -> None:
        """Kill the trainer's process group at once (tests, never the viewer closing)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def open_run(run_dir: str | os.PathLike) -> tuple[TrainingRun, dict[str, Any], str]:
    """(run, its saved config, why the config could not be read or "") of an existing
    run folder, its progress read and its checkpoints loaded once
    (:meth:`TrainingRun.check_checkpoints`): the slow part of showing a long run (a
    progress.jsonl of 40 000 steps takes seconds), so a viewer calls it off its GUI
    thread. RunError when the folder is missing or not a run."""
    run = TrainingRun.open(run_dir)
    run.check_checkpoints()
    try:
        return run, run.saved_config(), ""
    except RunError as e:
        return run, {}, str(e)


# ------------------------------------------------------------------ GPU probe
#: Cached answer of :class:`GpuProbe` (None: not known yet), for the whole process.
GPU_AVAILABLE: bool | None = None


class GpuProbe:
    """Asks a subprocess whether torch sees a GPU (importing torch here would make the
    caller wait). ``poll()`` returns None until it knows, then True or False."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        if GPU_AVAILABLE is not None:
            return
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import torch; print(int(torch.cuda.is_available()))"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            self.process = None

    def poll(self) -> bool | None:
        """The answer, or None while the subprocess runs (False when it failed)."""
        global GPU_AVAILABLE
        if GPU_AVAILABLE is not None:
            return GPU_AVAILABLE
        p = self.process
        if p is None:
            return False
        if p.poll() is None:
            return None
        out = p.stdout.read().decode().strip() if p.stdout else ""
        if p.stdout:
            p.stdout.close()
        GPU_AVAILABLE = out == "1"
        return GPU_AVAILABLE


# ------------------------------------------------------------------ level check
def level_check(progress: TrainProgress) -> tuple[str, str]:
    """(sentence, warning) on the level confidence at the last validated epoch: how many
    val images it called certain and how well those were identified; the warning (else
    "") when they were identified below :data:`~napari_vertebra.model.calibration.CERTAIN`.
    ("", "") before any validation that reports it."""
    from .calibration import certainty_check

    def last(key: str) -> float | None:
        v = progress.val.get(key) or []
        return v[-1] if v and math.isfinite(v[-1]) else None

    share = last("val_level_certain_share")
    if share is None:
        return "", ""
    return certainty_check(share, last("val_level_certain_id_rate"), n_images=last("val_n_images"))
