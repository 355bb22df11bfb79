"""NIfTI volume reader (.nii, .nii.gz) with nibabel: windows sliced lazily from the file.

Uncompressed NIfTI is memory-mapped, so a window costs only its own bytes. For .nii.gz nibabel
must decompress the stream up to the window (indexed_gzip makes that seekable when installed);
memory stays bounded by the window, but time grows with its offset: prefer .nii for big
volumes. Axes stay in the file's voxel order (i, j, k); the affine maps them to RAS+ millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from tasks.errors import SegflowError, first_line
from tasks.source import Box, SourceBase


@dataclass(frozen=True)
class Volume(SourceBase):
    """A 3-D (or 4-D, the 4th axis as bands) NIfTI volume and its voxel-to-mm affine."""

    affine: tuple[tuple[float, ...], ...] = ()

    modality: ClassVar[str] = "volume"
    dims: ClassVar[tuple[str, ...]] = ("i", "j", "k")

    def _slab(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            proxy = nib.load(self.uri).dataobj
            if len(proxy.shape) == 3:
                data = np.asarray(proxy[index])[None]
            else:
                data = np.moveaxis(np.asarray(proxy[(*index, [b - 1 for b in self.bands])]), -1, 0)
        except Exception as exc:  # nibabel raises OSError, ValueError, zlib errors alike
            raise SegflowError(self.uri, f"cannot read voxels: {first_line(exc)}") from exc
        return data.astype(data.dtype.newbyteorder("="), copy=False)

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._slab(tuple(box))
        return pixels, np.ones(pixels.shape[1:], bool)

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._slab((slice(None, None, step),) * 3)
        return pixels, np.ones(pixels.shape[1:], bool)

    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(np.asarray(self.affine)[:3, :3])))

    def cell_measure(self) -> tuple[np.ndarray | None, str]:
        return np.full(self.spatial_shape[0], self.voxel_mm3()), "mm3"

    def cell_size(self) -> tuple[str | None, list[float]]:
        affine = np.asarray(self.affine)
        return "millimeter", np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist()

    def spatial_attrs(self) -> dict[str, Any]:
        affine = np.asarray(self.affine)
        return {"affine": affine.tolist(), "axes": list(self.dims),
                "orientation": "".join(nib.aff2axcodes(affine)),
                "voxel_size_mm": self.cell_size()[1]}


def open_volume(uri: str, bands: list[int] | None = None) -> Volume:
    """Read a NIfTI header (no voxels), check it, return a lazy handle."""
    try:
        img = nib.load(uri)
        shape = tuple(int(n) for n in img.shape)
        dtype = np.dtype(img.get_data_dtype()).newbyteorder("=").str
        affine = img.affine
        np.asarray(img.dataobj[(slice(0, 1),) * len(shape)])  # the voxels decode at all
    except Exception as exc:
        raise SegflowError(uri, f"not a readable NIfTI volume: {first_line(exc)}") from exc
    if len(shape) not in (3, 4) or min(shape) == 0:
        raise SegflowError(uri, f"expected a 3-D volume (or 4-D with channels), got {shape}")
    count = 1 if len(shape) == 3 else shape[3]
    chosen = tuple(bands) if bands else tuple(range(1, count + 1))
    if max(chosen) > count:
        raise SegflowError(uri, f"band {max(chosen)} requested but the volume has {count}")
    if len(shape) == 3 and chosen != (1,):
        raise SegflowError(uri, "a 3-D volume has one band")
    return Volume(uri=uri, spatial_shape=shape[:3], bands=chosen, dtype=np.dtype(dtype).name,
                  affine=tuple(tuple(float(v) for v in row) for row in affine))
