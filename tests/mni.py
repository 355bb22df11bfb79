"""The MNI ICBM152 2009a template from nilearn's wheel (T1, skull-stripped, 1 mm) with its
grey- and white-matter probability maps as ground truth, degraded as a scanner would: a smooth
multiplicative bias field and Rician noise. Shared by tests/test_tissue.py and
benchmarks/quality.py."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _data() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def template(step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (float), the truth (0 outside the brain, 1 CSF, 2 GM, 3 WM: each brain voxel's most
    probable tissue, CSF = 1 - GM - WM) and the affine, every ``step``-th voxel."""
    t1 = nib.load(_data() / TEMPLATE.format("t1"))
    gm = np.asarray(nib.load(_data() / TEMPLATE.format("gm")).dataobj, np.float64)
    wm = np.asarray(nib.load(_data() / TEMPLATE.format("wm")).dataobj, np.float64)
    volume = np.asarray(t1.dataobj, np.float64)
    truth = np.argmax(np.stack([np.clip(255 - gm - wm, 0, None), gm, wm]), axis=0) + 1
    truth[volume <= 0] = 0
    affine = t1.affine @ np.diag([step, step, step, 1])
    cut = (slice(None, None, step),) * 3
    return volume[cut], truth[cut], affine


def degrade(volume: np.ndarray, noise: float, bias: float, seed: int = 0) -> np.ndarray:
    """``volume`` times a smooth field within [1/(1 + bias), 1 + bias] (a tilted quadratic),
    plus Rician noise of ``noise`` times its maximum."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape], indexing="ij")
    field = 0.6 * x + 0.5 * y - 0.4 * z + 0.3 * x * y
    signal = volume * np.exp(field / np.abs(field).max() * np.log1p(bias))
    sd = noise * volume.max()
    return np.hypot(signal + rng.normal(0, sd, signal.shape), rng.normal(0, sd, signal.shape))


def dice(labels: np.ndarray, truth: np.ndarray, k: int) -> float:
    a, b = labels == k, truth == k
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def write(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), path)
    return path
