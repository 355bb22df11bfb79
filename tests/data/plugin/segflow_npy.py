"""NumPy ``.npy`` arrays (bands, y, x) read window by window through a memory map, and a
``brighter`` kind: foreground where a band is above ``factor`` times its mean over the image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from segflow.plugins import (
    Box,
    InputConfig,
    InputSpec,
    JobConfig,
    ModelParams,
    PixelRef,
    Reader,
    SegmentationModel,
    SourceBase,
    UserError,
    check_band,
    class_table,
    select_bands,
)

READER = Reader("npy", "raster", (".npy",), "segflow_npy:open_npy")


def _array(uri: str) -> np.ndarray:
    try:
        array = np.load(uri, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(uri, f"not a NumPy array file: {exc}") from None
    if array.ndim != 3:
        raise UserError(uri, f"expected (bands, y, x), got {array.ndim} axes")
    return array


@dataclass(frozen=True)
class NpySource(SourceBase):
    reader: ClassVar[str] = "npy"
    modality: ClassVar[str] = "raster"
    base_unit: ClassVar[str] = "m2"

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.asarray(_array(self.uri)[[b - 1 for b in self.bands]][(slice(None), *box)])
        return pixels, np.ones(pixels.shape[1:], bool)

    def _read_decimated(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self._read((slice(None, None, step), slice(None, None, step)))

    def physical(self, index: np.ndarray) -> np.ndarray:
        return index[:, ::-1].astype(np.float64)  # x = column, y = row

    def spatial_ref(self) -> PixelRef:
        return PixelRef("raster")  # no physical reference: areas in pixels


def open_npy(uri: str, cfg: InputConfig) -> NpySource:
    array = _array(uri)
    bands = select_bands(uri, cfg.bands, array.shape[0], "array")
    return NpySource(uri=uri, spatial_shape=tuple(array.shape[1:]), bands=bands,
                     dtype=str(array.dtype))


class BrighterParams(ModelParams):
    """Foreground where the band is above ``factor`` times its mean."""

    band: int = Field(1, ge=1, description="1-based band")
    factor: float = Field(1.0, gt=0, description="times the band's mean over the image")


class BrighterModel(SegmentationModel):
    kind = "brighter"
    Params = BrighterParams

    def __init__(self, classes: Any, params: BrighterParams, band: int) -> None:
        super().__init__(classes, params)
        self.band, self.factor = band, params.factor
        self.value: float | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> BrighterModel:
        params = BrighterParams.model_validate(cfg.model.params)
        return cls(class_table(cfg.model, ["background", "bright"]), params,
                   check_band(params.band, spec.bands, source))

    def fit(self, source: SourceBase, client: Any) -> None:
        sample = source.read_overview(1_000_000)[:, self.band - 1]
        self.value = self.factor * float(sample.mean())

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.value is not None, "fit() before predict()"
        return (self.band_of(pixels, self.band)[core] > self.value).astype(np.uint8)

    def identity(self) -> str:
        return f"brighter(band={self.band}, value={self.value:.6g})"
