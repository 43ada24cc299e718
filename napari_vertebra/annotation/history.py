"""Undo / redo of one MIP's annotations, kept on disk.

A :class:`History` is a bounded list of snapshots of one image's annotations (plain
JSON payloads, e.g. ``[{"class": "L1", "class_id": 13, "polygons": ...}]``) with a
cursor at the current one. Recording a new state drops the redo branch and, past
:data:`MAX_STEPS` steps, the oldest snapshot. Layout in the history folder::

    index.json       {"version": 1, "cursor": 3, "next_id": 9,
                      "steps": [{"id": 5, "label": "draw L3", "time": "07:12:03"}, ...]}
    <id>.json        the payload of step ``id``

The payloads are also kept in memory, so undo and redo never wait for the disk. Every
file is written atomically (temporary file + rename) through a :class:`Writer`: inline,
or on one background thread (a single-worker thread pool, so writes keep their order) so
that an edit in the GUI does not wait for the disk (the snapshot is written before the
index that names it, so a crash leaves a readable history, at worst missing the last
step).

Snapshot files are never overwritten: a new step's id is above every id of the index
and every snapshot file in the folder. Reading a history repairs what it can, and says
so in :attr:`History.warning`: an unreadable index is kept as ``index.json.unreadable``
and a new history starts (the old snapshots stay); a cursor outside the steps is set to
the last step (:attr:`History.cursor_lost`, so that the project can put it on the step
its annotation file holds). With a readable index, snapshot files it does not name
(left by an interrupted save, or dropped steps whose deletion was interrupted) are
deleted.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._atomic import atomic_write_text

__all__ = [
    "MAX_STEPS",
    "History",
    "Writer",
    "background_writer",
]

#: Undo steps kept per image (the oldest are dropped beyond this).
MAX_STEPS = 200
_PAYLOAD_CACHE = MAX_STEPS + 1


class Writer:
    """Runs file writes in order: inline (``background=False``) or on one worker thread
    (a ``ThreadPoolExecutor(max_workers=1)``, started at the first write).

    ``submit(fn)`` queues a write; ``flush()`` waits until every queued write is done and
    raises the first error met since the last flush (a failed background write is never
    silent: the next save or read reports it). A write submitted while the interpreter
    shuts down (the pool takes no new work then) runs inline, after the queued ones.
    """

    def __init__(self, background: bool = False):
        self.background = background
        self._errors: list[BaseException] = []
        self._pending: list[Future] = []
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` now (inline) or queue it for the writer thread."""
        if not self.background:
            fn()
            return
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="napari-vertebra-writer"
                )
            try:
                self._pending.append(self._executor.submit(self._run, fn))
                return
            except RuntimeError:  # interpreter shutdown: the pool takes no new work
                pass
        self.wait()
        fn()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as e:  # kept and raised by the next flush()
            with self._lock:
                self._errors.append(e)

    def wait(self) -> None:
        """Wait for the queued writes (errors stay for :meth:`flush`)."""
        with self._lock:
            pending = list(self._pending)
        futures.wait(pending)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]

    def flush(self) -> None:
        """Wait for the queued writes; raise the first error of a failed one."""
        self.wait()
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]


_BACKGROUND: Writer | None = None


def background_writer() -> Writer:
    """The process' background writer (one thread; flushed at exit)."""
    global _BACKGROUND
    if _BACKGROUND is None:
        _BACKGROUND = Writer(background=True)
        atexit.register(_flush_quietly, _BACKGROUND)
    return _BACKGROUND


def _flush_quietly(writer: Writer) -> None:
    try:
        writer.flush()
    except Exception as e:  # at exit: say it, do not raise
        print(f"[napari-vertebra] a background save failed: {e}")


