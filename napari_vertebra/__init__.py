"""napari-vertebra: vertebrae found, labelled and outlined on clinical CT.

The package is layered; importing it imports nothing heavy:

- :mod:`napari_vertebra.core`: pure numpy / SimpleITK / scipy / scikit code (CT I/O,
  preprocessing, classes).
- :mod:`napari_vertebra.annotation`: pure polygon, COCO and VIA code, labels from 3D,
  partial views and the training-set builder.
- :mod:`napari_vertebra.model`: torch / torchvision Mask R-CNN (torch is imported there only).
- :mod:`napari_vertebra.widgets`: the napari widgets (the only place for Qt and napari).
"""

__version__ = "0.1.0"
