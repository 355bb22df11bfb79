"""Multi-channel fluorescence microscopy through bioio: OME-TIFF (bioio-ome-tiff), and CZI, ND2
and LIF with their bioio plug-ins installed (the microscopy extra installs OME-TIFF's).

Channels are chosen by name (``input.channels: [DAPI, CD3]``), in the model's band order; the
names travel with the source into the mask store's attributes. One scene of a multi-scene file
is chosen by name or index (``input.scene``), one time point (``input.t``), and Z is a stated
choice (``input.z``): one plane by index, or ``max``, the maximum projection. The pixel size is
the file's (``input.mpp`` overrides). bioio reads lazily by whole planes: a window decodes the
planes (Y, X) of its channels, and no more, so memory stays bounded by a plane per channel.
An RGB OME-TIFF (a brightfield slide) stays the tifffile slide reader's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import tifffile

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error, is_transient
from segflow.tasks.runtime.storage import open_input
from segflow.tasks.sources.base import Box, SourceBase, needs, select_bands
from segflow.tasks.sources.spatial import SlideRef

_OME = (".ome.tif", ".ome.tiff")


def is_multichannel(uri: str) -> bool:
    """CZI, ND2, LIF always; an OME-TIFF when its image is not RGB (read from the header)."""
    if not uri.lower().endswith(_OME):
        return True
    try:
        with open_input(uri) as fh, tifffile.TiffFile(fh) as tif:
            return bool(tif.is_ome) and not tif.series[0].axes.endswith("S")
    except Exception as exc:
        if is_transient(exc):
            raise io_error(uri, "cannot read the TIFF header", exc) from exc
        return False


def _bioimage(uri: str, **options: Any) -> Any:
    return needs("bioio", "microscopy", uri, "microscopy files").BioImage(uri, **options)


@lru_cache(maxsize=8)
def _image(uri: str, scene: int) -> Any:
    """The file opened by bioio (planes as chunks, so one Z plane reads alone) at one scene;
    a few per worker process."""
    image = _bioimage(uri, chunk_dims=["Y", "X"])
    image.set_scene(scene)
    return image


@dataclass(frozen=True)
class Fluorescence(SourceBase):
    """Chosen channels of one scene, time point and Z plane (or Z maximum) of a microscopy
    file, as (channels, y, x)."""

    scene: int = 0
    t: int = 0
    z: int | None = 0  # None: the maximum over Z
    mpp: float | None = None
    channel_names: tuple[str, ...] = ()

    reader: ClassVar[str] = "bioio"
    modality: ClassVar[str] = "slide"
    base_unit: ClassVar[str] = "um2"

    def _planes(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            data = _image(self.uri, self.scene).get_image_dask_data(
                "CZYX", T=self.t, C=[b - 1 for b in self.bands])
            if self.z is not None:
                data = data[:, self.z:self.z + 1]
            # a window of one task: read here, not as a nested Dask graph
            pixels = np.asarray(data[(slice(None), slice(None), *index)].max(axis=1)
                                .compute(scheduler="synchronous"))
        except Exception as exc:
            _image.cache_clear()
            raise io_error(self.uri, "cannot read planes", exc) from exc
        return pixels

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._planes(tuple(box))
        return pixels, np.ones(pixels.shape[1:], bool)

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = self._planes((slice(None, None, step),) * 2)
        return pixels, np.ones(pixels.shape[1:], bool)

    def physical(self, index: np.ndarray) -> np.ndarray:
        """x, y in µm from the image's top-left corner (pixels when the size is unknown)."""
        return index[:, ::-1] * (self.mpp or 1.0)

    def spatial_ref(self) -> SlideRef:
        return SlideRef(self.mpp, 0, 1.0)

    def band_names(self) -> list[str] | None:
        return list(self.channel_names)


def _scene(uri: str, image: Any, wanted: str | int | None) -> int:
    """The scene index ``input.scene`` names (its index, its OME Image name or bioio id)."""
    ids = list(image.scenes)
    if wanted is None:
        return 0
    if isinstance(wanted, int):
        if not 0 <= wanted < len(ids):
            raise UserError(uri, f"input.scene {wanted}: the file has {len(ids)} scene(s)")
        return wanted
    names = list(ids)
    meta = getattr(image, "ome_metadata", None) if uri.lower().endswith(_OME) else None
    if meta is not None:
        names = [str(img.name or "") for img in meta.images]
    for i, (sid, name) in enumerate(zip(ids, names, strict=False)):
        if wanted in (sid, name):
            return i
    raise UserError(uri, f"no scene {wanted!r}: the file has {', '.join(names)}")


def open_microscopy(uri: str, cfg: InputConfig | None = None) -> Fluorescence:
    """Read the header (dimensions, channel names, pixel size) and choose what to read."""
    cfg = cfg or InputConfig()
    try:
        image = _bioimage(uri)
        scene = _scene(uri, image, cfg.scene)
        image.set_scene(scene)
        dims = image.dims
        names = [str(n) for n in image.channel_names]
        sizes = image.physical_pixel_sizes
        dtype = np.dtype(image.dtype).name
    except UserError:
        raise
    except Exception as exc:
        raise io_error(uri, "not a readable microscopy file", exc) from exc
    if cfg.channels:
        unknown = [c for c in cfg.channels if c not in names]
        if unknown:
            raise UserError(uri, f"no channel {', '.join(unknown)}: the file has "
                                 f"{', '.join(names)}")
        bands = tuple(names.index(c) + 1 for c in cfg.channels)
    else:
        bands = select_bands(uri, cfg.bands, len(names), "image")
    if not 0 <= cfg.t < dims.T:
        raise UserError(uri, f"input.t {cfg.t}: the file has {dims.T} time point(s)")
    z = None if cfg.z == "max" else int(cfg.z)
    if z is not None and not 0 <= z < dims.Z:
        raise UserError(uri, f"input.z {z}: the file has {dims.Z} plane(s); or z: max")
    mpp = cfg.mpp or (float(sizes.X) if sizes.X else None)
    source = Fluorescence(uri=uri, spatial_shape=(int(dims.Y), int(dims.X)), bands=bands,
                          dtype=dtype, scene=scene, t=cfg.t, z=z, mpp=mpp,
                          channel_names=tuple(names[b - 1] for b in bands))
    source.read((slice(0, min(16, dims.Y)), slice(0, min(16, dims.X))))
    return source
