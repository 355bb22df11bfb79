"""``output.export: dicom-seg``: the mask of a DICOM series as a DICOM Segmentation (highdicom),
for PACS and DICOM viewers: one segment per class (background and nodata are no segment), each
frame referencing its source slice, in the source's frame of reference and study.

BINARY segmentations, which every SEG reader takes (LABELMAP, DICOM 2024c, is not yet read by
all). highdicom builds the object in memory: the mask of one MR or CT series (tens of MB at
most) is read whole here; slides are not exported this way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segflow.tasks.colours import rgb
from segflow.tasks.config import ClassSpec
from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.sources.base import SourceBase


def write_dicom_seg(path: Path, store: MaskStore, classes: list[ClassSpec],
                    source: SourceBase, values: dict[int, int]) -> None:
    """The SEG object of ``store``'s mask over ``source`` (a DICOM series), segment numbers
    ``values`` (the medical label values: 1..n) per class id."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from segflow import __version__
    from segflow.tasks.export.labels import relabel
    from segflow.tasks.sources.dicom_files import opener
    from segflow.tasks.sources.dicom_series import DicomSeries

    if not isinstance(source, DicomSeries):
        raise UserError(source.uri, "a DICOM SEG needs a DICOM series source")
    mask = np.asarray(store.labels()[...])
    raw = np.flip(mask, tuple(a for a, f in enumerate(source.flipped) if f))  # file grid
    frames = np.ascontiguousarray(relabel(raw, values, store.nodata).transpose(2, 1, 0))
    images = []
    with opener(source.uri) as open_one:
        for name in source.files:  # in slice order, as the frames
            with open_one(name) as fh:
                images.append(pydicom.dcmread(fh))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="segflow", family=codes.cid7162.ArtificialIntelligence, version=__version__)
    segments = [hd.seg.SegmentDescription(
        segment_number=values[c.id], segment_label=c.name[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*rgb(c.colour)))
        for c in sorted(classes, key=lambda c: values[c.id]) if values[c.id]]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="segflow",
        manufacturer_model_name="segflow", software_versions=__version__,
        device_serial_number="0", omit_empty_frames=False)
    seg.save_as(path)
