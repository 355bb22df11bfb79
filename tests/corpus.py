"""A corpus of hostile and odd inputs, written fresh into a folder by ``build``.

``FAILING``: files segflow must refuse, each with one line naming the file and a ``failed`` row.
``ODD``: files that are unusual but valid; segflow must segment them and get them right. Each
entry is (file name, writer, what the one-line reason or the check says).
"""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin

DATA = Path(__file__).parent / "data"
UTM = "EPSG:32633"


def _tif(path: Path, data: np.ndarray, crs: str | None = UTM, transform: Affine | None = None,
         nodata: float | None = None, tiled: bool = True, **extra: object) -> None:
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype, crs=crs, nodata=nodata,
                   transform=transform or from_origin(500000, 4000000, 10, 10), **extra)
    if tiled and min(data.shape[1:]) >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _scene(size: int = 512, bands: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = 127 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)
    return np.clip(base[None] + rng.normal(0, 10, (bands, size, size)), 0, 255).astype(np.uint8)


def _truncated(fraction: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        _tif(path, _scene(1024), compress="deflate")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return write


def _renamed(fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        buf = io.BytesIO()
        Image.fromarray(_scene(64)[0]).save(buf, format=fmt)
        path.write_bytes(buf.getvalue())
    return write


def _wrong_magic(path: Path) -> None:
    _tif(path, _scene(256))
    data = bytearray(path.read_bytes())
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))


def _huge_sparse(path: Path) -> None:
    """A tiled GeoTIFF whose header claims 1,000,000 x 1,000,000 pixels, none of them written."""
    with rasterio.open(path, "w", driver="GTiff", width=1_000_000, height=1_000_000, count=1,
                       dtype="uint8", crs=UTM, transform=from_origin(0, 0, 1, 1), tiled=True,
                       blockxsize=4096, blockysize=4096, sparse_ok=True, nodata=0):
        pass


def _float_with(value: float, where: str = "part") -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = _scene(256, bands=1).astype(np.float32)
        if where == "all":
            data[:] = value
        else:
            data[0, 100:140, 60:200] = value
        _tif(path, data)
    return write


def _north_pole(path: Path) -> None:
    """EPSG:4326, 1° cells from 95° N: rows beyond the pole."""
    _tif(path, _scene(64, bands=1), crs="EPSG:4326", transform=from_origin(0, 95, 1, 1))


def _nifti_zero_affine(path: Path) -> None:
    header = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)).header
    header.set_sform(np.zeros((4, 4)), code=2)
    header.set_qform(np.eye(4), code=0)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), None, header), path)


def pickled_weights(path: Path) -> None:
    """A 'model' whose unpickling would run a shell command (it must never run)."""

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(path.parent / "must-survive"),))

    (path.parent / "must-survive").mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(Exploit()))


#: (name, writer, words the one-line reason contains)
FAILING: list[tuple[str, Callable[[Path], None], str]] = [
    ("zero_bytes.tif", lambda p: p.write_bytes(b""), "not a readable raster"),
    ("cut_header.tif", _truncated(0.002), "not a readable raster"),
    ("cut_half.tif", _truncated(0.5), "cannot read"),
    ("cut_most.tif", _truncated(0.9), "cannot read"),
    ("wrong_magic.tif", _wrong_magic, "not a readable raster"),
    ("png_renamed.tif", _renamed("PNG"), "not a readable raster"),
    ("jpeg_renamed.tif", _renamed("JPEG"), "not a readable raster"),
    ("gzip_garbage.nii.gz", lambda p: p.write_bytes(gzip.compress(b"no header here" * 50)),
     "not a readable NIfTI"),
    ("text.nii", lambda p: p.write_text("hello\n" * 100), "not a readable NIfTI"),
    ("huge_claimed.tif", _huge_sparse, "input.max_pixels"),
    ("past_the_pole.tif", _north_pole, "latitude"),
    ("zero_affine.nii", _nifti_zero_affine, "affine"),
    ("all_inf.tif", _float_with(np.inf, "all"), "no valid"),
    ("all_nodata.tif", lambda p: _tif(p, np.zeros((1, 300, 300), np.uint8), nodata=0),
     "no valid"),
]

#: a folder named like a Zarr store, with nothing in it
EMPTY_ZARR = "empty.zarr"

#: (name, writer): unusual but valid; the test checks each one's result
ODD: list[tuple[str, Callable[[Path], None]]] = [
    ("constant.tif", lambda p: _tif(p, np.full((1, 300, 300), 7, np.uint8))),
    ("one_pixel.tif", lambda p: _tif(p, np.full((1, 1, 1), 200, np.uint8))),
    ("nan_and_inf.tif", _float_with(np.nan)),
    ("no_crs.tif", lambda p: _tif(p, _scene(300), crs=None, transform=Affine.identity())),
    ("rotated.tif", lambda p: _tif(p, _scene(300), transform=Affine(
        8.660254, -5.0, 500000, -5.0, -8.660254, 4000000))),
    ("antimeridian.tif", lambda p: _tif(p, _scene(200, bands=1), crs="EPSG:4326",
                                        transform=from_origin(179.5, -16, 0.005, 0.005))),
    ("many_bands.tif", lambda p: _tif(p, _scene(64, bands=300))),
    ("ünï cödé and space.tif", lambda p: _tif(p, _scene(300))),
    ("four_d.nii.gz", lambda p: nib.save(nib.Nifti1Image(
        np.stack([np.arange(16 * 16 * 8).reshape(16, 16, 8) % 97 * (i + 1) for i in range(3)],
                 axis=-1).astype(np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), p)),
]


def build(folder: Path, good: Path) -> dict[str, Path]:
    """Write every corpus file (and a copy of ``good``) into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, write, *_ in (*FAILING, *ODD):
        path = folder / name
        write(path)
        paths[name] = path
    (folder / EMPTY_ZARR).mkdir()
    paths[EMPTY_ZARR] = folder / EMPTY_ZARR
    paths["good.tif"] = Path(shutil.copy(good, folder / "good.tif"))
    return paths
