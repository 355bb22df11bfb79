"""Every registered model kind passes ``ModelContract``, through segflow's own chunk path (plan,
fit on the Dask cluster, per-chunk work on the workers, the Zarr store) on real data:

- chunk-size invariance: 64-px chunks (tiles of 32 for deep models) give the one-chunk mask,
  bit for bit for classical methods (global fits are chunk-independent), up to float32 near-ties
  for convolutions (torch picks other kernels for other input sizes);
- a model whose output depends on the whole tile says so (``TilingWarning``);
- nodata stays nodata, and every valid cell gets a class id of the table;
- more than 254 classes are written as uint16 ids (kinds with a fixed class table say so, kinds
  with a limit refuse beyond it in one line);
- bad params or weights are one-line user errors.

``test_every_registered_kind_has_a_case`` fails when a kind is added without a case here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import tifffile
import torch
import yaml
from distributed import Client
from rasterio.windows import Window

from segflow.tasks.config import JobConfig, load_config
from segflow.tasks.errors import UserError
from segflow.tasks.mask.lease import hold
from segflow.tasks.mask.run import run_chunks
from segflow.tasks.mask.store import open_job_store
from segflow.tasks.models import REGISTRY, InputSpec, build_model
from segflow.tasks.models.nets import SegNet, UNet
from segflow.tasks.models.torch_model import TilingWarning
from segflow.tasks.plan.job import fitted, plan_job
from tests.conformance.test_instance_models import INSTANCE_CASES
from tests.conftest import DATA, DilatedNet, write_pyramid_tiff

LANDSAT = Path(__file__).parents[2] / "samples" / "nc_lsat7_2000_b12345.tif"
MANY = 300  # classes in the many-class cases: ids up to 299 need uint16
DEMO_NORMALIZE = ("{mean: [78.386, 64.2676, 63.5604, 69.1132, 88.4055], "
                  "std: [12.5374, 14.5693, 21.3879, 15.6462, 25.1653]}")


@dataclass(frozen=True)
class Case:
    """One model kind under the contract: its config and data, and what it promises."""

    kind: str
    #: landsat (5-band float32 with nodata) | rgb (3-band uint8) | slide (H&E RGB) | volume
    #: (a real T1 head, NIfTI)
    data: str
    overrides: tuple[str, ...] = ()
    #: tiled output equals the one-chunk output bit for bit (else up to float near-ties)
    exact: bool = True
    #: output depends on the whole tile: no halo makes tiles exact, and the model warns
    global_context: bool = False
    #: overrides giving more than 254 classes; None: the kind's class table is fixed
    many: tuple[str, ...] | None = None
    #: overrides asking beyond the kind's class limit: a one-line error
    beyond_limit: tuple[str, ...] | None = None
    #: (overrides, text of the one-line error)
    bad: tuple[tuple[tuple[str, ...], str], ...] = field(default_factory=tuple)
    #: an optional dependency the kind needs
    needs: str | None = None
    #: the method marks cells it finds no tissue in as nodata itself (its own brain mask)
    own_mask: bool = False


CASES = [
    Case("threshold", "landsat", ("model.params.value=80",),
         bad=(((), "needs model.params.value"),
              (("model.params.value=1", "model.params.band=9"), "band=9"))),
    Case("otsu", "landsat", bad=((("model.params.band=0",), "band=0"),)),
    Case("multiotsu", "landsat", ("model.params.classes_k=4",),
         beyond_limit=("model.params.classes_k=255",),
         bad=((("model.params.classes_k=1",), "classes_k=1"),)),
    Case("adaptive", "landsat", ("model.params.block_size=15",),
         bad=((("model.params.block_size=4",), "odd number"),
              (("model.params.method=median",), "method='median'"))),
    Case("edges", "landsat", ("model.params.max_hole=8",),
         bad=((("model.params.sigma=-1",), "sigma=-1"),)),
    Case("kmeans", "landsat", ("model.params.k=4",), beyond_limit=("model.params.k=255",),
         bad=((("model.params.k=1",), "k=1"),
              (("model.params.k=3", "model.classes=[a, b]"), "names 2 classes but k=3"))),
    Case("watershed", "landsat", ("model.params.max_extent=10",),
         bad=((("model.params.low=50",), "go together"),
              (("model.params.low=90", "model.params.high=50"), "must be below"))),
    Case("index", "landsat",
         bad=((("model.params.water_index=ndxi",), "water_index='ndxi'"),
              (("model.params.bands={thermal: 6}",), "unknown role"))),
    Case("stain", "slide", ("tiling.skip_empty=false",),
         bad=((("model.params.stain=gold",), "stain='gold'"),)),
    Case("tissue", "volume", own_mask=True,
         bad=((("model.classes=[a, b]",), "three classes"),)),
    # the demo U-Net (trained on this scene; BatchNorm, receptive field 51)
    Case("unet", "landsat", ("model.weights={demo_unet}", "model.params.num_classes=8",
                             f"model.normalize={DEMO_NORMALIZE}"),
         exact=False, many=("model.weights={unet_many}", f"model.params.num_classes={MANY}",
                            "model.params={depth: 2, base: 4, num_classes: 300}"),
         bad=((("model.weights={demo_unet}", "model.params={depth: 2, base: 16}",
                "model.params.num_classes=8"), "shape mismatches"),
              (("model.weights={not_torch}", "model.params.num_classes=4"),
               "not a torch state_dict"))),
    # a seeded SegNet (BatchNorm statistics of this image, head centred: 4 classes occur)
    Case("segnet", "landsat", ("model.weights={segnet}", "model.params.num_classes=4",
                               f"model.normalize={DEMO_NORMALIZE}"),
         exact=False, many=("model.weights={segnet_many}", f"model.params.num_classes={MANY}",
                            "model.params={depth: 2, base: 4, num_classes: 300}"),
         bad=((("model.weights={segnet}", "model.params={depth: 3, base: 8}",
                "model.params.num_classes=4"), "shape mismatches"),
              (("model.weights={segnet}", "model.params.num_classes=4", "model.params.dims=3"),
               "segnet is 2-D"),
              (("model.weights={not_torch}", "model.params.num_classes=4"),
               "not a torch state_dict"))),
    Case("torchscript", "landsat", ("model.weights={dilated}", "model.params.receptive_field=7"),
         exact=False, many=("model.weights={script_many}",),
         bad=((("model.weights={not_torch}",), "not a TorchScript model"),
              (("model.weights={missing}",), "weights file not found"))),
    Case("torchvision", "rgb", ("model.weights={lraspp}", "model.classes=[a, b, c]",
                                "model.params.arch=lraspp_mobilenet_v3_large"),
         exact=False, global_context=True,
         many=("model.weights={lraspp_many}", f"model.params.num_classes={MANY}",
               "model.params.arch=lraspp_mobilenet_v3_large"),
         bad=((("model.weights={lraspp}", "model.classes=[a, b, c]",
                "model.params.arch=resnet"), "params.arch must be one of"),)),
    # smp encoders reach hundreds of pixels: the declared reach covers this small image
    Case("smp", "landsat", ("model.weights={smp}", "model.params.num_classes=4",
                            "model.params.encoder=resnet18", "model.params.receptive_field=256"),
         exact=False, needs="segmentation_models_pytorch",
         bad=((("model.weights={smp}", "model.params.num_classes=4",
                "model.params.arch=NoSuchNet"), "smp cannot build"),)),
]


def test_every_registered_kind_has_a_case():
    instance_kinds = {c.kind for c in INSTANCE_CASES} - {"otsu"}  # otsu: the split's base
    assert sorted([c.kind for c in CASES] + sorted(instance_kinds)) == sorted(REGISTRY)


# --- data and weights ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The real inputs and the weights the cases name."""
    folder = tmp_path_factory.mktemp("contract")
    out: dict[str, Path] = {}
    window = Window(100, 120, 200, 160)  # 160 x 200 px of the Landsat scene
    with rasterio.open(LANDSAT) as src:
        data = src.read(window=window)
        profile = {**src.profile, "width": 200, "height": 160,
                   "transform": src.window_transform(window)}
    data[:, :40, :50] = profile["nodata"]  # a nodata corner
    out["landsat"] = folder / "landsat.tif"
    with rasterio.open(out["landsat"], "w", **profile) as dst:
        dst.write(data)
    out["rgb"] = Path(shutil.copy(DATA / "rgb_byte.tif", folder / "rgb.tif"))
    out["volume"] = Path(shutil.copy(DATA / "nibabel_anatomical.nii", folder / "head.nii"))
    tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=1)[300:556, 200:520]
    out["slide"] = write_pyramid_tiff(folder / "slide.tif", np.ascontiguousarray(tissue),
                                      mpp=0.998, levels=2)
    out["demo_unet"] = LANDSAT.parent / "landcover_unet.pt"
    torch.manual_seed(0)
    many = UNet(5, MANY, dims=2, base=4, depth=2)
    with torch.no_grad():  # every cell's top class is 280: ids beyond 254 for sure
        many.head.weight.zero_()
        many.head.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
    out["unet_many"] = folder / "unet_many.pt"
    torch.save(many.state_dict(), out["unet_many"])
    out["segnet"] = _segnet(folder, data, profile["nodata"], 4)
    out["segnet_many"] = _segnet(folder, data, profile["nodata"], MANY)
    out["dilated"] = folder / "dilated5.pt"
    torch.jit.script(DilatedNet(bands=5).eval()).save(str(out["dilated"]))
    out["script_many"] = folder / "many.pt"
    torch.jit.script(_ValueClasses().eval()).save(str(out["script_many"]))
    out["not_torch"] = folder / "not_torch.pt"
    out["not_torch"].write_text("these are not weights\n")
    out["missing"] = folder / "missing.pt"
    try:
        out["lraspp"], out["lraspp_many"] = _lraspp(folder, 3), _lraspp(folder, MANY)
    except ImportError:
        pass
    try:
        import segmentation_models_pytorch as smp

        out["smp"] = folder / "smp.pt"
        torch.save(smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None,
                                    in_channels=5, classes=4).state_dict(), out["smp"])
    except ImportError:
        pass
    return out


