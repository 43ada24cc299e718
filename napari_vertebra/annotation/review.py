"""Review of predicted vertebrae: accept, reject or fix them into a MIP's polygons.

The logic behind the "Review predictions" widget, with no Qt, napari or torch. A
:class:`ReviewController` holds one :class:`ReviewItem` per predicted vertebra (state
pending / accepted / rejected / fixed) and turns each action into a new list of the
MIP's annotations, which the caller stores (the widget: the annotation project).

Nothing is lost: an accepted vertebra whose class already has a polygon (drawn by hand,
from 3D labels, or kept from an earlier review) never replaces it silently. The caller
says what to do, ``"replace"`` (the old polygon is kept in the item, and rejecting the
item puts it back exactly) or ``"keep"`` (both stay; the prediction is marked
``source="model"`` with its score); without an answer the action is refused. The
questions' default answer (what Enter gives) is the one that takes nothing out: keep
both, or accept only the vertebrae without a polygon.

Each accepted vertebra is one polygon, whatever its mask: fragments and holes are merged
and a far fragment dropped (:func:`~.polygons.mask_outline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_vertebra.core.labels import level_name

from .polygons import dice, mask_outline
from .types import VertebraAnnotation

__all__ = [
    "CONFLICT_CHOICES",
    "MODEL_SOURCE",
    "STATES",
    "AcceptAllPlan",
    "Question",
    "ReviewController",
    "ReviewError",
    "ReviewItem",
    "dice_scores",
    "same_annotation",
]

STATES = ("pending", "accepted", "rejected", "fixed")
#: ``source`` of the polygons a review adds.
MODEL_SOURCE = "model"
#: Answers to "this class already has a polygon": for one vertebra, for "accept all".
CONFLICT_CHOICES = {"one": ("replace", "keep"), "all": ("replace", "skip")}


@dataclass(frozen=True)
class Question:
    """What to ask the user before an action: ``choices`` maps each answer to its
    button text (Cancel is always there too), the :attr:`default` first."""

    title: str
    text: str
    choices: dict[str, str]

    @property
    def default(self) -> str:
        """The answer Enter gives: the first choice, the one that takes nothing out."""
        return next(iter(self.choices))


class ReviewError(ValueError):
    """An action that cannot be done (no such row, an empty mask, an unanswered conflict)."""


@dataclass
class ReviewItem:
    """One predicted vertebra under review.

    ``polygons`` outline the predicted mask: one (N, 2) (row, col) px polygon
    (:func:`~.polygons.mask_outline`: fragments and holes merged, a far fragment dropped),
    none for an empty mask; ``added`` is the annotation this item put into the list
    (accepted or fixed), ``replaced`` what that displaced (restored on reject).
    """

    class_id: int
    score: float
    polygons: list[np.ndarray]
    state: str = "pending"
    added: VertebraAnnotation | None = None
    replaced: list[VertebraAnnotation] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Predicted vertebra name, e.g. ``"L1"``."""
        return level_name(self.class_id)


@dataclass(frozen=True)
class AcceptAllPlan:
    """What "accept all pending" would do: ``rows`` to accept, of which ``conflicts``
    (row -> existing polygons of its class, not from this review) would replace
    polygons; ``left`` pending rows it leaves (class already reviewed, a better-scored
    row of the same class, or an empty mask)."""

    rows: tuple[int, ...]
    conflicts: dict[int, list[VertebraAnnotation]]
    left: tuple[int, ...]

    @property
    def n_replaced(self) -> int:
        """How many existing polygons (vertebrae) "replace" would take out."""
        return len(self.conflicts)

    def conflict_names(self) -> list[str]:
        """Names of the vertebrae that already have a polygon, top to bottom."""
        return [level_name(a[0].class_id) for _, a in sorted(self.conflicts.items()) if a]

    def question(self) -> Question | None:
        """The question to ask before accepting (None: nothing would be replaced)."""
        n = self.n_replaced
        if not n:
            return None
        return Question(
            "Accept all pending",
            f"{n} of the {len(self.rows)} vertebrae to accept already have polygons "
            f"({', '.join(self.conflict_names())}). Replace them? Reject on a row brings "
            "its polygon back.",
            {"skip": f"Accept only the {len(self.rows) - n} others", "replace": f"Replace {n}"},
        )


