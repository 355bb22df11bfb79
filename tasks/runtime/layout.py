"""The layout of a results root, in one place: every stage asks ``OutputRoot`` where its output
goes, so a folder is named once (later outputs add a method here, not a path elsewhere).

    ROOT/masks/<image_id>.zarr      the mask store (and <image_id>.png, its quick look)
    ROOT/catalog/<table>/           the catalog's Parquet tables
    ROOT/vectors/<image_id>.*       polygons (GeoParquet, QuPath GeoJSON)
    ROOT/exports/<image_id>.*       label files for viewers (COG, OME-TIFF, NIfTI, DICOM SEG)
    ROOT/stac/collection.json       the STAC Collection of the results, and per image
    ROOT/stac/<image_id>/<image_id>.json  its STAC Item
"""

from __future__ import annotations

from dataclasses import dataclass

MASKS, CATALOG, VECTORS, EXPORTS, STAC = "masks", "catalog", "vectors", "exports", "stac"
#: the export file's suffix for each format (``output.export``)
EXPORT_SUFFIX = {"cog": ".tif", "ome-tiff": ".ome.tif", "nifti": ".nii.gz",
                 "dicom-seg": ".seg.dcm"}
#: the polygon files' suffixes and what each is for
VECTOR_SUFFIX = {"polygons": ".parquet", "QuPath GeoJSON": ".geojson"}


@dataclass(frozen=True)
class OutputRoot:
    """A results root (a local folder or an fsspec URL) and where each output lies in it."""

    uri: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", self.uri.rstrip("/"))

    @classmethod
    def of_store(cls, store: str) -> tuple[OutputRoot | None, str]:
        """The root holding mask store ``store`` (None for a store outside a root) and the
        store's image id."""
        root, _, name = store.rstrip("/").rpartition(f"/{MASKS}/")
        image_id = name.removesuffix(".zarr")
        return (cls(root) if root else None), image_id

    @property
    def masks(self) -> str:
        return f"{self.uri}/{MASKS}"

    def store(self, image_id: str) -> str:
        return f"{self.masks}/{image_id}.zarr"

    def picture(self, image_id: str) -> str:
        """The quick look, beside the store."""
        return f"{self.masks}/{image_id}.png"

    def table(self, name: str) -> str:
        return f"{self.uri}/{CATALOG}/{name}"

    def vectors(self, image_id: str, suffix: str) -> str:
        return f"{self.uri}/{VECTORS}/{image_id}{suffix}"

    def export(self, image_id: str, fmt: str) -> str:
        return f"{self.uri}/{EXPORTS}/{image_id}{EXPORT_SUFFIX[fmt]}"

    def stac_collection(self) -> str:
        return f"{self.uri}/{STAC}/collection.json"

    def stac_item(self, image_id: str) -> str:
        return f"{self.uri}/{STAC}/{image_id}/{image_id}.json"
