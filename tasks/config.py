"""The job configuration: a validated pydantic schema with a documented default for every key.

A config is YAML; ``--set key=value`` overrides one dotted key. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from segflow.tasks.colours import PALETTE, rgb
from segflow.tasks.errors import UserError, first_line


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassSpec(_Strict):
    """One output class: its id in the mask, a name for the catalog and a display colour."""

    id: int = Field(ge=0, le=65534)
    name: str
    colour: str = ""  # any CSS colour (red, #d62728, rgb(214,39,40)); "" = from the palette

    @field_validator("colour")
    @classmethod
    def _drawable(cls, v: str) -> str:
        if v:
            try:
                rgb(v)
            except ValueError:
                raise ValueError(f"unknown colour {v!r}: use a CSS name or #rrggbb") from None
        return v


class Normalize(_Strict):
    """Per-band normalisation applied to raw pixel values before a deep model: (x - mean) / std."""

    mean: list[float]
    std: list[float]


class ModelConfig(_Strict):
    #: an installed model kind (``segflow.models`` entry points: segflow's own and plug-ins')
    kind: str = "otsu"
    weights: str | None = None
    classes: list[str | ClassSpec] = Field(default_factory=list)
    #: the kind's parameters, checked against its ``Params`` class (tasks/models/params.py);
    #: kept as given, so the config's hash does not change when a kind gains a default
    params: dict[str, Any] = Field(default_factory=dict)
    normalize: Normalize | None = None
    amp: bool = False  # deep models on CUDA: float16 autocast (ignored on CPU)
    # a model card (YAML/JSON: bands, normalisation, pixel size, classes) checked against the
    # input before any pixel is read; it overrides what the model's own files say, key by key
    card: str | None = None
    # test-time augmentation of deep models: the mean softmax over flipped (flips) or flipped
    # and rotated (d4) views of each tile
    tta: Literal["none", "flips", "d4"] = "none"
    # more deep models whose probabilities are averaged with this one's (same classes)
    ensemble: list[ModelConfig] = Field(default_factory=list)
    # nnU-Net checkpoints that hold pickled Python objects are refused unless this is set
    trust_checkpoint: bool = False

    @model_validator(mode="after")
    def _params_of_the_kind(self) -> ModelConfig:
        from segflow.tasks.models.registry import model_params

        try:
            model_params(self.kind, self.params)
        except UserError as exc:
            raise PydanticCustomError("segflow", "{reason}", {"reason": exc.reason}) from None
        if any(member.ensemble for member in self.ensemble):
            raise PydanticCustomError("segflow", "model.ensemble members cannot have their "
                                                 "own ensemble", {})
        return self


#: how a band at another resolution or CRS is resampled onto the image's grid (rasterio's names)
ResamplingName = Literal["nearest", "bilinear", "cubic", "average", "mode"]


class MaskSpec(_Strict):
    """Cells to treat as nodata, read from a classification or QA asset of each item: those
    whose value is one of ``values`` (Sentinel-2 SCL: 3 cloud shadow, 8-10 clouds and cirrus)
    or has any of ``bits`` set (Landsat QA_PIXEL: 1 dilated cloud, 3 cloud, 4 cloud shadow)."""

    asset: str
    values: list[int] = Field(default_factory=list)
    bits: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_rule(self) -> MaskSpec:
        if not self.values and not self.bits:
            raise ValueError("input.mask needs values or bits")
        if any(not 0 <= b < 64 for b in self.bits):
            raise ValueError("input.mask.bits are bit positions 0..63")
        return self


#: the ``input`` keys only the STAC reader reads (tasks/sources/stac.py)
STAC_KEYS = ("assets", "crs", "resolution", "resampling", "mask", "bbox", "bbox_crs", "mosaic",
             "apply_scale")
#: the ``input`` keys only one reader reads, by reader name; others refuse them
READER_KEYS = {"stac": STAC_KEYS, "dicom": ("series",), "bioio": ("channels", "scene", "t", "z")}


class BidsFilter(_Strict):
    """Which images of a BIDS dataset a batch takes (tasks/intake/bids.py): entities as in
    the file names (``session: "01"`` for ``ses-01``); unset entities match anything."""

    datatype: str = "anat"
    suffix: str = "T1w"
    session: str | None = None
    acquisition: str | None = None
    run: str | None = None
    task: str | None = None

    def entities(self) -> dict[str, str]:
        """The entities an image must have, by full name (suffix included)."""
        wanted = self.model_dump(exclude={"datatype"}, exclude_none=True)
        return {k: str(v) for k, v in wanted.items()}


class InputConfig(_Strict):
    modality: Literal["auto", "raster", "slide", "volume"] = "auto"  # auto: from the file
    bands: list[int] | None = None  # 1-based band indexes; None = all bands
    mpp: float | None = Field(None, gt=0)  # slides: µm per pixel, overrides the file's
    target_mpp: float | None = Field(None, gt=0)  # slides: pick the level nearest this
    foreground: Literal["none", "otsu"] = "none"  # otsu: cells at/below Otsu of band 1 are
    # background, left out of the model's fit, the mask (nodata) and the statistics
    # the largest image (cells, all spatial axes) accepted: a header claiming more is refused
    # before any pixel is read (a corrupt or hostile file can claim 10^12 pixels)
    max_pixels: int = Field(100_000_000_000, ge=1)
    # model.kind=sam: points or boxes (GeoJSON, GeoPackage, GeoParquet) prompting one object
    # each; rasters: any CRS; slides: level-0 pixels; None: SAM's automatic point grid
    prompts: str | None = None
    # STAC items (tasks/sources/stac.py). The bands to read, in model band order, by asset key
    # or by band common name (red, nir, swir16 ...); None: every asset holding image data
    assets: list[str] | None = None
    # one grid for assets of several resolutions and for mosaics: its CRS (default: the first
    # chosen asset's), cell size in CRS units (default: the finest chosen asset's) and the
    # resampling onto it, one name or one per asset key or band name (default: the rest)
    crs: str | None = None
    resolution: float | None = Field(None, gt=0)
    resampling: ResamplingName | dict[str, ResamplingName] = "nearest"
    mask: MaskSpec | None = None  # cells to treat as nodata from a cloud or QA asset
    # the area to read, [west, south, east, north] in bbox_crs; None: the union of the items
    bbox: list[float] | None = None
    bbox_crs: str = "EPSG:4326"
    # where items of a mosaic overlap, the cell comes from the first valid item: in the order
    # given (first), or least cloudy first (eo:cloud_cover)
    mosaic: Literal["first", "least_cloudy"] = "first"
    apply_scale: bool = False  # raster:bands scale and offset applied (float32 pixels)
    # DICOM: the series to read where a folder holds several (its SeriesInstanceUID or
    # SeriesDescription); None: the folder's only series
    series: str | None = None
    # microscopy (bioio): channels by name, in the model's band order (None: input.bands, or
    # all); one scene by index or name; the time point; Z: a plane index or max (projection)
    channels: list[str] | None = None
    # a batch over a BIDS dataset root: the images these entities select
    bids: BidsFilter | None = None
    scene: int | str | None = None
    t: int = Field(0, ge=0)
    z: int | Literal["max"] = 0

    @field_validator("z")
    @classmethod
    def _plane(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("a plane index (0, 1 ...) or max")
        return v

    def reader_keys(self, reader: str) -> list[str]:
        """The keys of readers other than ``reader`` set away from their defaults (the reader
        refuses them)."""
        defaults = InputConfig()
        return [f"input.{k}" for name, keys in READER_KEYS.items() if name != reader
                for k in keys if getattr(self, k) != getattr(defaults, k)]

    @field_validator("bbox")
    @classmethod
    def _four_sides(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 4 or v[0] >= v[2] or v[1] >= v[3]):
            raise ValueError("bbox is [west, south, east, north] with west < east and "
                             "south < north")
        return v

    @field_validator("resampling")
    @classmethod
    def _a_default(cls, v: str | dict[str, str]) -> str | dict[str, str]:
        if isinstance(v, dict) and not v:
            raise ValueError("give one resampling name or one per asset key")
        return v

    @field_validator("bands")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("bands are 1-based and non-empty")
        return v


class TilingConfig(_Strict):
    chunk: int = Field(2048, ge=16)      # pixels per side of one Dask task (and one Zarr shard)
    # pixels per side of one model call inside a chunk; auto: the whole chunk when the device's
    # memory allows it, else the largest tile that fits (tasks/models/sizing.py)
    tile: int | Literal["auto"] = "auto"
    halo: int = Field(32, ge=0)          # context pixels added on every side, then cropped
    batch: int | Literal["auto"] = "auto"  # tiles per forward pass; auto: as many as fit

    @field_validator("tile", "batch")
    @classmethod
    def _at_least(cls, v: int | str, info: Any) -> int | str:
        least = 8 if info.field_name == "tile" else 1
        if isinstance(v, int) and v < least:
            raise ValueError(f"at least {least}, or auto")
        return v
    stitch: Literal["crop", "gaussian"] = "crop"
    skip_empty: bool = True              # chunks that are all nodata are not inferred

    @model_validator(mode="after")
    def _halo_within_chunk(self) -> TilingConfig:
        if self.halo > self.chunk:
            raise ValueError(f"tiling.halo ({self.halo}) is larger than tiling.chunk "
                             f"({self.chunk}): a chunk would read more context than pixels")
        return self


#: class names that are stuff, not things to annotate: left out of QuPath's annotations
STUFF = {"glass", "background", "nodata", "none"}
#: label-file formats (tasks/export/labels.py) by modality, the modality's default first
EXPORT_FORMATS = {"raster": ("cog",), "slide": ("ome-tiff",), "volume": ("nifti", "dicom-seg")}
ExportFormat = Literal["cog", "ome-tiff", "nifti", "dicom-seg"]


class OutputConfig(_Strict):
    pyramid: bool = True  # OME-Zarr multiscale levels 1.. (nearest, halving) after level 0
    # one writer per mask (tasks/mask/lease.py): seconds to wait for another run of the same
    # image (CLI --wait), and seconds a crashed run's lease outlives its last renewal
    wait: float = Field(30.0, ge=0)
    lease_seconds: float = Field(60.0, ge=1)
    # outputs for other tools, written after the mask (tasks/export/)
    vectors: bool = False  # ROOT/vectors/<image_id>.parquet: GeoParquet polygons
    qupath: bool = False  # slides: ROOT/vectors/<image_id>.geojson for QuPath
    # the classes whose regions the QuPath file holds (a semantic mask: one annotation per
    # class); null: all but the stuff (classes named in STUFF: glass, background ...)
    qupath_classes: list[str] | None = None
    # ROOT/exports/: label files for desktop tools; true: the modality's own (COG for
    # rasters, OME-TIFF for slides, NIfTI for volumes), or formats by name (dicom-seg:
    # volumes read from a DICOM series); auto: the COG for rasters (the file GIS opens: GDAL
    # before 3.13 cannot read the sharded store; not a plug-in reader's plain pixel grid),
    # nothing for slides and volumes
    export: bool | Literal["auto"] | ExportFormat | list[ExportFormat] = "auto"
    probabilities: bool = False  # per-class scores in the store (`probabilities` array)
    probabilities_dtype: Literal["uint8", "float16"] = "uint8"
    # georeferenced rasters: ROOT/stac/<image_id>/<image_id>.json, a STAC Item of the run's
    # outputs, linked from the ROOT/stac/collection.json Collection (tasks/export/stac.py)
    stac: bool = True

    def qupath_class_ids(self, classes: list[ClassSpec]) -> set[int]:
        """The class ids of ``output.qupath_classes`` (a name no class has is a one-line
        error), or of every class that is not stuff."""
        if self.qupath_classes is None:
            return {c.id for c in classes if c.name.lower() not in STUFF}
        by_name = {c.name: c.id for c in classes}
        unknown = [n for n in self.qupath_classes if n not in by_name]
        if unknown:
            raise UserError("output.qupath_classes", f"no class named {', '.join(unknown)} "
                                                     f"(classes: {', '.join(by_name)})")
        return {by_name[n] for n in self.qupath_classes}

    def export_formats(self, modality: str, *, georeferenced: bool) -> list[str]:
        """The label files to write for an image of ``modality`` (``georeferenced``: it has a
        CRS and transform, which ``auto``'s COG needs; a plug-in's plain pixel grid has none);
        a format that is not the modality's is a one-line error."""
        if self.export is False:
            return []
        if self.export == "auto":
            return ["cog"] if modality == "raster" and georeferenced else []
        wanted = ([EXPORT_FORMATS[modality][0]] if self.export is True else
                  [self.export] if isinstance(self.export, str) else list(self.export))
        wrong = [f for f in wanted if f not in EXPORT_FORMATS[modality]]
        if wrong:
            raise UserError("output.export", f"{', '.join(wrong)} is not written for a "
                                             f"{modality}: use "
                                             f"{' or '.join(EXPORT_FORMATS[modality])}")
        return list(dict.fromkeys(wanted))


