"""DICOM image series (MR, CT) as volumes, read with pydicom: a folder, a .zip or an S3 prefix
holding one series (or several, one chosen by ``input.series``).

The header of every file is read once when the series opens (pixels are not); slices are
ordered by their position along the slice normal (ImagePositionPatient on the normal of
ImageOrientationPatient), never by file name. A series whose slices are not stacked along
their normal (gantry tilt) or not evenly spaced is refused: its voxels have no affine. The
voxel-to-world affine is DICOM's LPS turned to RAS (NIfTI's convention), and the raw grid is
(column, row, slice) as dcm2niix and SimpleITK write it, so a series and its NIfTI conversion
are the same volume to every later stage. Rescale slope and intercept are applied per slice.
A window reads only its slices' files, on the worker, each opened for that read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, ClassVar

import numpy as np

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import UserError, io_error, is_transient
from segflow.tasks.sources.base import select_bands
from segflow.tasks.sources.dicom_files import (
    SLIDE_CLASSES,
    first_image,
    load_pydicom,
    members,
    opener,
)
from segflow.tasks.sources.volume import Volume

#: header fields the geometry and the choice of series need (pixels are read per window)
_TAGS = ("SOPClassUID", "SeriesInstanceUID", "SeriesDescription", "ImagePositionPatient",
         "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "RescaleSlope",
         "RescaleIntercept", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
         "NumberOfFrames")
#: mm: positions off the slice normal, or spacings, that differ by more are refused
_TOLERANCE_MM = 1e-3


def _header(uri: str, name: str, open_one: Callable[[str], IO[bytes]]) -> Any | None:
    """The file's header (no pixels), or None when it is no DICOM image (DICOMDIR, notes)."""
    pydicom = load_pydicom(uri)
    from pydicom.errors import InvalidDicomError

    try:
        with open_one(name) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=list(_TAGS))
    except InvalidDicomError:
        return None
    except Exception as exc:
        if is_transient(exc):
            raise io_error(uri, f"cannot read {name}", exc) from exc
        raise UserError(uri, f"{name} is not a readable DICOM file: {exc}") from exc
    return ds if "ImagePositionPatient" in ds and "Rows" in ds else None


def is_dicom_series(uri: str) -> bool:
    """A folder, prefix or .zip whose first DICOM image is a slice with a position (not a
    slide)."""
    first = first_image(uri, ["SOPClassUID", "ImagePositionPatient"])
    return (first is not None and "ImagePositionPatient" in first
            and str(first.get("SOPClassUID", "")) not in SLIDE_CLASSES)


@dataclass(frozen=True)
class DicomSeries(Volume):
    """A DICOM series on its (column, row, slice) grid; ``files`` in slice order."""

    files: tuple[str, ...] = ()
    #: (slope, intercept) per slice, applied as read
    rescale: tuple[tuple[float, float], ...] = ()
    series_uid: str = ""

    reader: ClassVar[str] = "dicom"

    def _slab(self, index: tuple[slice, ...]) -> np.ndarray:
        pydicom = load_pydicom(self.uri)
        cols, rows, slices = index
        planes = []
        k = 0
        try:
            with opener(self.uri) as open_one:
                for k in range(len(self.files))[slices]:
                    with open_one(self.files[k]) as fh:
                        # the function, not Dataset.pixel_array: that one fails once another
                        # package (wsidicomizer) turns on pydicom's future behaviour
                        stored = pydicom.pixels.pixel_array(fh)
                    slope, intercept = self.rescale[k]
                    plane = stored.T[cols, rows]
                    if (slope, intercept) != (1.0, 0.0):
                        plane = plane.astype(np.float64) * slope + intercept
                    planes.append(plane.astype(self.dtype, copy=False))
        except Exception as exc:
            raise io_error(self.uri, f"cannot read slice {k + 1} of the series", exc) from exc
        return np.stack(planes, axis=-1)[None]


