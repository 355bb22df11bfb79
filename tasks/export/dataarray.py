"""One call from a mask store to an xarray DataArray (``segflow.open_mask``), for notebooks:
lazy (Dask, chunked as stored), in the image's own coordinates, class names and nodata with it.

- rasters: CRS and transform through rioxarray (``mask.rio.crs``, ``mask.rio.transform()``,
  ``mask.rio.nodata``), pixel-centre ``x``/``y`` coordinates;
- slides: ``y``/``x`` in µm from the slide's pixel size (pixel indices when it has none),
  ``y`` growing downwards as in the slide (``mask.plot(yincrease=False)`` draws it upright);
- volumes: ``x``/``y``/``z`` RAS+ mm of the voxel centres (the reader made every axis ascend
  in its world axis), with the level's full voxel-to-RAS affine in ``attrs["affine"]`` (an
  oblique volume's 1-D coordinates follow each axis's closest world axis; use the affine).

Each coordinate carries its ``units``; class ids follow the CF flag convention
(``flag_values``, ``flag_meanings``) plus ``class_names`` and ``class_colours`` by id; nodata is
``_FillValue``. Level ``n`` keeps every 2^n-th cell, so its cells are 2^n times larger with the
same origin (as GDAL overviews).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da

from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import open_store_group, stores_under
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.zarr_nodes import array_at, attributes, dimension_names
from segflow.tasks.sources.spatial import RasterRef, SpatialRef

if TYPE_CHECKING:
    import xarray as xr


def store_uri(store_or_root: str, image_id: str | None = None) -> str:
    """The mask store meant: the store itself, ``ROOT/masks/<image_id>.zarr``, or a root's only
    store."""
    path = store_or_root.rstrip("/")
    if path.endswith(".zarr"):
        return path
    if image_id is not None:
        return OutputRoot(path).store(image_id.removesuffix(".zarr"))
    found = stores_under(path)
    if len(found) != 1:
        names = ", ".join(f.rsplit("/", 1)[-1].removesuffix(".zarr") for f in found) or "none"
        raise UserError(path, f"{len(found)} mask stores under masks/ (give image_id: {names})")
    return found[0]


def open_mask(store_or_root: str, image_id: str | None = None, level: int = 0) -> xr.DataArray:
    """The class-id mask at pyramid ``level`` as a lazy DataArray in world coordinates."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr
    from affine import Affine

    uri = store_uri(store_or_root, image_id)
    group, meta = open_store_group(uri)
    levels = [d["path"] for d in attributes(group)["ome"]["multiscales"][0]["datasets"]]
    if str(level) not in levels:
        raise UserError(uri, f"no pyramid level {level} (levels 0..{len(levels) - 1})")
    array = array_at(group, str(level))
    dims = tuple(str(name) for name in dimension_names(array) or ())  # stores name every axis
    ref = SpatialRef.from_attrs(dict(attributes(group).get("spatial", {})))
    factor = 2 ** level
    classes = meta["classes"]
    nodata = int(array.fill_value)
    attrs: dict[str, Any] = {
        "long_name": "class id", "image_id": uri.rsplit("/", 1)[-1].removesuffix(".zarr"),
        "source_uri": meta.get("source_uri"), "model": meta.get("model"), "level": level,
        "complete": bool(meta.get("complete", False)),
        "flag_values": [c["id"] for c in classes],
        "flag_meanings": " ".join(c["name"].replace(" ", "_") for c in classes),
        "class_names": {str(c["id"]): c["name"] for c in classes},
        "class_colours": {str(c["id"]): c.get("colour") for c in classes},
    }
    data = da.from_zarr(array)
    coords, extra = ref.world(dims, tuple(array.shape), factor)
    unit = extra.pop("units", None)  # the coordinates' unit, not the class ids' (plot labels)
    axes = {d: (d, values, {"units": unit} if unit else {}) for d, values in coords.items()}
    mask = xr.DataArray(data, dims=dims, coords=axes, attrs={**attrs, **extra})
    if isinstance(ref, RasterRef):  # rioxarray's CRS, transform and nodata, as GDAL reads
        if ref.crs_wkt:
            mask = mask.rio.write_crs(ref.crs_wkt)
        mask = mask.rio.write_transform(ref.georef.affine * Affine.scale(factor))
        mask = mask.rio.write_nodata(nodata, encoded=False)
    mask.attrs["_FillValue"] = nodata
    return mask.rename(attrs["image_id"])
