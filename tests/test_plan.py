"""The chunk plan covers every pixel exactly once, clips halos at borders, honours the stride."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.tasks.plan.grid import plan_chunks


@pytest.mark.parametrize("shape, chunk, halo", [((718, 791), 300, 8), ((64, 64), 64, 0),
                                                ((10, 1000), 128, 32), ((50, 40, 30), 16, 4)])
def test_cores_tile_the_image_exactly_once(shape, chunk, halo):
    plan = plan_chunks(shape, chunk, halo)
    cover = np.zeros(shape, np.int32)
    for c in plan.chunks:
        cover[c.core] += 1
        for core, read, n in zip(c.core, c.read, shape):
            assert read.start == max(0, core.start - halo)  # unpadded at the image border
            assert read.stop == min(n, core.stop + halo)
        block = np.arange(np.prod(c.read_shape)).reshape(c.read_shape)
        assert block[c.crop].shape == tuple(s.stop - s.start for s in c.core)
    assert (cover == 1).all()
    assert len(plan.chunks) == int(np.prod(plan.grid))


def test_chunk_and_halo_align_to_the_model_stride():
    plan = plan_chunks((1000, 1000), chunk=500, halo=10, stride=32)
    assert plan.chunk == 512 and plan.halo == 32
    assert all(c.core[0].start % 32 == 0 and c.read[1].start % 32 == 0 for c in plan.chunks)