def same_annotation(a: VertebraAnnotation, b: VertebraAnnotation, atol: float = 1e-2) -> bool:
    """Same class and the same polygons (score and source ignored: a Shapes layer or a
    file round trip may drop them; coordinates may be rounded to ``atol`` px)."""
    if a.class_id != b.class_id or len(a.polygons) != len(b.polygons):
        return False
    return all(
        p.shape == q.shape and np.allclose(p, q, atol=atol)
        for p, q in zip(a.polygons, b.polygons, strict=True)
    )


def dice_scores(
    masks: np.ndarray, classes: Sequence[int], ground_truth: np.ndarray | None
) -> list[float | None]:
    """Dice of each predicted mask with the ground-truth class image's pixels of its class
    (None for every item without a ground truth)."""
    if ground_truth is None:
        return [None] * len(classes)
    gt = np.asarray(ground_truth)
    return [dice(m, gt == int(c)) for m, c in zip(masks, classes, strict=True)]


def _index(annotations: Sequence[VertebraAnnotation], a: VertebraAnnotation) -> int | None:
    for k, b in enumerate(annotations):
        if same_annotation(a, b):
            return k
    return None


class ReviewController:
    """States of the predicted vertebrae of one MIP and what each action does to its
    annotations. ``before`` is the MIP's annotations when the review started.

    Actions take the current annotations and return the new list; they change the
    items' states only when they succeed (a :class:`ReviewError` leaves all as it was).
    """

    def __init__(
        self, items: Sequence[ReviewItem], before: Sequence[VertebraAnnotation] = ()
    ) -> None:
        self.items = list(items)
        self.before = list(before)

    @classmethod
    def from_prediction(
        cls,
        masks: np.ndarray,
        classes: Sequence[int],
        scores: Sequence[float],
        before: Sequence[VertebraAnnotation] = (),
    ) -> ReviewController:
        """Items from predicted (N, H, W) masks, classes 1..17 and scores, all pending;
        each mask becomes one polygon, whatever its fragments."""
        items = []
        for m, c, s in zip(masks, classes, scores, strict=True):
            outline = mask_outline(m)
            items.append(ReviewItem(int(c), float(s), [] if outline is None else [outline]))
        return cls(items, before)

    # -- state -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def states(self) -> list[str]:
        """The state of every item, in order."""
        return [it.state for it in self.items]

    def counts(self) -> dict[str, int]:
        """How many items are in each state."""
        return {s: self.states.count(s) for s in STATES}

    def next_pending(self, after: int | None = None) -> int | None:
        """The first pending item after row ``after`` (wrapping round), or None."""
        n = len(self.items)
        start = (-1 if after is None else after) + 1
        for k in range(n):
            i = (start + k) % n
            if self.items[i].state == "pending":
                return i
        return None

    def summary(
        self,
        dice: Sequence[float | None] = (),
        annotations: Sequence[VertebraAnnotation] | None = None,
    ) -> str:
        """One line of counts per state, the mean Dice when known and, given the current
        ``annotations``, a warning naming vertebrae whose polygon is gone."""
        counts = self.counts()
        text = ", ".join(f"{counts[s]} {s}" for s in STATES)
        known = [d for d in dice if d is not None]
        if known:
            text += f"; mean Dice {np.mean(known):.3f} over {len(known)}"
        gone = self.missing(annotations) if annotations is not None else []
        if gone:
            text += f". Warning: had a polygon before the review, none now: {', '.join(gone)}"
        return text

    def missing(self, annotations: Sequence[VertebraAnnotation]) -> list[str]:
        """Vertebrae that had a polygon when the review started and have none now."""
        now = {a.class_id for a in annotations}
        gone = sorted({a.class_id for a in self.before} - now)
        return [level_name(c) for c in gone]

    # -- queries ---------------------------------------------------------------------
    def _item(self, i: int) -> ReviewItem:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.items):
            raise ReviewError(f"no predicted vertebra in row {i} (there are {len(self.items)})")
        return self.items[int(i)]

    def holder(self, class_id: int, exclude: int | None = None) -> int | None:
        """The row whose accepted or fixed polygon has ``class_id``, or None."""
        for j, it in enumerate(self.items):
            if j != exclude and it.added is not None and it.added.class_id == class_id:
                return j
        return None

    def conflicts(
        self, i: int, annotations: Sequence[VertebraAnnotation], class_id: int | None = None
    ) -> list[VertebraAnnotation]:
        """The polygons of ``class_id`` (default: row ``i``'s class) that accepting row
        ``i`` would meet and that this review did not add: hand-drawn ones, from 3D
        labels, or ones the row holding the class had replaced."""
        cid = self._item(i).class_id if class_id is None else int(class_id)
        anns = self._release(i, list(annotations))
        anns = self._release(self.holder(cid, exclude=i), anns)
        return [a for a in anns if a.class_id == cid]

    def accept_question(
        self, i: int, annotations: Sequence[VertebraAnnotation], class_id: int | None = None
    ) -> Question | None:
        """The question to ask before accepting row ``i`` as ``class_id`` (None: its
        class has no polygon, or the mask is empty and accepting will refuse anyway)."""
        item = self._item(i)
        old = self.conflicts(i, annotations, class_id)
        if not old or not item.polygons:
            return None
        name = old[0].name
        return Question(
            f"{name} already has a polygon",
            f"{name} already has a polygon ({old[0].source}). Replace it with the "
            f"prediction (score {item.score:.2f})? Reject brings it back.",
            {"keep": "Keep both", "replace": f"Replace {name}"},
        )

    def outcome(self, i: int, annotations: Sequence[VertebraAnnotation]) -> str:
        """What the last action did to row ``i``, in one sentence for the status line:
        the polygon it replaced and how to get it back, or the polygons now sharing its
        class (``annotations``: the MIP's polygons after the action)."""
        item = self._item(i)
        name = item.name
        if item.added is None:
            return f"{name} {item.state}"
        name = item.added.name
        if item.replaced:
            old = item.replaced[0].source
            return (
                f"{name} {item.state}, replacing the {old} polygon: Reject (R) or Ctrl+Z "
                "brings it back"
            )
        same = [a for a in annotations if a.class_id == item.added.class_id]
        if len(same) < 2:
            return f"{name} {item.state}"
        others = sorted({a.source for a in same if not same_annotation(a, item.added)})
        return (
            f"{name} {item.state}, kept beside the {' and '.join(others)} polygon: {name} "
            f"now has {len(same)} polygons (the Checks say so); delete the one you do not "
            "want, or Reject (R) takes the prediction out"
        )

    # -- actions ---------------------------------------------------------------------
    def accept(
        self,
        i: int,
        annotations: Sequence[VertebraAnnotation],
        on_conflict: str | None = None,
        class_id: int | None = None,
        state: str = "accepted",
    ) -> list[VertebraAnnotation]:
        """Row ``i``'s outline as a polygon of ``class_id`` (default: its class).

        Another row holding that class is rejected first. If the class still has a
        polygon, ``on_conflict`` says what to do: ``"replace"`` it (kept in the item:
        :meth:`reject` puts it back) or ``"keep"`` both; None refuses (ReviewError).
        """
        item = self._item(i)
        cid = item.class_id if class_id is None else int(class_id)
        if not item.polygons:
            raise ReviewError(f"{level_name(cid)}: the predicted mask is empty")
        anns = self._release(i, list(annotations))
        holder = self.holder(cid, exclude=i)
        anns = self._release(holder, anns)
        old = [a for a in anns if a.class_id == cid]
        if old and on_conflict not in CONFLICT_CHOICES["one"]:
            raise ReviewError(
                f"{level_name(cid)} already has a polygon ({old[0].source}): "
                "replace it or keep both"
            )
        replaced = old if on_conflict == "replace" else []
        anns = [a for a in anns if not any(a is r for r in replaced)]
        new = VertebraAnnotation(
            cid, [p.copy() for p in item.polygons], score=item.score, source=MODEL_SOURCE
        )
        anns.append(new)
        if holder is not None:  # commit: nothing above raised
            self._forget(holder, "rejected")
        item.state, item.added, item.replaced = state, new, replaced
        return anns

    def fix(
        self,
        i: int,
        annotations: Sequence[VertebraAnnotation],
        class_id: int,
        on_conflict: str | None = None,
    ) -> list[VertebraAnnotation]:
        """Like :meth:`accept` with the given class, the state "fixed" (for editing)."""
        return self.accept(i, annotations, on_conflict, class_id=class_id, state="fixed")

    def reject(
        self, i: int, annotations: Sequence[VertebraAnnotation]
    ) -> list[VertebraAnnotation]:
        """Reject row ``i``: a polygon it added goes and what that replaced comes back."""
        self._item(i)
        anns = self._release(i, list(annotations))
        self._forget(i, "rejected")
        return anns

    def plan_accept_all(self, annotations: Sequence[VertebraAnnotation]) -> AcceptAllPlan:
        """What :meth:`accept_all` would accept and which existing polygons it meets."""
        anns = list(annotations)
        taken = {it.added.class_id for it in self.items if it.added is not None}
        best: dict[int, int] = {}
        left: list[int] = []
        for i, it in enumerate(self.items):
            if it.state != "pending":
                continue
            if it.class_id in taken or not it.polygons:
                left.append(i)
            elif it.class_id in best and self.items[best[it.class_id]].score >= it.score:
                left.append(i)
            else:
                if it.class_id in best:
                    left.append(best[it.class_id])
                best[it.class_id] = i
        rows = tuple(sorted(best.values()))
        conflicts = {i: c for i in rows if (c := self.conflicts(i, anns))}
        return AcceptAllPlan(rows, conflicts, tuple(sorted(left)))

    def accept_all(
        self, annotations: Sequence[VertebraAnnotation], on_conflict: str | None = None
    ) -> tuple[list[VertebraAnnotation], list[int]]:
        """Accept every pending row the plan takes; returns (annotations, rows accepted).

        Rows whose class already has a polygon need ``on_conflict``: ``"replace"``
        (each replaced polygon comes back when its row is rejected) or ``"skip"`` (they
        stay pending); None refuses when there is any (ReviewError).
        """
        plan = self.plan_accept_all(annotations)
        if plan.conflicts and on_conflict not in CONFLICT_CHOICES["all"]:
            raise ReviewError(
                f"{plan.n_replaced} vertebra(e) already have polygons "
                f"({', '.join(plan.conflict_names())}): replace them or skip them"
            )
        anns = list(annotations)
        done: list[int] = []
        for i in plan.rows:
            if i in plan.conflicts and on_conflict == "skip":
                continue
            anns = self.accept(i, anns, on_conflict="replace")
            done.append(i)
        return anns, done

    # -- helpers ---------------------------------------------------------------------
    def _release(
        self, i: int | None, annotations: list[VertebraAnnotation]
    ) -> list[VertebraAnnotation]:
        """``annotations`` without row ``i``'s added polygon and with what it replaced
        (a new list; the item is not changed)."""
        if i is None:
            return annotations
        item = self.items[i]
        if item.added is None:
            return annotations
        k = self._find(i, annotations)
        anns = [a for j, a in enumerate(annotations) if j != k]
        anns += [r for r in item.replaced if _index(anns, r) is None]
        return anns

    def _find(self, i: int, annotations: Sequence[VertebraAnnotation]) -> int | None:
        """Where row ``i``'s added polygon is in ``annotations``: the same outline, or (it
        was edited, e.g. after Fix) the only polygon of its class that neither was there
        before the review nor belongs to another row."""
        added = self.items[i].added
        k = _index(annotations, added)
        if k is not None:
            return k
        known = self.before + [
            a for j, it in enumerate(self.items) if j != i for a in [it.added, *it.replaced] if a
        ]
        cands = [
            k
            for k, a in enumerate(annotations)
            if a.class_id == added.class_id and _index(known, a) is None
        ]
        return cands[0] if len(cands) == 1 else None

    def _forget(self, i: int, state: str) -> None:
        item = self.items[i]
        item.state, item.added, item.replaced = state, None, []
