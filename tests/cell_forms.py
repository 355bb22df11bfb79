"""Small cell models in the forms their packages save them, and an image whose cells are known.

- a Cellpose-SAM file (``CPSAM.state_dict()``, as ``net.save_model`` writes it) with a one-block,
  32-wide ViT (random weights: it proves loading and the pipeline, not Cellpose's quality);
- a deterministic Cellpose network (``local_flows``): it reads the flows and the cell
  probability from the image's own bands, one pixel at a time, so everything after the network
  (Cellpose's tiles, flow dynamics, mask clean-up) is Cellpose's own and tiled output must equal
  whole-image output exactly;
- an InstanSeg TorchScript file made by InstanSeg's own exporter (``InstanSeg_Torchscript``)
  around a local network with set weights: a seed at each bright peak and each pixel within
  an L1 radius of a seed's embedding kept by its pixel classifier: diamonds around peaks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from segflow.tasks.models.vision_ops import import_torchvision

#: Cellpose-SAM's encoder shrunk to one block, 32 wide
CELLPOSE_ENCODER = {"embed_dim": 32, "depth": 1, "num_heads": 2, "global_attn_indexes": [0]}
CELLPOSE_PARAMS = "model.params.encoder={embed_dim: 32, depth: 1, num_heads: 2, " \
                  "global_attn_indexes: [0]}"


def cellpose_file(path: Path) -> Path:
    import_torchvision()  # before cellpose imports it (tasks/models/vision_ops.py)
    from cellpose.vit import CPSAM

    from segflow.tasks.models.cellpose_model import encoder_overrides

    torch.manual_seed(0)
    with encoder_overrides(CELLPOSE_ENCODER):
        net = CPSAM(dtype=torch.float32)
    net.save_model(str(path))
    return path


def _local_forward(self: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Band 1 is above 0 in cells, bands 2-3 are the flows mapped from -1..1 to 0..1:
    Cellpose's outputs (dY, dX times 5, cell probability logit) pixel by pixel."""
    flows = (2 * x[:, 1:3] - 1) * 5
    return torch.cat([flows, 40 * (x[:, :1] > 0).float() - 20], 1), torch.zeros(len(x), 256)


def local_flows(on: bool) -> None:
    """Swap Cellpose-SAM's forward for ``_local_forward`` in this process (or restore it);
    run on the Dask workers with ``client.run``."""
    import_torchvision()
    from cellpose import vit

    if on and not hasattr(vit.CPSAM, "_saved_forward"):
        vit.CPSAM._saved_forward = vit.CPSAM.forward  # type: ignore[attr-defined]
        vit.CPSAM.forward = _local_forward  # type: ignore[method-assign]
    elif not on and hasattr(vit.CPSAM, "_saved_forward"):
        vit.CPSAM.forward = vit.CPSAM._saved_forward  # type: ignore[method-assign]
        del vit.CPSAM._saved_forward


def disk_cells(shape: tuple[int, int], radius: int, spacing: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Disks on a jittered grid: their label image (numbered in raster order of first cells,
    as ``skimage.measure.label`` numbers them) and a float32 (3, y, x) image of
    [cone, flow y, flow x]: a cone peaking at 1 on each centre (above 0 over the whole disk),
    and the unit vector to the centre mapped to 0..1."""
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    owner = np.zeros(shape, np.int32)
    flows = np.zeros((2, *shape), np.float32)
    cone = np.zeros(shape, np.float32)
    k = 0
    for cy in range(radius + 2, shape[0] - radius - 2, spacing):
        for cx in range(radius + 2, shape[1] - radius - 2, spacing):
            k += 1
            y, x = cy + rng.integers(-2, 3), cx + rng.integers(-2, 3)
            dy, dx = y - yy, x - xx
            inside = dy ** 2 + dx ** 2 <= radius ** 2
            owner[inside] = k
            norm = np.maximum(np.hypot(dy, dx), 1e-6)
            cone[inside] = (1 - np.hypot(dy, dx) / (radius + 1))[inside]
            flows[0][inside], flows[1][inside] = (dy / norm)[inside], (dx / norm)[inside]
    flows[:, 0, 0], flows[:, 0, 1] = -1, 1  # both ends of the range in each flow band
    image = np.concatenate([cone[None], (flows + 1) / 2])
    return label(owner > 0, connectivity=1), image


class _Peaks(nn.Module):
    """Seeds at the peaks of band 1; embeddings are the pixel coordinates themselves."""

    def __init__(self) -> None:
        super().__init__()
        from instanseg.utils.loss.instanseg_loss import ProbabilityNet

        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[4, 0, 1, 1] = 15.0  # seed map = band 1 + 0.5
        self.pixel_classifier = ProbabilityNet(4, width=5)
        fc1, fc2, fc3 = (self.pixel_classifier.fc1, self.pixel_classifier.fc2,
                         self.pixel_classifier.fc3)
        with torch.no_grad():
            for layer in (fc1, fc2, fc3):
                layer.weight.zero_()
                layer.bias.zero_()
            for i, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1)]):
                fc1.weight[i, axis] = sign  # |dy|, |dx| in two halves each
            fc2.weight[0, :4] = 1.0  # L1 distance to the seed's embedding
            fc3.weight[0, 0], fc3.bias[0] = -20.0, 20.0 * 1.6  # inside an L1 radius of 1.6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def instanseg_file(path: Path, pixel_size: float = 0.0) -> Path:
    from instanseg.utils.loss.instanseg_loss import InstanSeg_Torchscript

    model = InstanSeg_Torchscript(_Peaks().eval(), cells_and_nuclei=False,
                                  pixel_size=pixel_size, n_sigma=2, dim_coords=2, dim_seeds=1,
                                  backbone_dim_in=3, feature_engineering_function="0")
    torch.jit.script(model).save(str(path))
    return path


def stardist_folder(path: Path, train: bool = True) -> Path:
    """A small StarDist 2-D model (8 rays, one U-Net level of 8 filters) saved by StarDist in
    its folder form, trained for 100 steps on disk cells (~10 s; ``train``) or left random."""
    import tensorflow as tf
    from stardist.models import Config2D, StarDist2D

    tf.keras.utils.set_random_seed(0)
    config = Config2D(n_rays=8, grid=(2, 2), n_channel_in=1, unet_n_depth=1,
                      unet_n_filter_base=8, unet_n_conv_per_depth=2, net_conv_after_unet=16,
                      train_patch_size=(64, 64), train_batch_size=4,
                      train_learning_rate=3e-3, train_tensorboard=False)
    model = StarDist2D(config, name=path.name, basedir=str(path.parent))
    if train:
        images, labels = [], []
        for seed in range(8):
            truth, image = disk_cells((96, 96), 6, 20, seed)
            images.append(image[0])
            labels.append(truth)
        model.train(images[:6], labels[:6], validation_data=(images[6:], labels[6:]),
                    epochs=4, steps_per_epoch=25)
    else:
        model.keras_model.save_weights(str(path / "weights_best.h5"))
    return path
