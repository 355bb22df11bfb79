"""The job: everything later stages need about one image, decided once when it is planned.

A ``Job`` is immutable. Fitting global parameters (the foreground threshold, a model's fit) makes
a new one with ``fitted``, so no stage changes what an earlier one handed on.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, replace

from distributed import Client

from segflow.tasks.config import JobConfig
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, SegmentationModel, build_model
from segflow.tasks.models.card import METRES
from segflow.tasks.models.instance import InstanceModel, thing_ids
from segflow.tasks.models.split import DistanceSplit
from segflow.tasks.plan.card import fit_to_card
from segflow.tasks.plan.grid import Chunk, Plan, plan_chunks
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.foreground import fit_foreground
from segflow.tasks.sources.identity import image_id, source_checksum
from segflow.tasks.sources.registry import open_source
from segflow.tasks.sources.spatial import RasterRef
from segflow.tasks.sources.tissue import background_chunks

BACKGROUND, NODATA = "background", "nodata"  # what the plan can know of a chunk unread


@dataclass(frozen=True)
class Job:
    """One image: its source and reader, the model, the chunk plan and the config."""

    source: str
    root: str
    image_id: str
    checksum: str
    reader: SourceBase
    plan: Plan
    model: SegmentationModel
    config: JobConfig
    #: chunks known to be background before reading (slide glass): written as class 0
    background: frozenset[tuple[int, ...]] = field(default_factory=frozenset)
    #: chunks whose every block the file leaves unwritten (sparse GeoTIFF): nodata, never read
    unwritten: frozenset[tuple[int, ...]] = field(default_factory=frozenset)

    def known(self, chunk: Chunk) -> str | None:
        """What the plan knows of a chunk before reading it (tasks/mask/chunk.py)."""
        if chunk.index in self.background:
            return BACKGROUND
        return NODATA if chunk.index in self.unwritten else None

    @property
    def store_uri(self) -> str:
        return OutputRoot(self.root).store(self.image_id)

    @property
    def picture_uri(self) -> str:
        """The quick-look PNG, beside the store."""
        return OutputRoot(self.root).picture(self.image_id)

    @property
    def instances(self) -> bool:
        """Objects are labelled: asked for (``stats.instances``), or found by the model
        (instance models, ``stats.split``). The config stays as the user gave it, so its hash
        is the same in the catalog and the store."""
        return (self.config.stats.instances or self.model.instance
                or bool(self.config.stats.measure) or self.config.stats.regions is not None)

    @property
    def unreached_halo(self) -> bool:
        """True when the model reads further than the halo: chunk seams are not exact."""
        return self.model.receptive_field > self.plan.halo


def plan_job(source: str, root: str, config: JobConfig, checksum: str | None = None) -> Job:
    """Open the source, build the model and plan the chunks; ``checksum`` when the caller has
    already computed it (a batch does, to skip done images: a local file is not hashed twice).
    Readers that offer a tissue thumbnail mark chunks of bare glass as background; readers that
    know which blocks a file never wrote (sparse GeoTIFF) mark chunks of only those as nodata."""
    reader = open_source(source, config.input)
    cells = math.prod(reader.spatial_shape)
    if cells > config.input.max_pixels:
        raise UserError(source, f"claims {' x '.join(map(str, reader.spatial_shape))} = "
                                f"{cells:,} cells, above input.max_pixels = "
                                f"{config.input.max_pixels:,} (raise it if the image is real)")
    spec = InputSpec(bands=len(reader.bands), dtype=reader.dtype, ndim=len(reader.spatial_shape))
    model = build_model(config, spec, source=source)
    reader = fit_to_card(model, reader, config, source)
    if config.stats.zones and reader.georef is None:
        raise UserError(config.stats.zones, f"stats.zones needs a georeferenced raster; "
                                            f"{source} is a {reader.modality}")
    if config.output.qupath and reader.modality != "slide":
        raise UserError(source, f"output.qupath writes slide pixel coordinates for QuPath; this "
                                f"is a {reader.modality} (GIS: output.vectors, GeoParquet in "
                                "its CRS)")
    if config.output.qupath:
        config.output.qupath_class_ids(model.classes)  # a class it names exists
    formats = config.output.export_formats(
        reader.modality, georeferenced=isinstance(reader.spatial_ref(), RasterRef))
    if "dicom-seg" in formats and reader.reader != "dicom":
        raise UserError(source, "output.export dicom-seg references the source DICOM series; "
                                f"this is read by the {reader.reader} reader (use nifti)")
    halo = config.tiling.halo
    if config.stats.split != "none" or model.instance:
        model = _instance_model(model, config, reader, source)
        halo = max(halo, model.receptive_field)  # the halo an exact merge needs
    if config.output.probabilities and not model.soft:
        raise UserError(source, f"model.kind={model.kind} has no per-class score: "
                                "output.probabilities needs kmeans or a deep semantic model "
                                "(unet, segnet, torchscript, torchvision, smp), without "
                                "stats.split")
    plan = plan_chunks(reader.spatial_shape, config.tiling.chunk, halo, stride=model.stride)
    if len(plan.chunks) > 1 and plan.halo > plan.chunk:
        raise UserError(source, f"a halo of {plan.halo} px (tiling.halo, or the instance "
                                f"model's reach + stats.max_object) is more than the chunks' "
                                f"{plan.chunk} px: raise tiling.chunk")
    skip_glass = reader.supports_tissue_thumbnail and config.tiling.skip_empty
    background = frozenset(background_chunks(reader, plan)) if skip_glass else frozenset()
    unwritten = frozenset(c.index for c, empty in zip(
        plan.chunks, reader.unwritten([c.core for c in plan.chunks]), strict=True) if empty
    ) if config.tiling.skip_empty else frozenset()
    return Job(source=source, root=root, image_id=image_id(source),
               checksum=checksum or source_checksum(source), reader=reader, plan=plan,
               model=model, config=config, background=background,
               unwritten=unwritten)


def object_cells(value: float | str, reader: SourceBase, source: str) -> int:
    """``stats.max_object`` in cells: a number is cells; "12 um", "0.5 mm", "30 m" are
    converted with the reader's finest cell size."""
    if not isinstance(value, str):
        if value <= 0:
            raise UserError(source, f"stats.max_object={value}: the largest object is > 0 px")
        return math.ceil(value)
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(px|um|µm|mm|m)\s*", value)
    if not found:
        raise UserError(source, f"stats.max_object={value!r}: a number of px, or with a unit "
                                "(um, mm, m), e.g. '12 um'")
    number, unit = float(found[1]), found[2]
    if number <= 0:
        raise UserError(source, f"stats.max_object={value!r}: the largest object is > 0")
    if unit == "px":
        return math.ceil(number)
    units, size = reader.cell_size()
    if units not in METRES:
        raise UserError(source, f"stats.max_object={value!r} has a unit but the image has no "
                                "physical cell size: give it in px")
    return math.ceil(number * METRES[unit] / (min(size) * METRES[units]))


def _instance_model(model: SegmentationModel, config: JobConfig, reader: SourceBase,
                    source: str) -> InstanceModel:
    """The model that finds objects (a deep instance model, or a semantic one whose things
    ``stats.split`` splits) sized for ``stats.max_object``."""
    stats = config.stats
    if stats.split != "none":
        if model.instance:
            raise UserError(source, f"stats.split is for semantic models; model.kind="
                                    f"{model.kind} finds its objects itself")
        things = thing_ids(model.classes, stats.things, source)
        model = DistanceSplit(model, things, stats.split_min_size, stats.split_h,
                              stats.split_sigma)
    assert isinstance(model, InstanceModel)
    return model.sized(object_cells(stats.max_object, reader, source), stats.on_cut)


def fitted(job: Job, client: Client) -> Job:
    """The job with its global parameters fitted on the whole image: the foreground threshold
    (``input.foreground``), then the model's own fit, on a copy of the model."""
    reader = fit_foreground(job.reader, client) if job.config.input.foreground == "otsu" \
        else job.reader
    model = copy.copy(job.model)
    model.fit(reader, client)
    return replace(job, reader=reader, model=model)
