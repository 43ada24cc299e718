"""napari widgets (the only package that imports Qt, napari and magicgui).

Reader / writer / sample data: :mod:`._reader`, :mod:`._writer`, :mod:`._sample`.
Dock widgets: :class:`~.preprocess.PreprocessWidget`, :class:`~.annotate.AnnotateWidget`,
:class:`~.export.ExportDatasetWidget` (and train / predict / review). Each is a
``QWidget`` built with ``widget = Cls(viewer)``; its children are attributes and its
handlers methods, so tests set values and call the handlers. The widgets of a viewer
share its :class:`~._session.Session` (``session_for(viewer)``) and never talk to one
another; the work below them is Qt-free (:mod:`napari_vertebra.annotation.session`,
:mod:`napari_vertebra.model.predict_jobs`, the core and model packages). Long work runs
on a worker thread through :class:`~._threading.TaskRunner`; messages go to a
:class:`~._status.StatusLine` and napari notifications.
"""