class StatsConfig(_Strict):
    area_unit: Literal["m2", "ha", "km2"] = "ha"  # rasters
    volume_unit: Literal["mm3", "mL", "L"] = "mL"  # volumes
    slide_unit: Literal["um2", "mm2"] = "mm2"  # slides
    instances: bool = False  # label objects (connected cells of a thing class) across chunks
    things: list[str] | None = None  # class names that are objects; None: every class but id 0
    ground_truth: str | None = None  # label image on the input's grid: metrics per class
    # instance label image on the input's grid (0 = no object): `instance_metrics` (F1 at IoU
    # >= 0.5); needs instances
    ground_truth_instances: str | None = None
    zones: str | None = None  # polygons (GeoPackage, GeoJSON, GeoParquet): `zone_stats` table
    zone_id: str | None = None  # the zones' column naming each zone; None: its row number
    # distance: touching objects of the thing classes split by a marker-controlled watershed on
    # the distance transform (tasks/models/split.py); implies instances
    split: Literal["none", "distance"] = "none"
    split_min_size: int = Field(16, ge=0)  # cells: smaller thing components are removed
    split_h: float = Field(0.5, gt=0)  # px: a distance peak must rise this far to be a marker
    split_sigma: float = Field(1.0, ge=0)  # px: the distance is smoothed within its clump
    # the largest object (split: clump of touching objects) across, in px, or with a unit
    # ("12 um", "0.5 mm", "30 m"); instance models read every chunk with halo >= reach + this
    max_object: float | str = 64.0
    on_cut: Literal["warn", "error"] = "warn"  # an owned object reaching its read window's edge
    # per-object measurements into the object_measurements table: shape (area, perimeter,
    # axes, solidity ...) and intensity (per band: mean, std, min, max, median, integrated);
    # implies instances (tasks/measure/features.py)
    measure: list[Literal["shape", "intensity"]] = Field(default_factory=list)
    # a label image on the input's grid (a tissue mask, a land-cover map): objects counted per
    # region under their centroid into the region_objects table; implies instances
    regions: str | None = None
    region_names: list[str] | None = None  # region id i is named region_names[i]

    @model_validator(mode="after")
    def _zone_id_needs_zones(self) -> StatsConfig:
        if self.zone_id and not self.zones:
            raise ValueError("stats.zone_id names a column of stats.zones, which is not set")
        return self


