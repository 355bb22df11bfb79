"""Per-object shape and intensity measurements (``stats.measure``), each object measured once.

Objects are final (ids whole across chunks) before this runs. Each object is given to the
chunk that holds the first corner of its bounding box; that chunk's task reads the union of
its objects' boxes from the ``instances`` array and the source (full resolution of the mask's
grid, every band): scikit-image's ``regionprops_table`` measures their shapes there with the
cells' physical spacing, SciPy's labelled statistics (``ndimage.mean``, ``median``, ...) their
intensities, all objects at once. An object's box holds all of it, and every value is computed
on that box alone, so the values equal a whole-image ``regionprops`` (to the last bits of a
float sum) while memory stays bounded by the chunk plus the largest object.

Rows go to the long table ``object_measurements`` (one row per object, measurement and
channel), so any band names fit one schema; they travel and stay as Arrow columns (about 30
bytes a row, the names dictionary-encoded), never one Python object per row, which at a
million objects and twenty measurements each would be gigabytes on the client. Lengths are
in the reader's length unit (um, mm, m; px without one), areas and volumes in its square or
cube, orientation in radians; per band (names from the reader where it names them) the mean,
std, min, max, median and integrated intensity (the sum over the object) in raw units.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client
from scipy import ndimage
from skimage.measure import regionprops_table

from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.objects import Instances
from segflow.tasks.plan.grid import Plan
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.base import SourceBase

#: regionprops shape properties by dimensionality: (measurement name, power of the length unit;
#: None: unitless, or radians for the orientation)
SHAPE: dict[int, dict[str, tuple[str, int | None]]] = {
    2: {"area": ("area", 2), "perimeter": ("perimeter", 1),
        "equivalent_diameter_area": ("equivalent_diameter", 1),
        "axis_major_length": ("major_axis", 1), "axis_minor_length": ("minor_axis", 1),
        "eccentricity": ("eccentricity", None), "orientation": ("orientation", None),
        "solidity": ("solidity", None), "extent": ("extent", None)},
    3: {"area": ("volume", 3), "equivalent_diameter_area": ("equivalent_diameter", 1),
        "axis_major_length": ("major_axis", 1), "axis_minor_length": ("minor_axis", 1),
        "solidity": ("solidity", None), "extent": ("extent", None)},
}
#: per band, the statistics of the object's cells: SciPy's labelled statistics over the box,
#: all objects at once (regionprops' intensity properties go object by object in Python, ~5x
#: slower; BENCHMARKS.md §9)
INTENSITY = ("mean", "std", "min", "max", "median", "integrated")
#: the long table's columns as the workers return them (run_id and image_id are added when the
#: run is recorded); a value is null where it is undefined (the circularity of a one-cell
#: object)
MEASURED = pa.schema([("instance_id", pa.int64()), ("measurement", pa.string()),
                      ("channel", pa.string()), ("value", pa.float64()), ("unit", pa.string())])
Box = tuple[slice, ...]


def _column(labels: list[int], name: str, channel: str | None, values: np.ndarray,
            unit: str) -> pa.Table:
    """One measurement of every object as long rows; NaN and infinities become null."""
    values = np.asarray(values, np.float64)
    n = len(labels)
    return pa.table([pa.array(labels, pa.int64()), pa.array([name] * n, pa.string()),
                     pa.array([channel] * n, pa.string()),
                     pa.array(values, mask=~np.isfinite(values)), pa.array([unit] * n)],
                    schema=MEASURED)


def intensity_stats(labels: np.ndarray, values: np.ndarray, ids: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """Each ``INTENSITY`` statistic of ``values`` over the cells of each object ``ids`` (as
    regionprops defines them: population std, the median of an even count the mean of the
    middle two), in ``ids``' order."""
    count = ndimage.sum_labels(np.ones_like(values), labels, ids)
    total = ndimage.sum_labels(values, labels, ids)
    mean = total / count
    centre = np.zeros(int(labels.max()) + 1)
    centre[ids] = mean  # two passes, as numpy's std: no cancellation of large sums
    spread = ndimage.sum_labels((values - centre[labels]) ** 2, labels, ids) / count
    return {"mean": mean, "std": np.sqrt(spread), "min": ndimage.minimum(values, labels, ids),
            "max": ndimage.maximum(values, labels, ids),
            "median": ndimage.median(values, labels, ids), "integrated": total}


