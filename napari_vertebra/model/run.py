"""A training run folder, without Qt: its files, the trainer process, stop, progress.

The Train widget (and any other front end) starts training as a separate process, the
same code as the command line (``python -m napari_vertebra.cli train --config CFG --data
DIR -o RUN [--resume]``), and follows it through the files of the run folder:

``progress.jsonl``
    written by the trainer (:class:`ProgressWriter`, rank 0): one JSON object per line,
    flushed per step. Every line has ``phase``: ``setup`` (loading data, building the
    model), ``start`` (the loop begins: ``epoch`` done so far, ``epochs``, ``step``,
    ``steps_in_epoch``, ``total_steps``, ``resume``), ``train`` (one optimizer step:
    ``epoch`` (1-based), ``step`` (global, 1-based), ``step_in_epoch``,
    ``steps_in_epoch``, ``total_steps``, ``loss`` and its terms, ``lr``), ``validate``
    (validation of ``epoch`` begins), ``epoch`` (``epoch`` done: mean losses and the
    ``val_*`` metrics), ``stopped``, ``done`` and ``error`` (``message``).
    :class:`ProgressReader` reads it incrementally; :class:`TrainProgress` folds it.
``log.csv``, ``last.pt``, ``best.pt``, ``config.yaml``
    the trainer's per-epoch log and checkpoints (:mod:`napari_vertebra.model.train`).
``STOP``
    a stop request: the trainer sees it before its next step, saves ``last.pt``, exits.
``train.out``, ``train.pid``, ``widget_config.yaml``
    the process's output, its id (so that a reopened run can be followed) and the
    configuration it was started with.

Imports neither Qt nor napari nor torch.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LOG_NAME",
    "PID_NAME",
    "PROGRESS_NAME",
    "STDOUT_NAME",
    "STOP_NAME",
    "GpuProbe",
    "Outcome",
    "ProgressReader",
    "ProgressWriter",
    "RunError",
    "TrainProgress",
    "TrainingRun",
    "checkpoints",
    "completed_epochs",
    "dataset_class_set",
    "default_run_dir",
    "export_project_dataset",
    "is_run_folder",
    "last_meaningful_line",
    "level_check",
    "open_run",
    "read_log",
    "train_command",
    "validation_note",
]

#: Files of a run folder.
LOG_NAME = "log.csv"
PROGRESS_NAME = "progress.jsonl"
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


# ------------------------------------------------------------------ log.csv
def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a training ``log.csv`` as float arrays (empty cells become NaN).

    Returns {} when the file is missing or has no data row yet; a partly written last
    line (the trainer may be mid-write) is ignored.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return {}
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    rows = list(csv.reader(lines))
    if len(rows) < 2:
        return {}
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        for h, v in zip(header, row, strict=True):
            try:
                cols[h].append(float(v))
            except ValueError:
                cols[h].append(np.nan)
    if not any(cols.values()):
        return {}
    return {h: np.asarray(v, float) for h, v in cols.items()}


def completed_epochs(log: dict[str, np.ndarray]) -> int:
    """Number of epochs with a row in ``log`` (0 for an empty log)."""
    ep = log.get("epoch")
    if ep is None or not len(ep):
        return 0
    return int(np.nanmax(ep))


# ------------------------------------------------------------------ progress.jsonl
def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars plain numbers."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


class ProgressWriter:
    """Appends progress events to ``RUN/progress.jsonl``, one flushed line each.

    Used by the trainer on rank 0; writing never raises (a full disk must not stop
    training): a failure is remembered in ``error`` and writing stops.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.error: OSError | None = None
        self._t0 = time.time()

    def write(self, phase: str, **fields: Any) -> None:
        """Append ``{"phase": phase, "time": seconds since start, **fields}``."""
        if self.error is not None:
            return
        event = {"phase": phase, "time": round(time.time() - self._t0, 3)}
        event.update({k: _clean(v) for k, v in fields.items()})
        line = json.dumps(event, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as e:
            self.error = e


class ProgressReader:
    """Reads the events appended to a ``progress.jsonl`` since the last call.

    A partly written last line is left for the next call; a line that is not JSON is
    skipped (counted in ``skipped``). When the file is replaced or truncated, reading
    starts again from its beginning and ``reset`` is True after that call.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self.skipped = 0
        self.reset = False
        self._ino: int | None = None

    def read(self) -> list[dict[str, Any]]:
        """The complete new lines as dicts (possibly none)."""
        self.reset = False
        try:
            st = self.path.stat()
        except OSError:
            return []
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
            self.offset, self.reset = 0, True
        self._ino = st.st_ino
        if st.st_size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # only a partial line so far
        self.offset += end + 1
        events = []
        for raw in data[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                event = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.skipped += 1
                continue
            if isinstance(event, dict) and "phase" in event:
                events.append(event)
            else:
                self.skipped += 1
        return events


#: Keys of a ``train`` event that are not loss terms.
_STEP_KEYS = {"phase", "time", "epoch", "epochs", "step", "step_in_epoch", "steps_in_epoch",
              "total_steps", "lr"}  # fmt: skip


@dataclass
class TrainProgress:
    """The state of a run folded from its progress events (:meth:`update`).

    ``steps`` and ``losses`` hold one entry per logged step (``losses[key][i]`` at global
    step ``steps[i]``); ``val_epochs`` and ``val`` one per validated epoch. After a
    ``start`` event (a resume), entries past its step and epoch are dropped: a run
    killed after its last checkpoint repeats those steps.
    """

    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    step_in_epoch: int = 0
    steps_in_epoch: int = 0
    total_steps: int = 0
    message: str = ""
    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)

    def update(self, events: Iterable[dict[str, Any]]) -> int:
        """Fold ``events`` in; returns how many there were."""
        n = 0
        for ev in events:
            n += 1
            phase = str(ev.get("phase", ""))
            self.phase = phase
            for key in ("epoch", "epochs", "step", "step_in_epoch", "steps_in_epoch",
                        "total_steps"):  # fmt: skip
                v = ev.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    setattr(self, key, int(v))
            if phase == "start":
                self._truncate(self.step, self.epoch)
            elif phase == "train":
                self._add_step(ev)
            elif phase == "epoch":
                self._add_epoch(ev)
            self.message = str(ev.get("message") or "")
        return n

    def _truncate(self, step: int, epoch: int) -> None:
        keep = sum(s <= step for s in self.steps)
        del self.steps[keep:], self.lr[keep:]
        for v in self.losses.values():
            del v[keep:]
        keep = sum(e <= epoch for e in self.val_epochs)
        del self.val_epochs[keep:]
        for v in self.val.values():
            del v[keep:]

    def _add_step(self, ev: dict[str, Any]) -> None:
        n = len(self.steps)
        self.steps.append(int(ev.get("step", n + 1)))
        self.lr.append(_num(ev.get("lr")))
        for key, v in ev.items():
            if key not in _STEP_KEYS and (key == "loss" or key.startswith("loss_")):
                if key not in self.losses:  # a new term: NaN for the steps before it
                    self.losses[key] = [math.nan] * n
                self.losses[key].append(_num(v))
        for v in self.losses.values():
            if len(v) < n + 1:
                v.append(math.nan)

    def _add_epoch(self, ev: dict[str, Any]) -> None:
        n = len(self.val_epochs)
        self.val_epochs.append(int(ev.get("epoch", n + 1)))
        for key, v in ev.items():
            if key.startswith("val_"):
                if key not in self.val:
                    self.val[key] = [math.nan] * n
                self.val[key].append(_num(v))
        for v in self.val.values():
            if len(v) < n + 1:
                v.append(math.nan)

    @property
    def fraction(self) -> float:
        """Steps done of the whole run (0..1); 0 before the first ``start`` event."""
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, max(0.0, self.step / self.total_steps))

    def describe(self) -> str:
        """One line for a status or a progress bar, e.g. 'epoch 2/24, step 13/40'."""
        ep = f"epoch {max(self.epoch, 1)}/{self.epochs}" if self.epochs else ""
        if self.phase == "setup":
            return self.message or "loading the data and the model"
        if self.phase == "start":
            first = f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}: " if ep else ""
            return f"{first}first step…"
        if self.phase == "train":
            text = f"{ep}, step {self.step_in_epoch}/{self.steps_in_epoch}"
            if self.losses.get("loss"):
                loss = self.losses["loss"][-1]
                if math.isfinite(loss):
                    text += f", loss {loss:.3f}"
            return text
        if self.phase == "validate":
            return f"{ep}: validating"
        if self.phase == "epoch":
            return f"{ep} done"
        return self.message or self.phase

    def step_epochs(self) -> np.ndarray:
        """The logged steps on an epoch axis (step 10 of 20-step epochs: 0.5)."""
        per = max(self.steps_in_epoch, 1)
        return np.asarray(self.steps, float) / per


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def read_progress(path: str | os.PathLike) -> TrainProgress:
    """The whole ``progress.jsonl`` of a run, folded."""
    state = TrainProgress()
    state.update(ProgressReader(path).read())
    return state


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lower_priority(pid: int, step: int = 5) -> bool:
    """Nice process ``pid`` a little (the viewer stays responsive while it trains);
    returns whether it worked (not on every system)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + step))
    except (OSError, AttributeError):
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

    ``poll()`` (call it periodically) reads the new progress events into ``progress``,
    re-reads ``log.csv`` into ``log`` when it changed, and returns an :class:`Outcome`
    once the process has ended (None while it runs or when there is none).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.process: subprocess.Popen | None = None
        self.progress = TrainProgress()
        self.log: dict[str, np.ndarray] = {}
        self.stop_requested = False
        self._reader = ProgressReader(self.run_dir / PROGRESS_NAME)
        self._log_sig: tuple[float, int] | None = None
        #: What the last :meth:`refresh` found: new progress events, a changed log.csv.
        self.new_events = 0
        self.log_changed = False
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
    def refresh(self) -> tuple[int, bool]:
        """Read new progress events and a changed log.csv: (new events, log changed)."""
        events = self._reader.read()
        if self._reader.reset:
            self.progress = TrainProgress()
        n = self.progress.update(events)
        path = self.run_dir / LOG_NAME
        try:
            st = path.stat()
            sig: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            sig = None
        changed = sig != self._log_sig
        if changed:
            self._log_sig = sig
            self.log = read_log(path)
        self.new_events, self.log_changed = n, changed
        return n, changed

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
            n = completed_epochs(self.log)
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
        """:func:`checkpoints` of this run folder."""
        return checkpoints(self.run_dir)

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
    run folder, its progress and log read: the slow part of showing a long run (a
    progress.jsonl of 40 000 steps takes seconds), so a viewer calls it off its GUI
    thread. RunError when the folder is missing or not a run."""
    run = TrainingRun.open(run_dir)
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


# ------------------------------------------------------------------ datasets
def export_project_dataset(
    project: Any, out_dir: str | os.PathLike, progress: Any = None
) -> list[str]:
    """Write an annotation project as COCO splits ``out_dir/{train,val,test}``.

    Uses :func:`napari_vertebra.annotation.dataset.build_dataset` (partial views, split by
    scan). A project of a single scan gets no validation images: then the training split
    is copied as ``val`` (its mAP is then measured on training images) and a note says
    so. Returns such notes.
    """
    import shutil

    from napari_vertebra.annotation.dataset import build_dataset

    images = [im for im in project.images(load_pixels=True) if im.annotations]
    if not images:
        raise RunError(f"{project.folder}: the project has no annotated image to train on")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    build_dataset(images, out, progress=progress)
    notes = []
    val = out / "val"
    try:
        n_val = len(
            json.loads((val / "annotations.json").read_text(encoding="utf-8")).get("images", [])
        )
    except (OSError, ValueError):
        n_val = 0
    if n_val == 0:
        shutil.rmtree(val, ignore_errors=True)
        shutil.copytree(out / "train", val)
        scans = {im.scan for im in images}
        notes.append(
            f"the project holds {len(scans)} scan(s), too few for a validation split: "
            "validating on the training images (optimistic mAP)"
        )
    return notes


def check_dataset(data_dir: str | os.PathLike | None) -> Path:
    """The resolved COCO split folder if it has a train split; RunError in plain words."""
    if not data_dir or str(data_dir) in ("", "."):
        raise RunError("choose a dataset folder (with train/ and val/ splits)")
    data = Path(data_dir).expanduser().resolve()
    if not data.is_dir():
        raise RunError(f"{data}: no such dataset folder")
    if not (data / "train" / "annotations.json").is_file():
        raise RunError(
            f"{data} has no train split (no train/annotations.json): choose the folder "
            "that 'Export dataset' wrote, or train on the open annotation project"
        )
    return data


def level_check(progress: TrainProgress) -> tuple[str, str]:
    """(sentence, warning) on the level confidence at the last validated epoch: how many
    val images it called certain and how well those were identified; the warning (else
    "") when they were identified below :data:`~napari_vertebra.model.levels.CERTAIN`.
    ("", "") before any validation that reports it."""
    from napari_vertebra.model.levels import certainty_check

    def last(key: str) -> float | None:
        v = progress.val.get(key) or []
        return v[-1] if v and math.isfinite(v[-1]) else None

    share = last("val_level_certain_share")
    if share is None:
        return "", ""
    return certainty_check(share, last("val_level_certain_id_rate"), n_images=last("val_n_images"))


def dataset_class_set(data_dir: str | os.PathLike | None) -> str | None:
    """The class set a COCO dataset folder's labels need, or None when it cannot tell.

    ``dataset.json``'s ``class_set`` (written by ``dataset build`` / Export dataset: the
    smallest set holding every level used), else the levels the train split's
    annotations use: ``"extended"`` when they hold C7, T13, L6 or S1, else ``"paper"``.
    """
    from napari_vertebra.core.labels import LEVEL_IDS, class_set_for

    if not data_dir or str(data_dir) in ("", "."):
        return None
    data = Path(data_dir).expanduser()
    try:
        meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
        name = meta.get("class_set") if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError):
        pass
    ann = data / "train" / "annotations.json"
    try:
        st = ann.stat()
        used = _used_levels(str(ann), st.st_mtime_ns, st.st_size)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # unreadable: the trainer says what is wrong with it
    ids = [LEVEL_IDS[n] for n in used if n in LEVEL_IDS]  # every level is in a set
    return class_set_for(ids).name if ids else None


@functools.lru_cache(maxsize=8)
def _used_levels(path: str, mtime_ns: int, size: int) -> frozenset[str | None]:
    """The category names a COCO file's annotations use; read once per version of the
    file (the Train form asks on every change of the folder and again at Start)."""
    coco = json.loads(Path(path).read_text(encoding="utf-8"))
    names = {int(c["id"]): str(c["name"]) for c in coco.get("categories") or []}
    return frozenset(names.get(int(a["category_id"])) for a in coco.get("annotations") or [])


def validation_note(data_dir: str | os.PathLike) -> str:
    """A warning when ``data_dir/val`` is missing or holds no image (the trainer then
    validates on the train split, as it says in its output), else ''."""
    ann = Path(data_dir) / "val" / "annotations.json"
    if ann.is_file():
        try:
            n = len(json.loads(ann.read_text(encoding="utf-8")).get("images") or [])
        except (OSError, ValueError, AttributeError):
            return ""  # the trainer says what is wrong with it
        if n:
            return ""
        state = "has no images"
    else:
        state = "is missing"
    return (
        f"the val split of {Path(data_dir).name} {state}: validating on the train split "
        "(its scores say little about new scans; export more scans for a val split)"
    )