class ClusterConfig(_Strict):
    """Where the chunk work runs: ``address`` (or ``--scheduler``) when given, else a cluster of
    ``kind`` started for the run and closed after it (tasks/runtime/cluster.py)."""

    address: str | None = None           # tcp://host:8786 of a running Dask scheduler
    kind: Literal["local", "slurm", "pbs", "kubernetes"] = "local"
    spec: str | None = None              # slurm/pbs: YAML of dask-jobqueue keyword arguments;
    # kubernetes: a DaskCluster resource for the Dask operator
    scale: int | None = Field(None, ge=0)  # jobs (slurm/pbs) or workers (kubernetes) to request
    adapt_max: int | None = Field(None, ge=1)  # then adapt between `scale` and this many
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    gpu: Literal["auto", "off"] = "auto"
    cuda: dict[str, Any] = Field(default_factory=dict)  # LocalCUDACluster keyword arguments

    @model_validator(mode="after")
    def _spec_needs_a_kind(self) -> ClusterConfig:
        if self.kind == "local" and (self.spec or self.scale is not None or self.adapt_max):
            raise ValueError("spec, scale and adapt_max need kind slurm, pbs or kubernetes")
        return self


class JobConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    def output_hash(self) -> str:
        """Hash of everything that can change the mask (not where or how fast it runs)."""
        relevant = self.model_dump(mode="json", exclude={
            "cluster": True, "tiling": {"batch"},
            "output": {"wait", "lease_seconds", "vectors", "qupath", "qupath_classes", "export",
                       "stac"},
            "input": {"max_pixels", "bids"},
            "stats": {"area_unit", "volume_unit", "slide_unit", "ground_truth", "zones",
                      "zone_id", "on_cut", "ground_truth_instances", "region_names"}})
        for section, keys in _HASHED_WHEN_SET.items():  # hashes of older configs still hold
            defaults = type(getattr(self, section))().model_dump(mode="json")
            for key in keys:
                if relevant[section].get(key) == defaults[key]:
                    del relevant[section][key]
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: keys added after configs were first hashed: left out of the hash at their defaults, so a
#: catalog written before they existed still finds its runs done
_HASHED_WHEN_SET = {"input": (*STAC_KEYS, *READER_KEYS["dicom"], *READER_KEYS["bioio"]),
                    "model": ("card", "tta", "ensemble", "trust_checkpoint"),
                    # measure implies instances: a store labelled for it is another store
                    "stats": ("measure", "regions")}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError("--set", f"{key}: {part} is not a section")
    node[parts[-1]] = value


