"""``output.stac``: each finished run of a georeferenced raster as a STAC Item, so the tools that
find the inputs (pystac, pystac-client, a STAC API, QGIS's STAC browser) find the results.

    ROOT/stac/collection.json             the Collection: links every item, extent of them all
    ROOT/stac/<image_id>/<image_id>.json  the Item: footprint, datetime, class areas, model

The item's assets are the run's outputs (mask store, quick look, COG export, polygons) by
relative href, so the root can be moved or synced to a bucket whole; its ``derived_from`` links
are the source items (STAC sources) and its properties carry the class table (classification
extension), the software and model (processing extension) and the class areas. A re-run
replaces its item. The Collection is rewritten under a lease (tasks/mask/lease.py): runs of
other images add their links one at a time and none is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer

from segflow.tasks.colours import rgb
from segflow.tasks.errors import io_error
from segflow.tasks.mask.lease import hold
from segflow.tasks.measure.summary import Measurements
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.storage import filesystem, staged
from segflow.tasks.sources.stac_items import union

STAC_VERSION = "1.1.0"
COLLECTION_ID = "segflow-results"
EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
#: media types of the outputs, by ``outputs`` format
MEDIA = {"geoparquet": "application/vnd.apache.parquet",
         "geojson": "application/geo+json",
         "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
         "zarr": "application/vnd+zarr"}


@lru_cache(maxsize=16)
def _to_wgs84(crs_wkt: str) -> Transformer:
    """A transformer per CRS, made once: building one costs more than the item (a batch of
    one collection has one CRS)."""
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)


def _footprint(job: Job) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in WGS 84 (edges densified, so a projected grid's curved sides are
    followed) and its bbox."""
    georef = job.reader.georef
    assert georef is not None and georef.crs is not None
    height, width = job.reader.spatial_shape[:2]
    corners = [georef.affine @ (c, r) for c, r in ((0, 0), (width, 0), (width, height),
                                                     (0, height))]
    ring = shapely.segmentize(shapely.Polygon(corners),
                              max(abs(georef.affine.a) * width, abs(georef.affine.e) * height)
                              / 32)
    to_wgs84 = _to_wgs84(georef.crs_wkt or "")
    xy = np.asarray(ring.exterior.coords)
    lon, lat = to_wgs84.transform(xy[:, 0], xy[:, 1])
    shape = shapely.Polygon(np.column_stack([lon, lat]))
    if not shape.exterior.is_ccw:  # GeoJSON's right-hand rule
        shape = shapely.Polygon(list(shape.exterior.coords)[::-1])
    return shapely.geometry.mapping(shape), [float(v) for v in shape.bounds]


def _relative(uri: str, root: OutputRoot) -> str:
    """``uri`` as seen from an item file (two levels below the root)."""
    inside = uri[len(root.uri) + 1:] if uri.startswith(root.uri + "/") else None
    return f"../../{inside}" if inside is not None else uri