def _segnet(folder: Path, data: np.ndarray, nodata: float, classes: int) -> Path:
    """A seeded SegNet (default params) with BatchNorm statistics of ``data`` as the demo
    normalisation maps it and its head centred there, so that the random net splits the image;
    with ``MANY`` classes (depth 2, base 4) its head is set so that every cell's top class is
    280."""
    torch.manual_seed(0)
    net = SegNet(5, classes) if classes != MANY else SegNet(5, MANY, base=4, depth=2)
    norm = yaml.safe_load(DEMO_NORMALIZE)
    mean, std = np.array(norm["mean"])[:, None, None], np.array(norm["std"])[:, None, None]
    x = np.where((data != nodata).all(axis=0), (data - mean) / std, 0)
    x = torch.from_numpy(x[None].astype(np.float32))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this one batch's
    with torch.no_grad():
        net.train()(x)
        if classes == MANY:
            net.head.weight.zero_()
            net.head.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
        else:
            net.head.bias -= net.eval()(x).mean((0, 2, 3))
    path = folder / f"segnet{classes}.pt"
    torch.save(net.eval().state_dict(), path)
    return path


class _ValueClasses(torch.nn.Module):
    """A 1x1 convolution to 300 classes whose top class is the cell's band-1 value times 2
    (logit_k = 4 x k - k²): a deterministic map onto ids far beyond 254."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(5, MANY, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 0, 0] = 4.0 * torch.arange(MANY)
            self.conv.bias.copy_(-(torch.arange(MANY, dtype=torch.float32) ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _lraspp(folder: Path, classes: int) -> Path:
    """torchvision's LRASPP with seeded random weights; with ``MANY`` classes its head is set
    so that every cell's top class is 280."""
    from segflow.tasks.models.torchvision_models import import_torchvision

    torch.manual_seed(0)
    net = import_torchvision().models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=classes).eval()
    if classes == MANY:
        head = net.classifier
        with torch.no_grad():
            head.low_classifier.weight.zero_()
            head.high_classifier.weight.zero_()
            head.high_classifier.bias.zero_()
            head.low_classifier.bias.copy_(-((torch.arange(MANY) - 280.0) ** 2))
    path = folder / f"lraspp{classes}.pt"
    torch.save(net.state_dict(), path)
    return path