#: config keys that name files: a relative one is relative to the config file's folder
FILE_KEYS = (("model", "weights"), ("model", "card"), ("cluster", "spec"), ("stats", "zones"),
             ("input", "prompts"), ("stats", "ground_truth_instances"), ("stats", "regions"))


def _beside(value: Any, folder: Path) -> Any:
    """``value`` resolved against ``folder`` when it is a relative local path."""
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
        return str((folder / value).resolve())
    return value


def _paths_beside(tree: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A config's relative file paths (model weights, cluster spec) name files beside the
    config, not in the CWD, so a shipped config works from any directory."""
    for section, key in FILE_KEYS:
        node = tree.get(section)
        if isinstance(node, dict) and node.get(key) is not None:
            tree = {**tree, section: {**node, key: _beside(node[key], folder)}}
    model = tree.get("model")
    if isinstance(model, dict) and isinstance(model.get("ensemble"), list):
        members = [{**m, **{k: _beside(m[k], folder) for k in ("weights", "card") if m.get(k)}}
                   if isinstance(m, dict) else m for m in model["ensemble"]]
        tree = {**tree, "model": {**model, "ensemble": members}}
    return tree


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty file is an empty mapping; ``what`` names the file
    in the one-line error)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(str(path), f"cannot read {what}: {first_line(exc)}") from exc
    if not isinstance(loaded, dict):
        raise UserError(str(path), f"a {what} is a YAML mapping")
    return loaded


def problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``key.path: message; ...``."""
    return "; ".join(e["msg"] if e["type"] == "segflow"
                     else f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML config (or start from the defaults), apply ``key=value`` overrides, validate."""
    tree: dict[str, Any] = {}
    label = str(path) if path else "config"
    if path is not None:
        tree = _paths_beside(read_yaml(path, "config"), Path(path).parent)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError("--set", f"expected key=value, got {item!r}")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return validated(tree, label)


def validated(tree: dict[str, Any], label: str = "config") -> JobConfig:
    """``tree`` as a ``JobConfig``; every problem in one line naming ``label``."""
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(label, f"invalid config: {problems(exc)}") from None


def class_table(cfg: ModelConfig, default_names: list[str]) -> list[ClassSpec]:
    """The class table: config classes (names or full specs) or the model's defaults, coloured."""
    raw = cfg.classes or list(default_names)
    table: list[ClassSpec] = []
    for i, item in enumerate(raw):
        spec = item if isinstance(item, ClassSpec) else ClassSpec(id=i, name=str(item))
        table.append(spec.model_copy(update={"colour": spec.colour or PALETTE[i % len(PALETTE)]}))
    return table
