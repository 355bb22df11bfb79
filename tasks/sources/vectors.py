"""Vector files users hand in (zones, prompts): read once on the client with geopandas
(GeoPackage, GeoJSON, GeoParquet; local or on an object store), empty geometries dropped."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from segflow.tasks.errors import UserError, first_line
from segflow.tasks.runtime.storage import filesystem, is_local

if TYPE_CHECKING:
    import geopandas


def read_vectors(path: str, what: str) -> geopandas.GeoDataFrame:
    """The features of ``path`` that have a geometry; one line naming the file otherwise."""
    import geopandas  # only runs that read vectors pay for its import

    try:
        if is_local(path):
            source: str | io.BytesIO = path
        else:
            fs, inside = filesystem(path)
            source = io.BytesIO(fs.cat_file(inside))
        frame = (geopandas.read_parquet(source) if str(path).endswith((".parquet", ".geoparquet"))
                 else geopandas.read_file(source))
    except Exception as exc:  # pyogrio, pyarrow and OS errors alike
        raise UserError(path, f"cannot read {what}: {first_line(exc)}") from exc
    return frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
