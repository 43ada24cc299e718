"""Pure annotation layer: polygons and masks, COCO / VIA files, the autosaved project
store, annotations from 3D label maps, partial views and the dataset builder.

No Qt, napari or torch here. Coordinates are (row, col) pixels (see ``types``).
"""

from .coco import CocoFormatError, coco_categories, from_coco, read_coco, to_coco, write_coco
from .convert import convert, detect_format, read_annotations
from .dataset import SPLITS, CTLabelPair, build_dataset, read_pairs_csv, split_scans
from .from3d import labels_to_annotations, projected_masks
from .image_files import HU_SCALE, read_image, write_mip_png
from .label_fit import LabelMapError, check_label_fit
from .partial import crop_view, partial_views
from .polygons import (
    annotations_to_label_image,
    check_image_annotations,
    check_polygon,
    dice,
    label_image_to_annotations,
    mask_to_polygons,
    polygon_area,
    polygon_centroid,
    rasterize,
)
from .project import AnnotationProject, safe_key
from .rle import rle_decode
from .types import AnnotatedImage, VertebraAnnotation
from .via import DEFAULT_ATTRIBUTE, ViaFormatError, from_via, read_via, to_via, write_via

__all__ = [
    "DEFAULT_ATTRIBUTE",
    "HU_SCALE",
    "SPLITS",
    "AnnotatedImage",
    "AnnotationProject",
    "CTLabelPair",
    "CocoFormatError",
    "LabelMapError",
    "VertebraAnnotation",
    "ViaFormatError",
    "annotations_to_label_image",
    "build_dataset",
    "check_image_annotations",
    "check_label_fit",
    "check_polygon",
    "coco_categories",
    "convert",
    "crop_view",
    "detect_format",
    "dice",
    "from_coco",
    "from_via",
    "label_image_to_annotations",
    "labels_to_annotations",
    "mask_to_polygons",
    "partial_views",
    "polygon_area",
    "polygon_centroid",
    "projected_masks",
    "rasterize",
    "read_annotations",
    "read_coco",
    "read_image",
    "read_pairs_csv",
    "read_via",
    "rle_decode",
    "safe_key",
    "split_scans",
    "to_coco",
    "to_via",
    "write_coco",
    "write_mip_png",
    "write_via",
]