class History:
    """Bounded undo / redo of one image's annotation payloads, stored in ``folder``.

    ``record(payload, label)`` adds a step (nothing when the payload equals the current
    one); ``undo()`` / ``redo()`` move the cursor and return the payload now current
    (None when there is nothing to undo / redo). A new History on the same folder
    continues where the last one stopped (the restart case).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        max_steps: int = MAX_STEPS,
        writer: Writer | None = None,
        check: Callable[[Any, Path], None] | None = None,
    ):
        self.folder = Path(folder)
        self.max_steps = int(max_steps)
        self.writer = writer or Writer()
        #: ``check(payload, snapshot_path)`` raises ValueError for a payload that undo /
        #: redo must not bring back (the cursor then stays).
        self.check = check
        self._payloads: dict[int, Any] = {}
        self.steps: list[dict] = []
        self.cursor = -1
        self._next_id = 1
        #: What reading the history repaired (an unreadable index, a lost cursor), or None.
        self.warning: str | None = None
        #: True when the index's cursor was outside its steps (set to the last one).
        self.cursor_lost = False
        self._read_index()

    # -- disk
    @property
    def _index_path(self) -> Path:
        return self.folder / "index.json"

    def _read_index(self) -> None:
        p = self._index_path
        on_disk = self._snapshot_ids()
        self._next_id = max([0, *on_disk]) + 1  # never an id of a file present
        if not p.is_file():
            return
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            steps = [dict(s) for s in data["steps"]]
            cursor = int(data["cursor"])
            next_id = int(data["next_id"])
            ids = [int(s["id"]) for s in steps]
            if len(set(ids)) != len(ids):
                raise ValueError("a step id is used twice")
        except (OSError, ValueError, KeyError, TypeError) as e:
            # an unreadable history must not block annotating: start a new one, say so
            aside = p.with_name("index.json.unreadable")
            os.replace(p, aside)
            self.warning = (
                f"{p}: the undo history could not be read ({e}); a new one is started "
                f"(the old index is kept as {aside.name}, its snapshots stay)"
            )
            return
        if steps and not 0 <= cursor < len(steps):
            self.warning = (
                f"{p}: the undo cursor {cursor} is outside the {len(steps)} steps: set to "
                "the last step; no step is lost"
            )
            cursor, self.cursor_lost = len(steps) - 1, True
        self.steps, self.cursor = steps, cursor
        self._next_id = max([self._next_id, next_id, *[i + 1 for i in ids]])
        for sid in on_disk - set(ids):  # never committed, or dropped: not in the history
            self._snapshot_path(sid).unlink(missing_ok=True)

    def _snapshot_ids(self) -> set[int]:
        """Ids of the snapshot files in the folder."""
        if not self.folder.is_dir():
            return set()
        return {int(q.stem) for q in self.folder.glob("*.json") if q.stem.isdigit()}

    @property
    def current_id(self) -> int | None:
        """The id of the current step (None when the history is empty)."""
        return int(self.steps[self.cursor]["id"]) if 0 <= self.cursor < len(self.steps) else None

    def index_of(self, step_id: int | None) -> int | None:
        """The position of step ``step_id`` in :attr:`steps` (None when it is not there)."""
        for i, st in enumerate(self.steps):
            if step_id is not None and int(st["id"]) == int(step_id):
                return i
        return None

    def move_to(self, step_id: int) -> bool:
        """Make step ``step_id`` the current one (written to the index); False if unknown."""
        i = self.index_of(step_id)
        if i is None:
            return False
        self.cursor, self.cursor_lost = i, False
        self._commit([])
        return True

    def _snapshot_path(self, step_id: int) -> Path:
        return self.folder / f"{int(step_id)}.json"

    def _index_text(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "cursor": self.cursor,
                "next_id": self._next_id,
                "steps": self.steps,
            },
            indent=1,
        )

    def payload(self, i: int | None = None) -> Any:
        """The payload of step ``i`` (default: the current one); None if unreadable."""
        i = self.cursor if i is None else i
        if not 0 <= i < len(self.steps):
            return None
        sid = int(self.steps[i]["id"])
        if sid not in self._payloads:
            try:
                self.writer.wait()
                text = self._snapshot_path(sid).read_text(encoding="utf-8")
                self._payloads[sid] = json.loads(text)
            except (OSError, ValueError):
                return None
        return self._payloads[sid]

    # -- public
    def __len__(self) -> int:
        return len(self.steps)

    @property
    def can_undo(self) -> bool:
        """Whether a step before the current one is kept."""
        return self.cursor > 0

    @property
    def can_redo(self) -> bool:
        """Whether an undone step can be redone."""
        return 0 <= self.cursor < len(self.steps) - 1

    @property
    def undo_label(self) -> str | None:
        """What undo would take back (the label of the current step)."""
        return self.steps[self.cursor]["label"] if self.can_undo else None

    @property
    def redo_label(self) -> str | None:
        """What redo would bring back."""
        return self.steps[self.cursor + 1]["label"] if self.can_redo else None

    def labels(self) -> list[str]:
        """The step labels, oldest first (the first is the starting state)."""
        return [str(s["label"]) for s in self.steps]

    def record(self, payload: Any, label: str = "edit", base: Any = None) -> bool:
        """Make ``payload`` the current state (a new step); False when nothing changed.

        ``base`` is the state before it, recorded first when the history is empty (e.g.
        annotations saved without a history), so that the change can be undone.
        """
        current = self.payload() if self.steps else None
        if self.steps and _same(current, payload):
            return False
        if not self.steps:
            self._append(base if base is not None else [], "start")
            if _same(base if base is not None else [], payload):
                self._commit([])
                return False
        saved = (list(self.steps), self.cursor, self._next_id)
        try:
            dropped = [int(s["id"]) for s in self.steps[self.cursor + 1 :]]
            del self.steps[self.cursor + 1 :]
            self._append(payload, label)
            while len(self.steps) > self.max_steps + 1:
                dropped.append(int(self.steps.pop(0)["id"]))
                self.cursor -= 1
            self._commit(dropped)
        except BaseException:  # an inline write failed: the history is as before
            self.steps, self.cursor, self._next_id = saved
            raise
        return True

    def _append(self, payload: Any, label: str) -> None:
        sid = self._next_id
        while self._snapshot_path(sid).exists():  # a file written by someone else: keep it
            sid += 1
        self._next_id = sid + 1
        self.steps.append({"id": sid, "label": str(label), "time": time.strftime("%H:%M:%S")})
        self.cursor = len(self.steps) - 1
        self._payloads[sid] = payload
        path = self._snapshot_path(sid)
        # payloads are never changed once recorded: encode them on the writer's thread
        self.writer.submit(lambda: atomic_write_text(path, json.dumps(payload)))
        if len(self._payloads) > _PAYLOAD_CACHE:  # drop the oldest from memory only
            for old in sorted(self._payloads)[: len(self._payloads) - _PAYLOAD_CACHE]:
                self._payloads.pop(old, None)

    def _commit(self, dropped: Iterable[int]) -> None:
        text, index = self._index_text(), self._index_path
        paths = [self._snapshot_path(i) for i in dropped]
        for i in dropped:
            self._payloads.pop(i, None)

        def write() -> None:
            atomic_write_text(index, text)
            for p in paths:  # only once the index no longer names them
                p.unlink(missing_ok=True)

        self.writer.submit(write)

    def _move(self, to: int) -> Any:
        payload = self.payload(to)
        sid = int(self.steps[to]["id"])
        if payload is None:  # the step exists but its snapshot cannot be read
            raise ValueError(
                f"the step {self.steps[to]['label']!r} could not be read from "
                f"{self._snapshot_path(sid)} (deleted or damaged); the annotations are unchanged"
            )
        if self.check is not None:
            self.check(payload, self._snapshot_path(sid))
        self.cursor, self.cursor_lost = to, False
        self._commit([])
        return payload

    def undo(self) -> Any:
        """Step back; the payload now current, or None when there is nothing to undo."""
        return self._move(self.cursor - 1) if self.can_undo else None

    def redo(self) -> Any:
        """Step forward again; the payload now current, or None."""
        return self._move(self.cursor + 1) if self.can_redo else None


def _same(a: Any, b: Any) -> bool:
    return a == b  # JSON-like values: structural equality (floats survive JSON exactly)
