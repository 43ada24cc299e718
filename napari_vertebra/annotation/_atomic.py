"""Atomic file writes: stage in a temporary file in the target folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "AtomicBatch",
    "atomic_write_bytes",
    "atomic_write_text",
    "interrupts_held",
    "png_bytes",
]


def _stage(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextlib.contextmanager
def interrupts_held():
    """Ctrl+C (SIGINT) waits until the block is done, then takes effect (a batch is moved
    into place whole; a training step is counted with its update). Only in the main
    thread, where Python runs signal handlers (elsewhere no KeyboardInterrupt comes)."""
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or old is None:
        yield  # (None: a handler not set from Python, which could not be restored)
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught and callable(old):
            old(signal.SIGINT, None)
        elif caught and old == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the old file stays intact on failure)."""
    path = Path(path)
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a 2D uint8/uint16 (or HxWx3 uint8) array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


class AtomicBatch:
    """Stage several files, then move them all into place at once.

    Use as a context manager: ``add(path, bytes)`` stages; leaving the block without an
    error commits (``os.replace`` each file); an error removes every staged file, so no
    target is touched. Folders created for staging are removed again when left empty.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._made_dirs: list[Path] = []

    def add(self, path: str | os.PathLike, data: bytes) -> None:
        path = Path(path)
        missing = []
        d = path.parent
        while not d.exists():
            missing.append(d)
            d = d.parent
        self._made_dirs.extend(reversed(missing))
        self._staged.append((_stage(path, data), path))

    def __enter__(self) -> AtomicBatch:
        return self

    def _rollback(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        for d in reversed(self._made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            with interrupts_held():
                for tmp, path in self._staged:
                    os.replace(tmp, path)
        except BaseException:
            self._rollback()
            raise
