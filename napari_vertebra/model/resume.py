"""Where a training run stands, and how a resumed run continues exactly from there.

:class:`ResumeState` holds what ``last.pt`` needs beside the model, optimizer, scheduler
and GradScaler states for a resumed run to take the very steps an uninterrupted one
takes: the epoch and step reached (mid-epoch too), the best value so far, the last
validation's metrics, the epoch's loss sums and every rank's random states.
:func:`resume_checkpoint` reads ``last.pt`` and decides the configuration a resumed run
continues with (:func:`resume_config`: only :data:`~napari_vertebra.model.config.
RESUME_MUTABLE` keys may change). docs/training.md gives the rules.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .build import config_from_checkpoint, load_checkpoint
from .config import RESUME_MUTABLE, TrainConfig
from .device import gather
from .engine import LossMeter

__all__ = [
    "ResumeState",
    "metric_value",
    "resume_checkpoint",
    "resume_config",
    "rng_state",
    "seed_all",
    "set_rng_state",
]


def metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """The value of validation metric ``name`` in ``metrics`` (``val_`` keys); -inf when
    missing or NaN (never better than anything)."""
    v = metrics.get(f"val_{name}")
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class ResumeState:
    """The position of a run and what exact resume needs (module doc).

    ``epoch``: the epoch in progress, 0-based (= epochs done); ``step_in_epoch``: its
    steps done; ``step``: the global steps done; ``best``: the best ``best_metric``
    value so far; ``metrics``: the last validation's ``val_*`` metrics; ``losses``: the
    loss sums of the epoch in progress; ``rng``: the random states of every rank, as
    :meth:`capture_rng` gathers them.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best: float = -math.inf
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: LossMeter = field(default_factory=LossMeter)
    rng: list[dict[str, Any]] | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], best_metric: str) -> ResumeState:
        """The state saved in ``ckpt``; a checkpoint saved after an epoch's last step
        but before its validation ended (stopped while validating) continues with that
        epoch's validation. ``best`` is recomputed from the saved metrics when the run's
        ``best_metric`` changed."""
        metrics = dict(ckpt.get("metrics") or {})
        best = float(ckpt.get("best_value", -math.inf))
        if ckpt.get("best_metric") not in (None, best_metric):
            best = metric_value(metrics, best_metric) if metrics else -math.inf
        sums = ckpt.get("loss_sums")
        state = cls(
            epoch=int(ckpt["epoch"]),
            step_in_epoch=int(ckpt.get("step_in_epoch", 0)),
            step=int(ckpt.get("step", 0)),
            best=best,
            metrics=metrics,
            losses=LossMeter(sums["sums"], sums["n"]) if sums else LossMeter(),
            rng=ckpt.get("rng"),
        )
        return state

    def checkpoint_fields(self, best_metric: str) -> dict[str, Any]:
        """The checkpoint entries of this state (with :meth:`capture_rng`'s states)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "metrics": self.metrics,
            "best_metric": best_metric,
            "best_value": self.best,
            "loss_sums": self.losses.state(),
            "rng": self.rng,
        }

    def capture_rng(self, device: torch.device, distributed: bool, world: int) -> None:
        """Gather every rank's random states into :attr:`rng` (every rank calls it)."""
        self.rng = gather(rng_state(device), world if distributed else 1)

    def restore_rng(self, device: torch.device, rank: int, world: int) -> None:
        """Set this rank's random states from :attr:`rng` (when saved by ``world`` ranks)."""
        if isinstance(self.rng, list) and len(self.rng) == world:
            set_rng_state(self.rng[rank], device)


# ------------------------------------------------------------------ random state
def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's random state."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global state, for third parties)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """CPU, CUDA (this process's device), NumPy and Python random states."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the states of :func:`rng_state` (as read back from a checkpoint)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    random.setstate(_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------ configuration
def resume_config(saved: TrainConfig, given: Mapping[str, Any] | None) -> tuple[TrainConfig, dict]:
    """The configuration a resumed run continues with, and the changes applied.

    ``saved`` is the checkpoint's; ``given`` the keys the user set for the resume (from
    ``--config``, ``KEY=VALUE``, ``--epochs``, ``--seed``; a full :class:`TrainConfig`
    counts as all of its keys). A given value equal to the saved one changes nothing.
    Keys of :data:`~napari_vertebra.model.config.RESUME_MUTABLE` (epochs, lr, ...) are
    applied; any other difference is refused with a ValueError that lists them, never
    ignored.
    """
    given = dict(given or {})
    try:
        wanted = saved.replace(**given)
    except ValueError as e:
        raise ValueError(f"resume: {e}") from None
    pairs = {k: (getattr(saved, k), getattr(wanted, k)) for k in sorted(given)}
    changed = {k: (a, b) for k, (a, b) in pairs.items() if a != b}  # validated: [1] == (1,)
    refused = {k: v for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        listing = "; ".join(f"{k}: {a!r} in the run, {b!r} given" for k, (a, b) in refused.items())
        raise ValueError(
            f"cannot change {', '.join(refused)} when resuming ({listing}). A resumed run "
            "keeps its model, data order and optimiser; only "
            f"{', '.join(sorted(RESUME_MUTABLE))} may change. Leave them out (a resumed run "
            "reads its configuration from last.pt), or start a new run folder with "
            "'weights: RUN/last.pt'"
        )
    return wanted, changed


def resume_checkpoint(
    run_dir: Path,
    config: TrainConfig | Mapping[str, Any] | None,
    world: int,
    warn: bool = True,
) -> tuple[dict[str, Any], TrainConfig, dict]:
    """(``run_dir/last.pt``, the configuration the run continues with, the changes
    applied) for a resume with ``world`` processes; ValueError when there is nothing to
    resume, a change is refused (:func:`resume_config`) or ``world`` is not the run's.
    ``warn``: say the changes applied in a warning."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise ValueError(f"{last}: nothing to resume (no last.pt in the run folder)")
    ckpt = load_checkpoint(last)
    saved = config_from_checkpoint(ckpt, last)
    given = config.to_dict() if isinstance(config, TrainConfig) else config
    cfg, changed = resume_config(saved, given)
    ck_world = int(ckpt.get("world", 1))
    if ck_world != world:
        raise ValueError(
            f"{last}: the run was trained with {ck_world} process(es), not {world}: resume "
            f"it with {ck_world} (the data order and learning rate depend on it), or start "
            "a new run folder with 'weights: RUN/last.pt'"
        )
    if changed and warn:
        msg = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        warnings.warn(f"resume: applying {msg}", stacklevel=3)
    return ckpt, cfg, changed