def owner_groups(objects: Instances, plan: Plan) -> dict[tuple[int, ...], list[int]]:
    """Object ids by the chunk holding the first corner of their box (one owner each)."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for object_id, lo in zip(objects.sums.ids.tolist(), objects.sums.lo.tolist()):
        groups[tuple(c // plan.chunk for c in lo)].append(object_id)
    return groups


def _unit(length: str, power: int | None, name: str) -> str:
    if power is None:
        return "rad" if name == "orientation" else "1"
    return length if power == 1 else f"{length}{power}"


def measure_group(ids: list[int], lo: list[int], hi: list[int], store: MaskStore,
                  reader: SourceBase, spacing: tuple[float, ...], length: str,
                  wanted: tuple[str, ...], bands: list[str]) -> pa.Table:
    """The measurements of objects ``ids`` from the union of their boxes (runs on a worker)."""
    box: Box = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels = read_cells(store.instances(), box).astype(np.int64)
    labels[~np.isin(labels, ids)] = 0
    ndim = labels.ndim
    found = np.unique(labels[labels > 0])  # the order regionprops lists them in
    labels_out = found.tolist()
    parts: list[pa.Table] = []
    if "shape" in wanted:
        table = regionprops_table(labels, properties=["label", *SHAPE[ndim]], spacing=spacing)
        for prop, (name, power) in SHAPE[ndim].items():
            parts.append(_column(labels_out, name, None, table[prop], _unit(length, power, name)))
        if ndim == 2:  # 4 pi area / perimeter^2: 1 for a disc
            area, perimeter = table["area"], table["perimeter"]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(perimeter > 0, 4 * np.pi * area / perimeter**2, np.nan)
            parts.append(_column(labels_out, "circularity", None, ratio, "1"))
    if "intensity" in wanted and len(found):
        pixels, _ = reader.read(box)
        per_band = [intensity_stats(labels, band_values.astype(np.float64), found)
                    for band_values in pixels]
        for stat in INTENSITY:
            for band, stats in zip(bands, per_band):
                parts.append(_column(labels_out, stat, band, stats[stat], "raw"))
    return compact(pa.concat_tables(parts) if parts else MEASURED.empty_table())


def compact(table: pa.Table) -> pa.Table:
    """The repeated names dictionary-encoded (a few bytes a row instead of a string each)."""
    for name in ("measurement", "channel", "unit"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table[name]))
    return table


def measure_objects(client: Client, store: MaskStore, plan: Plan, reader: SourceBase,
                    objects: Instances, wanted: tuple[str, ...]) -> pa.Table | None:
    """The ``object_measurements`` table (``MEASURED`` columns, names dictionary-encoded):
    every object measured once, by the chunk that owns it; None when nothing is measured."""
    if not wanted or not objects.count:
        return None
    unit, sizes = reader.cell_size()
    spacing = tuple(sizes) if unit else (1.0,) * len(plan.shape)
    bands = reader.band_names() or [f"band_{b}" for b in reader.bands]
    sums = objects.sums
    futures = []
    for ids in owner_groups(objects, plan).values():
        rows = np.asarray(ids) - 1
        futures.append(client.submit(
            measure_group, ids, sums.lo[rows].min(axis=0).tolist(),
            sums.hi[rows].max(axis=0).tolist(), store, reader, spacing, _short(unit), wanted,
            [b or f"band_{i + 1}" for i, b in enumerate(bands)], pure=False))
    tables = client.gather(futures)
    return pa.concat_tables(tables) if tables else None


def _short(unit: str | None) -> str:
    """The reader's UDUNITS length unit as the tables write units (um, mm, m; px)."""
    return {"micrometer": "um", "millimeter": "mm", "meter": "m"}.get(unit or "", "px")