# --- running a case through segflow's chunk path ---------------------------------------------

@pytest.fixture(scope="module")
def client(dask_address):
    with Client(dask_address) as c:
        yield c


def _config(case: Case, files: dict[str, Path], overrides: tuple[str, ...] | None = None,
            extra: tuple[str, ...] = ()) -> JobConfig:
    """The case's config (or ``overrides`` instead of its own) plus ``extra`` keys."""
    own = case.overrides if overrides is None else overrides
    given = [f"model.kind={case.kind}", *own, *extra]
    for name, path in files.items():  # "{unet}" names a file of the fixture
        given = [o.replace(f"{{{name}}}", str(path)) for o in given]
    return load_config(overrides=given)


def _segment(case: Case, files: dict[str, Path], client: Client, root: Path,
             cfg: JobConfig) -> tuple[np.ndarray, int]:
    """The mask segflow writes for ``cfg`` and its nodata value."""
    job = fitted(plan_job(str(files[case.data]), str(root), cfg), client)
    with hold(job.store_uri, "conformance", seconds=60, wait=0):
        store, written, _ = open_job_store(job)
        run_chunks(client, job, store, [c for c in job.plan.chunks if c.index not in written])
    return store.labels()[:], store.nodata


def _valid(case: Case, files: dict[str, Path]) -> np.ndarray:
    """Valid cells as the file says, read with rasterio/tifffile, not segflow."""
    if case.data == "slide":
        return np.ones(tifffile.imread(files["slide"]).shape[:2], bool)
    if case.data == "volume":  # NIfTI has no nodata; the tissue model's air is nodata
        return np.ones(nib.load(files["volume"]).shape, bool)
    with rasterio.open(files[case.data]) as ds:
        return (ds.read() != ds.nodata).any(axis=0)


