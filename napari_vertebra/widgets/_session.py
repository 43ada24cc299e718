"""One :class:`Session` per viewer: the state the napari-vertebra widgets share.

The widgets never look each other up nor read each other's attributes: each one asks
:func:`session_for` ``(viewer)`` for the viewer's session, writes what it produces into
it and listens to its psygnal events for what the others produce:

- ``annotation``: the :class:`~napari_vertebra.annotation.session.AnnotationSession`
  (the open project; 'Annotate vertebrae' opens it, Train / Review / Export use it);
- preprocessing results by MIP layer (:meth:`Session.set_result` by 'Preprocess CT',
  :meth:`Session.result_for`; event ``result_changed`` with the result the MIP showed
  before, which 'Annotate vertebrae' follows to move the polygons of a re-run MIP) and
  the last valid parameters (``preprocess_params``);
- the prediction on screen (:meth:`Session.set_prediction` by 'Predict vertebrae',
  event ``prediction_changed``; 'Review predictions' follows it);
- the checkpoint to predict with (:meth:`Session.use_checkpoint`, e.g. by 'Train
  model'; event ``checkpoint_changed``, 'Predict vertebrae' follows it);
- the polygons on screen (:class:`Polygons`, published by 'Annotate vertebrae'):
  :meth:`Session.show_polygons_of` asks for a MIP's polygons (event
  ``annotate_requested``) and :meth:`Session.replace_annotations` replaces them (event
  ``annotations_replaced``, one undoable step).

Sessions are kept per viewer (a weak dictionary): two viewers never share one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from psygnal import Signal

from napari_vertebra.annotation.session import AnnotationSession

from ._layers import same_layer, unwrap

__all__ = ["Polygons", "Session", "ShownPrediction", "session_for"]

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Plugin dock titles (napari.yaml) of the widgets a session may open.
ANNOTATE_TITLE = "Annotate vertebrae"
PREDICT_TITLE = "Predict vertebrae"


def session_for(viewer: Any) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use; proxies unwrapped)."""
    real = unwrap(viewer)
    session = _SESSIONS.get(real)
    if session is None:
        session = Session(real)
        _SESSIONS[real] = session
    return session


@dataclass
class ShownPrediction:
    """A prediction shown in the viewer: ``prediction`` (a
    :class:`~napari_vertebra.model.predict.Prediction`), the name of the image it was
    made on, the 2D layer it lies on (``target``, the MIP) and its two layers."""

    prediction: Any
    image_name: str
    target: Any = None
    labels_layer: Any = None
    boxes_layer: Any = None


@dataclass
class Polygons:
    """The vertebra polygons on screen: the Shapes ``layer`` over the ``mip`` layer,
    saved under the project key ``key``."""

    mip: Any
    layer: Any
    key: str


