"""The one image contract: a 3D array in (z, y, x) with its physical geometry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

__all__ = ["Volume"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT (or label map) on a regular grid.

    Axis order is (z, y, x) for ``array`` and ``spacing``, the numpy order of the
    array. In the canonical orientation (LPS, as DICOM and ITK) the index axes run x:
    right to left, y: anterior to posterior, z: inferior to superior.
    :func:`napari_vertebra.core.read_ct` permutes and flips the axes to the closest of
    it; :func:`napari_vertebra.core.resample_isotropic` gives it exactly (identity
    direction) for any input, oblique ones included.

    ``origin`` and ``direction`` are physical-space quantities kept exactly as
    SimpleITK has them, in ITK's (x, y, z) order: ``origin`` is the LPS position in mm
    of voxel (0, 0, 0); ``direction`` is the 3x3 direction-cosine matrix whose column j
    is the physical direction of ITK index axis j (x, y, z).

    ``warnings`` lists, in plain words, what reading had to correct or doubt (an HU
    offset applied, NaN voxels replaced, a DICOM geometry rebuilt); empty when the file
    was as expected. Every step that derives a new volume keeps them.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D (z, y, x) array, got shape {self.array.shape}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, float).reshape(3, 3))
        object.__setattr__(self, "warnings", tuple(str(w) for w in self.warnings))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size in (z, y, x) voxels."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size of the grid in (z, y, x) mm."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing, strict=True))  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry holding another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array)

    def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
        """Map (..., 3) continuous voxel indices (z, y, x) to LPS mm (x, y, z)."""
        zyx = np.asarray(zyx, float)
        ijk = zyx[..., ::-1] * np.asarray(self.spacing[::-1])
        return ijk @ self.direction.T + np.asarray(self.origin)

    def physical_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map (..., 3) LPS mm (x, y, z) to continuous voxel indices (z, y, x)."""
        xyz = np.asarray(xyz, float) - np.asarray(self.origin)
        ijk = xyz @ np.linalg.inv(self.direction).T / np.asarray(self.spacing[::-1])
        return ijk[..., ::-1]

    def napari_kwargs(self) -> dict:
        """``scale`` and ``translate`` (z, y, x mm) that place this grid in napari."""
        return {"scale": self.spacing, "translate": tuple(self.origin[::-1])}

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (shares no memory)."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing[::-1])
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Volume:
        """Wrap a 3D SimpleITK image (array copied into (z, y, x) order)."""
        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=tuple(img.GetSpacing()[::-1]),
            origin=tuple(img.GetOrigin()),
            direction=np.array(img.GetDirection()).reshape(3, 3),
        )

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=max(atol, 1e-2))
            and np.allclose(self.direction, other.direction, atol=atol)
        )