@pytest.fixture(params=CASES, ids=[c.kind for c in CASES])
def case(request) -> Case:
    case: Case = request.param
    if case.needs:
        pytest.importorskip(case.needs, reason=f"model.kind={case.kind} needs {case.needs} "
                                               "(an optional extra, not in the test install)")
    return case


class ModelContract:
    """The tests every model kind passes; parametrised over ``CASES``."""

    def test_chunk_size_does_not_change_the_mask(self, case, files, client, tmp_path):
        cfg = _config(case, files, extra=("tiling.skip_empty=false",))
        if case.global_context:
            with pytest.warns(TilingWarning, match="depends on the whole tile"):
                build_model(cfg, _spec(case, files), str(files[case.data]))
            return
        reach = build_model(cfg, _spec(case, files), str(files[case.data])).receptive_field
        halo = (f"tiling.halo={reach}",)
        whole, _ = _segment(case, files, client, tmp_path / "whole", _config(
            case, files, extra=("tiling.chunk=4096", "tiling.tile=4096", *halo)))
        tiled, _ = _segment(case, files, client, tmp_path / "tiled", _config(
            case, files, extra=("tiling.chunk=64", "tiling.tile=32", *halo)))
        valid = _valid(case, files)
        assert len(np.unique(whole[valid])) >= 2, "a mask of one class proves nothing"
        if case.exact:
            np.testing.assert_array_equal(tiled, whole)
        else:  # float32 kernels differ with the input size: near-ties only
            assert (tiled != whole).mean() <= 0.002

    def test_nodata_stays_nodata(self, case, files, client, tmp_path):
        mask, nodata = _segment(case, files, client, tmp_path, _config(
            case, files, extra=("tiling.chunk=64",)))
        valid = _valid(case, files)
        n_classes = len(build_model(_config(case, files), _spec(case, files),
                                    str(files[case.data])).classes)
        assert (mask[~valid] == nodata).all()
        inside = mask[valid][mask[valid] != nodata] if case.own_mask else mask[valid]
        assert inside.size and (inside < n_classes).all()

    def test_more_than_254_classes_are_uint16(self, case, files, client, tmp_path):
        if case.beyond_limit:
            with pytest.raises(UserError) as error:
                build_model(_config(case, files, case.beyond_limit), _spec(case, files),
                            str(files[case.data]))
            assert "\n" not in str(error.value)
        if case.many is None:
            pytest.skip(f"{case.kind} has a fixed class table")
        mask, nodata = _segment(case, files, client, tmp_path,
                                   _config(case, files, case.many, ("tiling.chunk=64",)))
        valid = _valid(case, files)
        assert mask.dtype == np.uint16 and nodata == 65535
        assert (mask[~valid] == nodata).all()
        assert mask[valid].max() > 254 and (mask[valid] < MANY).all()

    def test_bad_params_and_weights_are_one_line_errors(self, case, files):
        assert case.bad, f"{case.kind}: name at least one bad config"
        for overrides, text in case.bad:
            with pytest.raises(UserError) as error:
                build_model(_config(case, files, overrides), _spec(case, files),
                            str(files[case.data]))
            assert text in str(error.value) and "\n" not in str(error.value)


def _spec(case: Case, files: dict[str, Path]) -> InputSpec:
    if case.data == "slide":
        return InputSpec(bands=3, dtype="uint8")
    if case.data == "volume":
        head = nib.load(files["volume"])
        return InputSpec(bands=1, dtype=str(head.get_data_dtype()), ndim=3)
    with rasterio.open(files[case.data]) as ds:
        return InputSpec(bands=ds.count, dtype=ds.dtypes[0])


class TestModelContract(ModelContract):
    pass

