"""tasks/sources/tissue.py: chunks of bare glass found on a slide thumbnail, against where the
tissue was put: every chunk holding tissue is kept, every chunk well clear of it is skipped,
and the saturation it thresholds is HSV saturation as ``colorsys`` computes it."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.tissue import DILATE, background_chunks, tissue_mask

SHAPE = (2000, 1600)
TISSUE = (slice(600, 900), slice(300, 500))  # slide cells


@dataclass(frozen=True)
class FakeSlide:
    """A slide of grey-white glass with one pink patch of tissue, seen only as thumbnails."""

    spatial_shape: tuple[int, int] = SHAPE
    flat: bool = False

    def thumbnail(self, step: int) -> tuple[np.ndarray, float]:
        """Every ``step``-th cell of the slide, (3, rows, cols) uint8."""
        rows, cols = (np.arange(0, n, step) for n in SHAPE)
        rng = np.random.default_rng(step)
        rgb = np.empty((len(rows), len(cols), 3))
        rgb[:] = [236, 236, 238]  # glass: grey-white, one colour
        if self.flat:
            rgb[:] = 200
        else:
            inside = np.ix_((rows >= TISSUE[0].start) & (rows < TISSUE[0].stop),
                            (cols >= TISSUE[1].start) & (cols < TISSUE[1].stop))
            rgb[inside] = rng.normal([220, 140, 180], 6, rgb[inside].shape)
        return np.moveaxis(np.clip(rgb, 0, 255).astype(np.uint8), -1, 0), float(step)


def test_the_thumbnail_mask_is_otsu_of_hsv_saturation_dilated():
    mask, factor = tissue_mask(FakeSlide())
    assert factor == 2.0 and mask.shape == (1000, 800)  # the longest side fits 1024
    thumb, _ = FakeSlide().thumbnail(2)
    sat = np.array([[colorsys.rgb_to_hsv(*(thumb[:, r, c] / 255.0))[1] for c in range(0, 800, 50)]
                    for r in range(0, 1000, 50)])
    inside = np.zeros((1000, 800), bool)
    inside[300:450, 150:250] = True
    assert sat[inside[::50, ::50]].min() > sat[~inside[::50, ::50]].max()  # tissue is saturated
    assert mask[inside].all()
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 300 - DILATE and rows.max() < 450 + DILATE  # no more than dilated
    assert cols.min() >= 150 - DILATE and cols.max() < 250 + DILATE


def test_chunks_with_tissue_are_kept_and_chunks_clear_of_it_skipped():
    plan = plan_chunks(SHAPE, 256, 0)
    empty = background_chunks(FakeSlide(), plan)
    margin = 2 * (DILATE + 2)  # the dilation and a thumbnail cell of rounding, in slide cells
    for chunk in plan.chunks:
        rows, cols = chunk.core
        holds = rows.start < TISSUE[0].stop and rows.stop > TISSUE[0].start and \
            cols.start < TISSUE[1].stop and cols.stop > TISSUE[1].start
        near = rows.start < TISSUE[0].stop + margin and rows.stop > TISSUE[0].start - margin and \
            cols.start < TISSUE[1].stop + margin and cols.stop > TISSUE[1].start - margin
        if holds:
            assert chunk.index not in empty, chunk.index
        elif not near:
            assert chunk.index in empty, chunk.index
    assert len(empty) >= len(plan.chunks) - 6


def test_a_flat_thumbnail_is_all_tissue():
    mask, _ = tissue_mask(FakeSlide(flat=True))
    assert mask.all()
