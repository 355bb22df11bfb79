"""The two polygon files, written row batch by row batch: GeoParquet 1.1 (WKB geometry, the CRS
as PROJJSON, a ``bbox`` covering column) for geopandas, DuckDB and QGIS, and QuPath's GeoJSON
(features with ``objectType`` and ``classification``) for slides.

pyarrow writes the Parquet; the ``geo`` metadata is the GeoParquet 1.1 specification's, added
when the file is closed, once the geometry types and extent are known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from segflow.tasks.colours import rgb

BBOX = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()),
                  ("ymax", pa.float64())])


def vector_schema(id_name: str, extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """One row per region (``region_id``) or object (``instance_id``)."""
    return pa.schema([("image_id", pa.string()), (id_name, pa.int64()),
                      ("class_id", pa.int64()), ("class_name", pa.string()),
                      ("pixels", pa.int64()), ("area", pa.float64()), ("area_unit", pa.string()),
                      *extra, ("geometry", pa.binary()), ("bbox", BBOX)])


class GeoParquetSink:
    """Appends rows (with a shapely ``geometry``) to a GeoParquet file."""

    def __init__(self, path: Path, schema: pa.Schema, crs: dict[str, Any] | None) -> None:
        self.schema, self.crs = schema, crs
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.types: set[str] = set()
        self.extent = [float("inf"), float("inf"), float("-inf"), float("-inf")]
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        shapes = [r["geometry"] for r in rows]
        bounds = shapely.bounds(shapes)
        self.types.update(g.geom_type for g in shapes)
        self.extent = [min(self.extent[0], bounds[:, 0].min()),
                       min(self.extent[1], bounds[:, 1].min()),
                       max(self.extent[2], bounds[:, 2].max()),
                       max(self.extent[3], bounds[:, 3].max())]
        columns = {name: [r.get(name) for r in rows] for name in self.schema.names}
        columns["geometry"] = list(shapely.to_wkb(shapes))
        columns["bbox"] = [dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, b)))
                           for b in bounds]
        self.writer.write_table(pa.table(columns, schema=self.schema))
        self.rows += len(rows)

    def close(self) -> int:
        """Finish the file with its ``geo`` metadata; returns the number of rows."""
        column: dict[str, Any] = {
            "encoding": "WKB", "geometry_types": sorted(self.types), "crs": self.crs,
            "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
        if self.rows:
            column["bbox"] = self.extent
        self.writer.add_key_value_metadata({"geo": json.dumps(
            {"version": "1.1.0", "primary_column": "geometry",
             "columns": {"geometry": column}})})
        self.writer.close()
        return self.rows


class QuPathSink:
    """Appends rows to a GeoJSON FeatureCollection that QuPath imports (File > Import objects):
    objects are detections, regions annotations, classified by class name and colour."""

    def __init__(self, path: Path, object_type: str, colours: dict[int, str]) -> None:
        self.file: IO[str] = open(path, "w")  # noqa: SIM115 (closed by close())
        self.file.write('{"type": "FeatureCollection", "features": [\n')
        self.object_type, self.colours = object_type, colours
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            geometry = json.loads(shapely.to_geojson(row["qupath"]))
            feature = {"type": "Feature", "geometry": geometry,
                       "properties": {
                           "objectType": self.object_type,
                           "classification": {"name": row["class_name"],
                                              "color": list(rgb(self.colours[row["class_id"]]))},
                           "measurements": {"pixels": row["pixels"], "area": row["area"]}}}
            self.file.write((",\n" if self.rows else "") + json.dumps(feature))
            self.rows += 1

    def close(self) -> int:
        self.file.write("\n]}\n")
        self.file.close()
        return self.rows
