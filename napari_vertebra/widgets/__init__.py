"""napari widgets (the only package that imports Qt, napari and magicgui).

Reader / writer / sample data: :mod:`._reader`, :mod:`._writer`, :mod:`._sample`.
Dock widgets: :class:`~.preprocess.PreprocessWidget`, :class:`~.annotate.AnnotateWidget`,
:class:`~.export.ExportDatasetWidget` (and train / predict / review). Each is a magicgui
``Container`` built with ``widget = Cls(viewer)``; its children are attributes and its
handlers methods, so tests set values and call the handlers. Long work runs on a worker
thread through :class:`~._threading.TaskRunner`.
"""
