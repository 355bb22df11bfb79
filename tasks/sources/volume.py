"""Volume readers: NIfTI (.nii, .nii.gz) with nibabel, and Zarr / OME-Zarr volumes with zarr.

Uncompressed NIfTI is memory-mapped, so a window costs only its own bytes. For .nii.gz nibabel
must decompress the stream up to the window (indexed_gzip makes that seekable when installed);
memory stays bounded by the window, but time grows with its offset: prefer .nii for big
volumes. On S3 (or any fsspec URL) a window is read with range requests, never the whole
object; a remote .nii.gz streams from its start for each window, fine for MRI-sized volumes.
A volume is presented with every voxel axis ascending in RAS+ millimetres: an axis that runs
against its world axis (the L of an LAS file) is read reversed. The axes keep the file's order
and are named after the world axis each follows (x, y, z for RAS, LAS, LPS...), so the mask's
OME-Zarr transform (scale and translation only: NGFF 0.5 has no flips) places it in world
coordinates, and the NIfTI export reverses the axes again onto the file's own grid.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import nibabel as nib
import numpy as np
import zarr

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import is_local, open_input, zarr_options
from segflow.tasks.runtime.zarr_nodes import array_at, dimension_names
from segflow.tasks.sources.base import Box, SourceBase, select_bands
from segflow.tasks.sources.spatial import VolumeRef, world_axes


@contextmanager
def _nifti(uri: str) -> Iterator[nib.Nifti1Image]:
    """A NIfTI image whose voxels stay on disk: memory-mapped locally; on S3 or any fsspec URL
    read through a range-requesting file (``.nii.gz`` decompressed as it streams), valid only
    inside the ``with``."""
    if is_local(uri):
        yield cast(nib.Nifti1Image, nib.load(uri))  # .nii / .nii.gz: NIfTI-1 or -2 (a subclass)
        return
    with open_input(uri, compression="infer") as fh:  # an fsspec file: an io.IOBase
        yield nib.Nifti1Image.from_stream(cast(io.IOBase, fh))


@dataclass(frozen=True)
class Volume(SourceBase):
    """A 3-D (or 4-D, the 4th axis as bands) NIfTI volume and its voxel-to-mm affine."""

    affine: tuple[tuple[float, ...], ...] = ()

    reader: ClassVar[str] = "nifti"
    modality: ClassVar[str] = "volume"
    base_unit: ClassVar[str] = "mm3"
    physical_axes: ClassVar[tuple[str, ...]] = ("x", "y", "z")

    @property
    def dims(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple("xyz"[axis] for axis in world_axes(np.asarray(self.affine)))

    @property
    def flipped(self) -> tuple[bool, ...]:
        """Which voxel axes the file stores against their world axis, read reversed."""
        return tuple(bool(d < 0) for d in nib.io_orientation(np.asarray(self.affine))[:, 1])

    @property
    def world_affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the volume as presented (flipped axes reversed)."""
        flips = np.column_stack([np.arange(3), np.where(self.flipped, -1, 1)])
        return np.asarray(self.affine) @ nib.orientations.inv_ornt_aff(flips,
                                                                       self.spatial_shape)

    def _slab(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            with _nifti(self.uri) as img:
                proxy = img.dataobj
                if len(proxy.shape) == 3:
                    data = np.asarray(proxy[index])[None]
                else:  # nibabel's proxy takes slices only: read the span, keep the bands
                    lo, hi = min(self.bands) - 1, max(self.bands)
                    span = np.asarray(proxy[(*index, slice(lo, hi))])
                    data = np.moveaxis(span[..., [b - 1 - lo for b in self.bands]], -1, 0)
        except Exception as exc:  # nibabel raises OSError, ValueError, zlib errors alike
            raise io_error(self.uri, "cannot read voxels", exc) from exc
        return data.astype(data.dtype.newbyteorder("="), copy=False)

    def _oriented(self, index: tuple[slice, ...]) -> np.ndarray:
        """Cells ``index`` (slices in the presented order) of the file's bands."""
        flipped = self.flipped
        window = []
        for s, n, flip in zip(index, self.spatial_shape, flipped, strict=True):
            cells = range(n)[s]
            # presented cell c is the file's n - 1 - c: the same cells from the far end
            window.append(slice(n - 1 - cells[-1], n - cells[0], cells.step)
                          if flip and len(cells) else s)
        data = self._slab(tuple(window))
        if not any(flipped):
            return data
        return np.ascontiguousarray(np.flip(data, tuple(a + 1 for a, f in enumerate(flipped) if f)))

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._oriented(tuple(box))
        return pixels, np.ones(pixels.shape[1:], bool)

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._oriented((slice(None, None, step),) * 3)
        return pixels, np.ones(pixels.shape[1:], bool)

    def voxel_mm3(self) -> float:
        return float(VolumeRef.voxel(self.affine))

    def physical(self, index: np.ndarray) -> np.ndarray:
        """RAS+ x, y, z in mm: the NIfTI affine maps voxel centres, which sit at index + 0.5."""
        affine = self.world_affine
        return (index - 0.5) @ affine[:3, :3].T + affine[:3, 3]

    def spatial_ref(self) -> VolumeRef:
        """The affine of the mask's own axes, and the file's, which the NIfTI export writes."""
        affine = self.world_affine
        return VolumeRef(tuple(tuple(float(v) for v in row) for row in affine), self.dims,
                         self.affine, self.flipped,
                         {"orientation": "".join(nib.aff2axcodes(affine)),
                          "voxel_size_mm": VolumeRef.voxel_sizes(self.affine),
                          "source_orientation": "".join(nib.aff2axcodes(np.asarray(
                              self.affine)))})


def open_nifti(uri: str, cfg: InputConfig | None = None) -> Volume:
    """Read a NIfTI header (no voxels), check it, return a lazy handle."""
    cfg = cfg or InputConfig()
    try:
        with _nifti(uri) as img:
            shape = tuple(int(n) for n in img.shape)
            dtype = np.dtype(img.get_data_dtype()).newbyteorder("=").str
            affine = img.affine
            np.asarray(img.dataobj[(slice(0, 1),) * len(shape)])  # the voxels decode at all
    except Exception as exc:
        raise io_error(uri, "not a readable NIfTI volume", exc) from exc
    if len(shape) not in (3, 4) or min(shape) == 0:
        raise UserError(uri, f"expected a 3-D volume (or 4-D with channels), got {shape}")
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise UserError(uri, "the voxel-to-world affine (sform/qform) is singular or not "
                             "finite: the file gives no voxel size")
    count = 1 if len(shape) == 3 else shape[3]
    chosen = select_bands(uri, cfg.bands, count, "volume")
    if len(shape) == 3 and chosen != (1,):
        raise UserError(uri, "a 3-D volume has one band")
    return Volume(uri=uri, spatial_shape=shape[:3], bands=chosen, dtype=np.dtype(dtype).name,
                  affine=tuple(tuple(float(v) for v in row) for row in affine))


@dataclass(frozen=True)
class ZarrVolume(Volume):
    """A 3-D Zarr array, or level 0 of an OME-Zarr image, read chunk-wise by zarr itself."""

    path: str = ""
    #: the input's own axis names (its OME axes or Zarr dimension names), kept for the mask
    axis_names: tuple[str, ...] = ()

    reader: ClassVar[str] = "zarr"

    @property
    def dims(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.axis_names or super().dims

    def _slab(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            data = np.asarray(zarr.open_array(store=self.uri, path=self.path, mode="r",
                                           **zarr_options(self.uri))[index])
        except Exception as exc:
            raise io_error(self.uri, "cannot read voxels", exc) from exc
        return data[None]


def _ome_level0(group: zarr.Group) -> tuple[str, list[float], list[float], tuple[str, ...]]:
    """Path, scale, translation and axis names of level 0 from OME-Zarr multiscales (0.4 or
    0.5)."""
    attrs: dict[str, Any] = group.attrs.asdict()
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise ValueError("a Zarr group without OME multiscales metadata")
    dataset = multiscales[0]["datasets"][0]
    scale, shift = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    for transform in dataset.get("coordinateTransformations", []):
        if transform["type"] == "scale":
            scale = [float(v) for v in transform["scale"]][-3:]
        if transform["type"] == "translation":
            shift = [float(v) for v in transform["translation"]][-3:]
    names = tuple(str(a["name"]) if isinstance(a, dict) else str(a)
                  for a in multiscales[0].get("axes", []))[-3:]
    return dataset["path"], scale, shift, names


def open_zarr_volume(uri: str, cfg: InputConfig | None = None) -> ZarrVolume:
    """Open a 3-D Zarr array or OME-Zarr image; voxel sizes from its scale (taken as mm)."""
    try:
        node = zarr.open(store=uri, mode="r", **zarr_options(uri))
        if isinstance(node, zarr.Group):
            path, scale, shift, names = _ome_level0(node)
            array = array_at(node, path)
        else:
            path, scale, shift, names, array = "", [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], (), node
        axis_names = dimension_names(array)  # a v2 array has none
        if axis_names and all(axis_names):
            names = tuple(str(name) for name in axis_names)
        shape = tuple(int(n) for n in array.shape)
        dtype = np.dtype(array.dtype).name
    except Exception as exc:
        raise io_error(uri, "not a readable Zarr volume", exc) from exc
    if len(shape) != 3:
        raise UserError(uri, f"expected a 3-D Zarr volume, got shape {shape}")
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = shift
    bands = select_bands(uri, (cfg or InputConfig()).bands, 1, "volume")
    return ZarrVolume(uri=uri, spatial_shape=shape, bands=bands, dtype=dtype, path=path,
                      affine=tuple(tuple(float(v) for v in row) for row in affine),
                      axis_names=names if len(set(names)) == 3 else ())
