"""Each successful run publishes its class table and a quick-look picture to the Prefect API
(read back with Prefect's own client) and writes the picture beside the store, local or S3."""

from __future__ import annotations

import base64
import io
from uuid import UUID

import fsspec
import numpy as np
import zarr
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.mask.quicklook import (
    LEGEND_COLUMN,
    artifact_image,
    mask_level,
    picture_shape,
    summary_markdown,
)


def _artifacts(run_id: str) -> dict[str, object]:
    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
    # every field explicit: this server rejects the nulls the client sends for omitted ones
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=flt, flow_run_filter=FlowRunFilter(),
                                      task_run_filter=TaskRunFilter(), limit=20, offset=0,
                                      sort=ArtifactSort.CREATED_DESC)
    return {a.key: a for a in found}


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], float)


def test_run_publishes_class_table_and_quicklook(textured_tif, tmp_path, dask_address):
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=512"])
    result = segment_image(str(textured_tif), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    image_id = result["image_id"]
    key = f"segflow-{image_id.lower().replace('_', '-')}"

    artifacts = _artifacts(result["run_id"])
    assert set(artifacts) == {key, f"{key}-quicklook"}
    table = artifacts[key]
    assert table.type == "markdown"
    for row in result["class_stats"]:  # every class with its exact pixel count and unit
        assert f"| {row['class_id']} {row['class_name']} | {row['pixels']:,} |" in table.data
        assert f"{row['area']:,.4f} ha" in table.data

    png = (tmp_path / "out" / "masks" / f"{image_id}.png").read_bytes()
    picture = artifacts[f"{key}-quicklook"]
    assert picture.type == "image"
    # the artifact is light (the Prefect database keeps every run's): a JPEG of the picture,
    # at most 100 KB as a data URI, that still looks like it
    head, _, body = picture.data.partition(",")
    assert head == "data:image/jpeg;base64" and len(picture.data) <= 100_000
    small = Image.open(io.BytesIO(base64.b64decode(body))).convert("RGB")
    assert 192 <= max(small.size) <= 384
    full = Image.open(io.BytesIO(png)).convert("RGB").resize(small.size, Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(small, float) - np.asarray(full, float)).mean() < 10  # JPEG only

    # 1500 x 1300 scene: longest side 512; read from level 1 (750 x 650), not level 0.
    group = zarr.open_group(result["output_uri"], mode="r")
    assert picture_shape((1500, 1300)) == (512, 444)
    assert mask_level(group, (512, 444)).path == "1"
    whole = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    assert whole.shape[1] == 444 and whole.shape[0] > 512  # the legend below the picture
    shot, key = whole[:512], whole[512:]
    for spec in group.attrs["segflow"]["classes"]:  # a swatch of each class's own colour
        assert (np.abs(key - _rgb(spec["colour"])).max(axis=2) == 0).sum() >= 100, spec
    assert (key == 0).all(axis=2).any()  # the names, in black on white

    # Independently: the full-resolution mask, nearest-sampled to the picture. Where it holds
    # class c the pixel is a 50/50 blend of c's colour with an image value in [0, 255].
    labels = np.asarray(Image.fromarray(group["0"][:]).resize((444, 512),
                                                              Image.Resampling.NEAREST))
    for spec in group.attrs["segflow"]["classes"]:
        where = labels == spec["id"]
        assert where.sum() > 1000
        offset = shot[where] - _rgb(spec["colour"]) / 2
        inside = ((offset >= -1) & (offset <= 128.5)).all(axis=1)
        assert inside.mean() > 0.97, spec
    # The nodata corner (rows < 300, cols < 400 of the scene) is left black.
    assert (shot[: 300 * 512 // 1500 - 2, : 400 * 444 // 1300 - 2] == 0).all()


def test_quicklook_written_beside_an_s3_store(rgb_tif, s3_bucket, dask_address):
    root = f"s3://{s3_bucket}/results"
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=256"])
    result = segment_image(str(rgb_tif), root, cfg.model_dump(mode="json"), dask_address)

    png_uri = f"{root}/masks/{result['image_id']}.png"
    with fsspec.open(png_uri, "rb") as fh:
        picture = Image.open(io.BytesIO(fh.read()))
        picture.load()
    shape = zarr.open_array(result["output_uri"], path="0", mode="r").shape
    assert picture.format == "PNG" and picture.mode == "RGB"
    height, width = picture_shape(shape)
    assert picture.size[0] == max(width, LEGEND_COLUMN) and picture.size[1] > height
    [table] = [a for a in _artifacts(result["run_id"]).values() if a.type == "markdown"]
    assert f"`{png_uri}`" in table.data


def test_markdown_lists_metrics_of_classes_in_the_ground_truth():
    stats = [{"class_id": 0, "class_name": "water", "pixels": 1234567, "area": 12.5,
              "area_unit": "ha", "fraction": 0.25}]
    metrics = [{"class_id": 0, "class_name": "water", "iou": 0.8, "dice": 0.8889,
                "precision": 0.9, "recall": None, "tp": 8, "fn": 2},
               {"class_id": 1, "class_name": "absent", "iou": None, "dice": None,
                "precision": None, "recall": None, "tp": 0, "fn": 0}]
    text = summary_markdown("scene", stats, metrics, "s3://b/masks/scene.png")
    assert "| 0 water | 1,234,567 | 12.5000 ha | 0.2500 |" in text
    assert "| 0 water | 0.8000 | 0.8889 | 0.9000 |  |" in text
    assert "absent" not in text  # no cell of it in the ground truth: no score to show
    assert "`s3://b/masks/scene.png`" in text


def test_an_artifact_picture_never_passes_100_kb():
    """Noise does not compress: the picture shrinks until its data URI fits."""
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    uri = artifact_image(buffer.getvalue())
    assert len(buffer.getvalue()) > 700_000 and len(uri) <= 100_000
    shrunk = Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))
    assert shrunk.format == "JPEG" and 32 <= max(shrunk.size) < 384


def test_markdown_of_an_instance_run_shows_objects_and_density():
    stats = [{"class_id": 0, "class_name": "background", "pixels": 900, "area": 0.009,
              "area_unit": "mm2", "fraction": 0.9, "objects": None, "density": None},
             {"class_id": 1, "class_name": "nucleus", "pixels": 100, "area": 0.001,
              "area_unit": "mm2", "fraction": 0.1, "objects": 12, "density": 1200.0}]
    text = summary_markdown("slide", stats, [], "masks/slide.png")
    assert "| class | pixels | area | fraction | objects | density |" in text
    assert "| 1 nucleus | 100 | 0.0010 mm2 | 0.1000 | 12 | 1,200.0000 |" in text
    assert "| 0 background | 900 | 0.0090 mm2 | 0.9000 |  |  |" in text
