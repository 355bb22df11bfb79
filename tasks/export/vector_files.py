"""The two polygon files, written batch by batch: GeoParquet 1.1 (WKB geometry, the CRS as
PROJJSON, a ``bbox`` covering column) for geopandas, DuckDB and QGIS, and QuPath's GeoJSON
(features with ``objectType`` and ``classification``) for slides: one detection per object,
or, for a semantic mask, one annotation per class (its regions as one MultiPolygon).

pyarrow writes the Parquet; the ``geo`` metadata is the GeoParquet 1.1 specification's, added
when the file is closed, once the geometry types and extent are known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from segflow.tasks.colours import rgb
from segflow.tasks.export.polygons import Batch

BBOX = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()),
                  ("ymax", pa.float64())])


def vector_schema(id_name: str, extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """One row per region (``region_id``) or object (``instance_id``)."""
    return pa.schema([("image_id", pa.string()), (id_name, pa.int64()),
                      ("class_id", pa.int64()), ("class_name", pa.string()),
                      ("pixels", pa.int64()), ("area", pa.float64()), ("area_unit", pa.string()),
                      *extra, ("geometry", pa.binary()), ("bbox", BBOX)])


class GeoParquetSink:
    """Appends batches of polygons to a GeoParquet file, one row group each; ``extra`` holds
    per-id columns (an object's ``instances`` row)."""

    def __init__(self, path: Path, schema: pa.Schema, crs: dict[str, Any] | None,
                 image_id: str, names: dict[int, str], unit: str | None, scale: float,
                 extra: dict[int, dict[str, Any]]) -> None:
        self.schema, self.crs, self.image_id, self.names = schema, crs, image_id, names
        self.unit, self.scale, self.extra = unit, scale, extra
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.types: set[str] = set()
        self.extent = np.array([np.inf, np.inf, -np.inf, -np.inf])
        self.rows = 0

    def write(self, found: Batch) -> None:
        n = len(found)
        if not n:
            return
        self.types |= found.types
        self.extent = np.concatenate([np.minimum(self.extent[:2], found.bounds[:, :2].min(0)),
                                      np.maximum(self.extent[2:], found.bounds[:, 2:].max(0))])
        id_name = self.schema.names[1]
        columns: dict[str, Any] = {
            "image_id": [self.image_id] * n, id_name: found.ids, "class_id": found.classes,
            "class_name": [self.names.get(int(c)) for c in found.classes],
            "pixels": found.pixels, "area": found.area / self.scale,
            "area_unit": [self.unit or "px"] * n, "geometry": found.wkb,
            "bbox": pa.StructArray.from_arrays([pa.array(found.bounds[:, i]) for i in range(4)],
                                               fields=list(BBOX))}
        for name in self.schema.names:
            if name not in columns:  # per-object columns from the `instances` rows
                columns[name] = [self.extra.get(int(i), {}).get(name) for i in found.ids]
        self.writer.write_table(pa.table(columns, schema=self.schema))
        self.rows += n

    def close(self) -> int:
        """Finish the file with its ``geo`` metadata; returns the number of rows."""
        column: dict[str, Any] = {
            "encoding": "WKB", "geometry_types": sorted(self.types), "crs": self.crs,
            "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
        if self.rows:
            column["bbox"] = self.extent.tolist()
        self.writer.add_key_value_metadata({"geo": json.dumps(
            {"version": "1.1.0", "primary_column": "geometry",
             "columns": {"geometry": column}})})
        self.writer.close()
        return self.rows


class QuPathSink:
    """Appends batches to a GeoJSON FeatureCollection that QuPath imports (File > Import
    objects): objects are detections, regions annotations, classified by class name and
    colour."""

    def __init__(self, path: Path, object_type: str, names: dict[int, str],
                 colours: dict[int, str], unit: str | None, scale: float,
                 measured: dict[int, dict[str, float | None]] | None = None) -> None:
        self.file: IO[str] = open(path, "w")  # noqa: SIM115 (closed by close())
        self.file.write('{"type": "FeatureCollection", "features": [\n')
        self.object_type, self.scale = object_type, scale
        self.area, self.classes = _qupath_labels(names, colours, unit)
        self.measured = measured or {}
        self.rows = 0

    def write(self, found: Batch) -> None:
        assert found.qupath is not None
        for object_id, geometry, class_id, pixels, area in zip(
                found.ids, found.qupath, found.classes, found.pixels, found.area):
            measurements = {"pixels": int(pixels), self.area: float(area) / self.scale,
                            **{k: v for k, v in self.measured.get(int(object_id), {}).items()
                               if v is not None}}
            properties = {"objectType": self.object_type,
                          "classification": self.classes[int(class_id)],
                          "measurements": measurements}
            self.file.write((",\n" if self.rows else "") + '{"type": "Feature", "geometry": '
                            + geometry + ', "properties": ' + json.dumps(properties) + "}")
            self.rows += 1

    def close(self) -> int:
        self.file.write("\n]}\n")
        self.file.close()
        return self.rows


class QuPathAnnotations:
    """QuPath's GeoJSON for a semantic mask: one annotation per class, whose geometry is the
    MultiPolygon of all its regions (disjoint by construction, so no union is computed), with
    the class's pixels and area. A region per feature made a whole slide tens of thousands of
    annotations; ``classes`` names the class ids written (the stuff, such as glass, left out)."""

    def __init__(self, path: Path, names: dict[int, str], colours: dict[int, str],
                 unit: str | None, scale: float, classes: set[int]) -> None:
        self.path, self.scale = path, scale
        self.area, self.classes = _qupath_labels(names, colours, unit)
        self.parts: dict[int, list[str]] = {i: [] for i in sorted(classes)}
        self.pixels = dict.fromkeys(self.parts, 0)
        self.areas = dict.fromkeys(self.parts, 0.0)

    def write(self, found: Batch) -> None:
        assert found.qupath is not None
        for geometry, class_id, pixels, area in zip(found.qupath, found.classes, found.pixels,
                                                    found.area):
            part = _coordinates(geometry)
            if int(class_id) in self.parts and part:
                self.parts[int(class_id)].append(part)
                self.pixels[int(class_id)] += int(pixels)
                self.areas[int(class_id)] += float(area)

    def close(self) -> int:
        written = 0
        with open(self.path, "w") as file:
            file.write('{"type": "FeatureCollection", "features": [\n')
            for class_id, parts in self.parts.items():
                if not parts:
                    continue
                properties = {"objectType": "annotation",
                              "classification": self.classes[class_id],
                              "measurements": {"pixels": self.pixels[class_id],
                                               self.area: self.areas[class_id] / self.scale,
                                               "regions": len(parts)}}
                file.write((",\n" if written else "") + '{"type": "Feature", "geometry": '
                           '{"type": "MultiPolygon", "coordinates": [' + ",".join(parts)
                           + ']}, "properties": ' + json.dumps(properties) + "}")
                written += 1
            file.write("\n]}\n")
        return written


def _qupath_labels(names: dict[int, str], colours: dict[int, str], unit: str | None
                   ) -> tuple[str, dict[int, dict[str, Any]]]:
    """QuPath's area measurement name and each class id's ``classification``."""
    return (f"area {unit}" if unit else "area px",
            {i: {"name": names[i], "color": list(rgb(colours[i]))} for i in names})


def _coordinates(geometry: str) -> str:
    """The polygon coordinate arrays of a GeoJSON Polygon or MultiPolygon as shapely writes
    them (``{"type":"Polygon","coordinates":[...]}``), as text: a MultiPolygon's parts."""
    head = '"coordinates":'
    coordinates = geometry[geometry.index(head) + len(head):-1]
    if geometry.startswith('{"type":"MultiPolygon"'):
        return coordinates[1:-1]  # its parts, each a polygon's array
    assert geometry.startswith('{"type":"Polygon"'), geometry[:40]
    return coordinates
