"""tasks/sources/foreground.py: ``input.foreground: otsu`` marks cells at or below Otsu's
threshold of band 1 invalid, against scikit-image's threshold of the volume's values."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from skimage.filters import threshold_otsu

from segflow.tasks.sources.foreground import fit_foreground
from segflow.tasks.sources.volume import open_nifti


def test_background_at_or_below_otsu_is_invalid(tmp_path, sync_client):
    rng = np.random.default_rng(0)
    volume = rng.normal(20, 3, (24, 20, 16))  # air
    head = (slice(4, 20), slice(3, 17), slice(2, 14))
    volume[head] = rng.normal(300, 20, (16, 14, 12))
    volume = np.clip(np.rint(volume), 0, None).astype(np.int16)
    air = np.ones(volume.shape, bool)
    air[head] = False
    path = tmp_path / "head.nii"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    source = open_nifti(str(path))
    fitted = fit_foreground(source, sync_client, chunk=8)
    # one histogram bin per integer value, as for any integer image
    counts = np.bincount(volume.ravel() - volume.min())
    expected = threshold_otsu(hist=(counts, np.arange(volume.min(), volume.max() + 1)))
    assert fitted.foreground_above == expected
    assert volume[air].max() <= expected < volume[head].min()  # it parts air from head
    assert source.foreground_above is None  # a new source; the given one is unchanged
    whole = tuple(slice(0, n) for n in source.spatial_shape)
    pixels, valid = fitted.read(whole)
    presented = pixels[0]  # the volume as the reader presents it (RAS+; here as stored)
    np.testing.assert_array_equal(valid, presented > expected)
    assert valid.sum() == 16 * 14 * 12