def _choose(uri: str, headers: list[tuple[str, Any]], wanted: str | None) -> list[tuple[str, Any]]:
    """The files of one series: the only one, or the one ``input.series`` names (its
    SeriesInstanceUID or SeriesDescription)."""
    series: dict[str, list[tuple[str, Any]]] = {}
    for name, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((name, ds))
    if wanted:
        chosen = [files for uid, files in series.items()
                  if wanted in (uid, str(files[0][1].get("SeriesDescription", "")))]
        if len(chosen) != 1:
            raise UserError(uri, f"input.series {wanted!r} matches {len(chosen)} of the "
                                 f"{len(series)} series here")
        return chosen[0]
    if len(series) > 1:
        described = ", ".join(f"{uid} ({files[0][1].get('SeriesDescription', '')})"
                              for uid, files in sorted(series.items()))
        raise UserError(uri, f"{len(series)} series here: set input.series to one of "
                             f"{described}")
    return next(iter(series.values()))


def _geometry(uri: str, files: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]],
                                                                np.ndarray]:
    """The files in slice order and the voxel-to-RAS affine of (column, row, slice)."""
    first = files[0][1]
    orient = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    for name, ds in files:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orient, atol=1e-4):
            raise UserError(uri, f"{name}: its ImageOrientationPatient differs from the other "
                                 "slices'")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise UserError(uri, f"{name}: {ds.Rows}x{ds.Columns} pixels, the others "
                                 f"{first.Rows}x{first.Columns}")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) > 1:
            raise UserError(uri, f"{name}: multi-frame or colour images are not a slice series")
    position = {name: np.asarray([float(v) for v in ds.ImagePositionPatient])
                for name, ds in files}
    ordered = sorted(files, key=lambda f: float(position[f[0]] @ normal))
    origin = position[ordered[0][0]]
    along = np.asarray([float((position[n] - origin) @ normal) for n, _ in ordered])
    if len(ordered) > 1 and np.min(np.diff(along)) < _TOLERANCE_MM:
        raise UserError(uri, "two slices share one position: more than one volume (echoes, "
                             "time points) in this series")
    for name, _ in ordered:  # each slice's corner on the line through the first's normal
        shift = position[name] - origin
        off = float(np.linalg.norm(shift - (shift @ normal) * normal))
        if off > 10 * _TOLERANCE_MM:
            tilt = np.degrees(np.arctan2(off, float(shift @ normal)))
            raise UserError(uri, f"slices are not stacked along their normal (gantry tilt of "
                                 f"{tilt:.1f} degrees): resample the series first")
    step = float(np.mean(np.diff(along))) if len(ordered) > 1 else float(
        first.get("SliceThickness", 1.0) or 1.0)
    if len(ordered) > 2 and np.ptp(np.diff(along)) > max(_TOLERANCE_MM * 10, 0.01 * step):
        raise UserError(uri, f"uneven slice spacing ({np.min(np.diff(along)):.3f} to "
                             f"{np.max(np.diff(along)):.3f} mm): missing slices or a "
                             "variable-spacing series")
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # along a row: the next column
    lps[:3, 1] = col_dir * row_spacing  # down a column: the next row
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return ordered, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def open_dicom_series(uri: str, cfg: InputConfig | None = None) -> DicomSeries:
    """Read every file's header, keep one series, order and check its slices."""
    cfg = cfg or InputConfig()
    try:
        names = members(uri)
    except Exception as exc:
        raise io_error(uri, "cannot list the series", exc) from exc
    with opener(uri) as open_one:
        headers = [(n, h) for n in names if (h := _header(uri, n, open_one)) is not None]
    if not headers:
        raise UserError(uri, "no DICOM images here")
    files, affine = _geometry(uri, _choose(uri, headers, cfg.series))
    rescale = tuple((float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0)
                                                                   or 0)) for _, ds in files)
    first = files[0][1]
    stored = np.dtype(f"{'i' if first.get('PixelRepresentation', 0) else 'u'}"
                      f"{max(1, int(first.BitsAllocated) // 8)}")
    # rescaled values in float64, as SimpleITK and nibabel (a dcm2niix file's scl_slope) give
    dtype = stored if all(r == (1.0, 0.0) for r in rescale) else np.dtype(np.float64)
    select_bands(uri, cfg.bands, 1, "volume")
    series = DicomSeries(uri=uri, spatial_shape=(int(first.Columns), int(first.Rows), len(files)),
                         bands=(1,), dtype=dtype.name,
                         affine=tuple(tuple(float(v) for v in row) for row in affine),
                         files=tuple(n for n, _ in files), rescale=rescale,
                         series_uid=str(first.SeriesInstanceUID))
    series.read((slice(0, 1), slice(0, 1), slice(0, 1)))  # the pixels decode at all
    return series
