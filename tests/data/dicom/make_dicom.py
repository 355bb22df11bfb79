"""DICOM MR series written from a real T1 volume with SimpleITK, as a scanner would store them:
int16 pixels with a rescale slope and intercept, one file per slice, in a chosen acquisition
orientation (axial, sagittal ...), optionally under shuffled file names; and the series' NIfTI
conversion by SimpleITK (the independent reading segflow's DICOM reader is compared with).

    python tests/data/dicom/make_dicom.py OUT_FOLDER   # the MNI T1 (nilearn), axial and sagittal
"""

from __future__ import annotations

import locale
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SLOPE, INTERCEPT = 0.05, -10.0
#: per-slice tags; the study, series and frame of reference are shared by the series' slices
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID prefix


def _uid(*parts: int) -> str:
    return _UID_ROOT + ".".join(str(p) for p in parts)


def ras_image(volume: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS) of a (i, j, k) volume with a RAS affine (nibabel's)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


@contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM's DICOM writer sets the process's C locale (LC_CTYPE "C": Python then reads text
    as ASCII); put back what it found."""
    categories = (locale.LC_CTYPE, locale.LC_NUMERIC, locale.LC_COLLATE, locale.LC_TIME,
                  locale.LC_MONETARY, locale.LC_MESSAGES)
    saved = {c: locale.setlocale(c) for c in categories}
    try:
        yield
    finally:
        for category, value in saved.items():
            locale.setlocale(category, value)


def write_series(image: sitk.Image, folder: Path, orientation: str = "LPS",
                 shuffle: bool = True, description: str = "T1w", series: int = 1,
                 tilt_mm: float = 0.0, drop: int | None = None) -> list[Path]:
    """One file per slice of ``image`` reoriented to ``orientation`` (SimpleITK's
    DICOMOrient code: the direction of increasing column, row and slice index). ``tilt_mm``
    shifts each slice's position along the rows by that much per slice (a gantry tilt);
    ``drop`` leaves one slice out (uneven spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    oriented = sitk.DICOMOrient(image, orientation)
    values = sitk.GetArrayFromImage(oriented).astype(np.float64)
    stored = np.clip(np.round((values - INTERCEPT) / SLOPE), -32768, 32767).astype(np.int16)
    axes = np.asarray(oriented.GetDirection()).reshape(3, 3)  # columns: index axes in LPS
    stamp = time.strftime("%Y%m%d")
    shared = {"0010|0010": "Segflow^Test", "0010|0020": "SEGFLOW-1", "0008|0020": stamp,
              "0020|000d": _uid(1), "0020|000e": _uid(1, series), "0020|0052": _uid(2),
              "0008|0060": "MR", "0008|103e": description, "0020|0011": str(series),
              "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
              "0020|0037": "\\".join(f"{v:.10g}" for v in (*axes[:, 0], *axes[:, 1])),
              "0018|0050": f"{oriented.GetSpacing()[2]:g}"}
    rng = np.random.default_rng(series)
    depth = stored.shape[0]
    names = [f"IM{n:05d}.dcm" for n in (rng.permutation(depth) if shuffle else range(depth))]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    row_dir = axes[:, 0]
    for k in range(depth):
        if k == drop:
            continue
        # a 2-D image: where the slice lies is in its tags
        plane = sitk.GetImageFromArray(stored[k])
        position = np.asarray(oriented.TransformIndexToPhysicalPoint((0, 0, k))) \
            + row_dir * tilt_mm * k
        plane.SetSpacing(oriented.GetSpacing()[:2])
        for tag, value in shared.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0008|0018", _uid(1, series, k + 1))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        path = folder / names[k]
        writer.SetFileName(str(path))
        with _locale_kept():
            writer.Execute(plane)
        _rescaled(path, oriented.GetSpacing()[2])
        written.append(path)
    return written


def _rescaled(path: Path, spacing: float) -> None:
    """The slope and intercept added as some scanners write them on a classic MR image (GDCM
    would make an Enhanced MR object of an image with a rescale), and the slice spacing (GDCM
    writes a 2-D image's)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{SLOPE:g}", f"{INTERCEPT:g}", "US"
    ds.SpacingBetweenSlices = f"{spacing:g}"
    ds.save_as(path)


def read_series(folder: Path) -> sitk.Image:
    """The series as SimpleITK (GDCM) reads it: slices sorted by position, rescale applied."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def to_nifti(folder: Path, path: Path) -> Path:
    """The series converted to NIfTI by SimpleITK (LPS to RAS, as dcm2niix does)."""
    sitk.WriteImage(read_series(folder), str(path))
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from tests.mni import template

    out = Path(sys.argv[1])
    volume, _, affine = template(step=3)
    t1 = ras_image(volume, affine)
    for code, name in (("LPS", "axial"), ("PIL", "sagittal")):
        write_series(t1, out / name, code)
        to_nifti(out / name, out / f"{name}.nii.gz")
        print(out / name, len(list((out / name).iterdir())), "slices")
