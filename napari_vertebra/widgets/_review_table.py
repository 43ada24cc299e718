"""The table of the "Review predictions" widget: one row per predicted vertebra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_vertebra.annotation.review import ReviewItem
from napari_vertebra.core.labels import class_colour, class_name

__all__ = ["COLUMNS", "ReviewTable"]

COLUMNS = ("vertebra", "score", "state", "Dice")
_STATE_COLOURS = {
    "pending": "#c8c8c8",
    "accepted": "#7bd88f",
    "rejected": "#ff6b6b",
    "fixed": "#8ab4f8",
}


class ReviewTable(QTableWidget):
    """Vertebra (predicted class, "→ L3" when fixed as another), score, state, Dice; one
    row selected at a time, not editable."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.horizontalHeaderItem(COLUMNS.index("score")).setToolTip(
            "Class probability of the detection (the number the Predict slider filters on)"
        )
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.setMinimumHeight(200)

    def show_items(self, items: Sequence[ReviewItem], dice: Sequence[float | None]) -> None:
        """One row per item (the rows' selection is kept)."""
        self.setRowCount(len(items))
        for i, item in enumerate(items):
            name = item.name
            if item.added is not None and item.added.class_id != item.class_id:
                name += f" → {class_name(item.added.class_id)}"
            d = dice[i] if i < len(dice) else None
            cells = (name, f"{item.score:.2f}", item.state, "-" if d is None else f"{d:.3f}")
            for j, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(int(Qt.AlignmentFlag.AlignCenter))
                if j == 0:
                    cell.setForeground(QColor(class_colour(item.class_id)))
                if j == 2:
                    cell.setForeground(QColor(_STATE_COLOURS[item.state]))
                self.setItem(i, j, cell)

    @property
    def current(self) -> int | None:
        """The selected row, or None."""
        model = self.selectionModel()
        rows = model.selectedRows() if model is not None else []
        return rows[0].row() if rows else None