class Session:
    """The shared state of one viewer's widgets (see the module docstring)."""

    #: (MIP layer, PipelineResult, the result it showed before or None) after 'Preprocess
    #: CT' showed a result.
    result_changed = Signal(object, object, object)
    #: The new :class:`ShownPrediction` (or None).
    prediction_changed = Signal(object)
    #: The path of the checkpoint to predict with.
    checkpoint_changed = Signal(str)
    #: The :class:`Polygons` on screen (or None) after they changed layer or key.
    polygons_changed = Signal(object)
    #: A MIP layer whose polygons should be shown (handled by 'Annotate vertebrae').
    annotate_requested = Signal(object)
    #: (annotations, history label): replace the polygons on screen (one undo step).
    annotations_replaced = Signal(object, str)

    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)
        self.annotation = AnnotationSession()
        self._results: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.preprocess_params: Any = None
        self.prediction: ShownPrediction | None = None
        self.checkpoint: str | None = None
        self.polygons: Polygons | None = None
        #: The Predictor last loaded by 'Predict vertebrae' (Annotate's click outlines
        #: use it when set), or None.
        self.predictor: Any = None

    @property
    def viewer(self) -> Any:
        """The viewer (None once it is gone)."""
        return self._viewer()

    @property
    def project(self) -> Any:
        """The open :class:`~napari_vertebra.annotation.project.AnnotationProject` or None."""
        return self.annotation.project

    # -- preprocessing -------------------------------------------------------------------
    def set_result(self, mip_layer: Any, result: Any) -> None:
        """Remember that ``mip_layer`` shows the PipelineResult ``result``."""
        try:
            previous = self._results.get(unwrap(mip_layer))
            self._results[unwrap(mip_layer)] = result
        except TypeError:  # not weak-referenceable: nothing to remember it by
            return
        self.result_changed.emit(mip_layer, result, previous)

    def result_for(self, layer: Any) -> Any:
        """The PipelineResult a MIP layer shows (its metadata's, else the one set by
        :meth:`set_result`), or None."""
        if layer is None:
            return None
        res = (getattr(layer, "metadata", None) or {}).get("pipeline_result")
        if res is not None and hasattr(res, "mip"):
            return res
        try:
            return self._results.get(unwrap(layer))
        except TypeError:
            return None

    # -- prediction ----------------------------------------------------------------------
    def set_prediction(self, shown: ShownPrediction | None) -> None:
        """Make ``shown`` the prediction on screen (emits ``prediction_changed``)."""
        self.prediction = shown
        self.prediction_changed.emit(shown)

    def use_checkpoint(self, path: str, dock: bool = True) -> bool:
        """Predict with the checkpoint at ``path`` from now on (emits
        ``checkpoint_changed``); with ``dock``, opens 'Predict vertebrae' when no widget
        follows the checkpoint yet. True when a widget took it."""
        self.checkpoint = str(path)
        if dock and len(self.checkpoint_changed) == 0:
            self._dock(PREDICT_TITLE)
        taken = len(self.checkpoint_changed) > 0
        self.checkpoint_changed.emit(self.checkpoint)
        return taken

    # -- polygons ------------------------------------------------------------------------
    def publish_polygons(self, polygons: Polygons | None) -> None:
        """Called by 'Annotate vertebrae' when its polygons layer or key changed."""
        self.polygons = polygons
        self.polygons_changed.emit(polygons)

    def polygons_of(self, mip: Any) -> Polygons | None:
        """The polygons on screen when they are those of ``mip``, else None."""
        p = self.polygons
        if p is None or not same_layer(p.mip, mip):
            return None
        viewer = self.viewer
        if viewer is not None and unwrap(p.layer) not in [unwrap(la) for la in viewer.layers]:
            return None
        return p

    def show_polygons_of(self, mip: Any, dock: bool = True) -> Polygons | None:
        """Ask for the polygons of ``mip`` to be shown (opening 'Annotate vertebrae' when
        ``dock`` and none listens); returns them, or None when nobody could."""
        if self.polygons_of(mip) is None:
            if dock and len(self.annotate_requested) == 0:
                self._dock(ANNOTATE_TITLE)
            self.annotate_requested.emit(mip)
        return self.polygons_of(mip)

    def replace_annotations(self, annotations: list, label: str = "replace polygons") -> bool:
        """Replace the polygons on screen by ``annotations`` (shown and saved as one
        undoable step named ``label``); False when no polygons are on screen."""
        if self.polygons is None or len(self.annotations_replaced) == 0:
            return False
        self.annotations_replaced.emit(list(annotations), label)
        return True

    # -- docking -------------------------------------------------------------------------
    def _dock(self, title: str) -> Any:
        """Open the plugin's widget ``title`` in the viewer (None when it cannot)."""
        window = getattr(self.viewer, "window", None)
        if window is None:
            return None
        try:
            _, widget = window.add_plugin_dock_widget("napari-vertebra", title)
        except Exception as e:  # e.g. the plugin is not registered (a bare test viewer)
            from ._status import notify

            notify(f"could not open '{title}': {e}", "warning")
            return None
        return widget
