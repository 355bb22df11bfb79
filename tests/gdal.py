"""``gdalinfo`` as GIS users run it: GDAL's own ``GDALInfo`` from the libgdal that rasterio's
wheel bundles (the GDAL a ``pip install rasterio`` user has), and Debian's ``gdalinfo`` command
where it is installed (the GDAL Debian's QGIS uses)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import rasterio


def _libgdal() -> ctypes.CDLL:
    libs = Path(rasterio.__file__).parent.parent / "rasterio.libs"
    [path] = libs.glob("libgdal-*.so*")
    lib = ctypes.CDLL(str(path))
    lib.GDALOpenEx.restype = ctypes.c_void_p
    lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALInfoOptionsNew.restype = ctypes.c_void_p
    lib.GDALInfoOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    lib.GDALInfo.restype = ctypes.c_void_p  # a char* GDAL allocated: freed with VSIFree
    lib.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
    lib.GDALVersionInfo.restype = ctypes.c_char_p
    lib.GDALVersionInfo.argtypes = [ctypes.c_char_p]
    lib.GDALAllRegister()
    return lib


def rasterio_gdalinfo(path: str, *args: str) -> str:
    """The text ``gdalinfo ARGS PATH`` prints, from rasterio's bundled GDAL; an error message
    as ``ERROR: ...`` when GDAL cannot open ``path``."""
    lib = _libgdal()
    ds = lib.GDALOpenEx(path.encode(), 0x02 | 0x40, None, None, None)  # raster, verbose errors
    if not ds:
        return f"ERROR: {lib.CPLGetLastErrorMsg().decode()}"
    argv = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)
    options = lib.GDALInfoOptionsNew(argv, None)
    try:
        text = lib.GDALInfo(ds, options)
        try:
            return ctypes.string_at(text).decode()
        finally:
            lib.VSIFree(text)
    finally:
        lib.GDALInfoOptionsFree(options)
        lib.GDALClose(ds)


def rasterio_gdal_version() -> str:
    return _libgdal().GDALVersionInfo(b"RELEASE_NAME").decode()


def debian_gdalinfo(path: str, *args: str) -> str | None:
    """``gdalinfo`` from the system's GDAL (Debian's gdal-bin), or None where there is none."""
    exe = shutil.which("gdalinfo")
    if exe is None:
        return None
    done = subprocess.run([exe, *args, path], capture_output=True, text=True, timeout=120)
    return done.stdout + (f"ERROR: {done.stderr}" if done.returncode else "")