def _name(text: str) -> str:
    """A class name as the classification extension allows (letters, digits, - and _)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_") or "class"


def _proj(job: Job) -> dict[str, Any]:
    georef = job.reader.georef
    assert georef is not None and georef.crs is not None
    epsg = georef.crs.to_epsg()
    code = {"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:wkt2": georef.crs.to_wkt()}
    return {**code, "proj:shape": list(job.reader.spatial_shape),
            "proj:transform": list(georef.transform[:6])}


def item_dict(job: Job, found: Measurements, outputs: list[dict[str, Any]],
              cells_masked: int | None) -> dict[str, Any]:
    """The STAC Item of one finished run (tests/test_stac.py validates what it writes with
    stac-pydantic and reads it back with pystac)."""
    from segflow import __version__

    root = OutputRoot(job.root)
    geometry, bbox = _footprint(job)
    source = job.reader
    when = getattr(source, "datetime", None) or datetime.now(UTC).isoformat()
    classes = [{"value": c.id, "name": _name(c.name), "description": c.name,
                "color_hint": "{:02X}{:02X}{:02X}".format(*rgb(c.colour))}
               for c in job.model.classes]
    stats = [{k: row[k] for k in ("class_id", "class_name", "pixels", "area", "fraction")}
             for row in found.class_stats]
    properties = {
        "datetime": when,
        "processing:software": {"segflow": __version__},
        "processing:datetime": datetime.now(UTC).isoformat(),
        "processing:lineage": f"segmented by segflow with {job.model.identity()}",
        **_proj(job),
        "segflow:model": job.model.identity(),
        "segflow:config_hash": job.config.output_hash(),
        "segflow:source": job.source,
        "segflow:area_unit": found.class_stats[0]["area_unit"] if found.class_stats else None,
        "segflow:classes": stats,
    }
    if cells_masked is not None:
        properties["segflow:cells_masked"] = cells_masked
    assets: dict[str, Any] = {
        "mask": {"href": _relative(job.store_uri, root), "type": MEDIA["zarr"],
                 "title": "class mask (OME-Zarr)", "roles": ["data"],
                 "classification:classes": classes},
        "quicklook": {"href": _relative(job.picture_uri, root), "type": "image/png",
                      "title": "quick look", "roles": ["overview"]},
    }
    for row in outputs:
        key = {"geoparquet": "vectors", "geojson": "qupath"}.get(row["format"], row["output"])
        assets[key] = {"href": _relative(row["uri"], root),
                       "type": MEDIA.get(row["format"], "application/octet-stream"),
                       "title": f"{row['output']} ({row['format']})", "roles": ["data"]}
        if key == "export":
            assets[key]["classification:classes"] = classes
    links = [{"rel": "root", "href": "../collection.json", "type": "application/json"},
             {"rel": "parent", "href": "../collection.json", "type": "application/json"},
             {"rel": "collection", "href": "../collection.json", "type": "application/json"}]
    links += [{"rel": "derived_from", "href": href, "type": "application/geo+json"}
              for href in getattr(source, "item_hrefs", ())]
    item = {"type": "Feature", "stac_version": STAC_VERSION,
            "stac_extensions": sorted(EXTENSIONS.values()), "id": job.image_id,
            "collection": COLLECTION_ID, "geometry": geometry, "bbox": bbox,
            "properties": properties, "links": links, "assets": assets}
    return item


def _read_json(uri: str) -> dict[str, Any] | None:
    fs, path = filesystem(uri)
    try:
        found: dict[str, Any] = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    return found


def _write_json(uri: str, doc: dict[str, Any]) -> None:
    with staged(uri) as path:
        path.write_text(json.dumps(doc, indent=1))


def _collection(existing: dict[str, Any] | None, item: dict[str, Any], href: str
                ) -> dict[str, Any]:
    """The Collection with this item linked and its extent grown to cover it."""
    doc = existing or {
        "type": "Collection", "stac_version": STAC_VERSION, "id": COLLECTION_ID,
        "description": "Segmentation results written by segflow: one item per image, its "
                       "mask, quick look, exports and class areas.",
        "license": "other", "extent": {"spatial": {"bbox": [item["bbox"]]},
                                       "temporal": {"interval": [[None, None]]}},
        "links": [{"rel": "root", "href": "./collection.json", "type": "application/json"}]}
    extent = doc["extent"]["spatial"]["bbox"]
    extent[0] = list(union([extent[0], item["bbox"]]))
    when = item["properties"]["datetime"]
    start, end = doc["extent"]["temporal"]["interval"][0]
    doc["extent"]["temporal"]["interval"][0] = [min(filter(None, (start, when))),
                                                max(filter(None, (end, when)))]
    if not any(link["rel"] == "item" and link["href"] == href for link in doc["links"]):
        doc["links"].append({"rel": "item", "href": href, "type": "application/geo+json"})
    return doc


def write_stac_item(job: Job, found: Measurements, outputs: list[dict[str, Any]],
                    cells_masked: int | None = None) -> dict[str, Any] | None:
    """Write the run's Item and link it from the Collection; its ``outputs`` row, or None
    when the source is not on Earth (slides, volumes, rasters without a CRS) or
    ``output.stac`` is off."""
    georef = job.reader.georef
    if not job.config.output.stac or georef is None or georef.crs is None:
        return None
    root = OutputRoot(job.root)
    item = item_dict(job, found, outputs, cells_masked)
    uri = root.stac_item(job.image_id)
    try:
        _write_json(uri, item)
        collection = root.stac_collection()
        # held for one read and one write of a small file: look again soon when it is taken
        with hold(collection, f"stac-{job.image_id}-{uuid.uuid4().hex[:8]}",
                  job.config.output.lease_seconds, max(job.config.output.wait, 30.0),
                  poll=0.01):
            _write_json(collection, _collection(_read_json(collection), item,
                                                f"./{job.image_id}/{job.image_id}.json"))
    except OSError as exc:
        raise io_error(uri, "cannot write the STAC item", exc) from exc
    return {"output": "stac", "format": "stac-item", "uri": uri, "features": None}
