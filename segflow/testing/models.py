"""What every semantic model kind promises, checked on arrays: no store and no chunk path.

A subclass names its ``kind``, the config keys of its case (``overrides``; ``{name}`` is
replaced by the path of the file ``files`` made under that name) and how to write its input
image (``make_image``). The model is built and fitted as a run would (the fit is global, on an
in-process Dask client), then predicted whole and chunk by chunk straight from the reader:

- the parameter class is the registered one, and a key it does not have is a one-line error
  naming the key and the kind;
- chunk size does not change the mask when the halo covers the receptive field (bit for bit,
  or up to float near-ties for ``exact = False``), unless the model declares that each output
  depends on the whole tile (``TilingWarning``);
- values under nodata never change a valid cell's class, and valid cells get ids of the table;
- class ids come as integers, and more than 254 classes reach ids beyond 254 (``many``);
- the fitted model pickles (workers receive it) and predicts the same after;
- bad params or weights are one-line user errors (``bad``).

Instance models (objects merged across chunks by ownership) keep their flow-level contract in
segflow's own tests: the merge is a property of the store.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from segflow.tasks.config import JobConfig, load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models import InputSpec, SegmentationModel, build_model, model_class
from segflow.tasks.models.base import label_dtype
from segflow.tasks.models.registry import model_kind
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.registry import open_source

Bad = tuple[tuple[tuple[str, ...], str], ...]


class ModelContract:
    """Subclass with ``kind``, ``overrides`` and ``make_image`` (and ``files`` for weights)."""

    kind: ClassVar[str]
    overrides: ClassVar[tuple[str, ...]] = ()
    #: tiled output equals the whole output bit for bit (else up to float near-ties)
    exact: ClassVar[bool] = True
    #: the model's output depends on the whole tile: no halo makes tiles exact, it warns
    global_context: ClassVar[bool] = False
    #: side of the chunks (and of the model's tiles, half of it) in the tiled pass
    chunk: ClassVar[int] = 64
    #: config keys giving more than 254 classes; None: the kind's class table is fixed
    many: ClassVar[tuple[str, ...] | None] = None
    #: (config keys, text of the one-line error they must raise)
    bad: ClassVar[Bad] = ()
    #: the method marks cells as nodata itself (its own foreground mask)
    own_mask: ClassVar[bool] = False

    # --- what each kind says --------------------------------------------------------------
    def make_image(self, folder: Path) -> Path:
        """Write the input image under ``folder``; its path."""
        raise NotImplementedError

    def files(self, folder: Path) -> dict[str, Path]:
        """Weights and other files the overrides name as ``{name}``."""
        return {}

    # --- fixtures -------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    def case_files(self, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
        folder = tmp_path_factory.mktemp(f"contract-{self.kind}")
        return {"image": self.make_image(folder), **self.files(folder)}

    @pytest.fixture(scope="class")
    def fit_client(self) -> Iterator[Any]:
        """An in-process Dask client for the global fit (histograms, means)."""
        from distributed import Client

        with Client(processes=False, n_workers=1, threads_per_worker=2,
                    dashboard_address=None) as client:
            yield client

    def config(self, files: dict[str, Path], overrides: tuple[str, ...] | None = None,
               extra: tuple[str, ...] = ()) -> JobConfig:
        """The case's config (or ``overrides`` instead of its own) plus ``extra`` keys."""
        given = [f"model.kind={self.kind}",
                 *(self.overrides if overrides is None else overrides), *extra]
        for name, path in files.items():
            given = [o.replace(f"{{{name}}}", str(path)) for o in given]
        return load_config(overrides=given)

    def source(self, files: dict[str, Path]) -> SourceBase:
        return open_source(str(files["image"]), self.config(files).input)

    def model(self, files: dict[str, Path], client: Any, cfg: JobConfig) -> SegmentationModel:
        """The model built and fitted as a run builds and fits it."""
        source = self.source(files)
        spec = InputSpec(bands=len(source.bands), dtype=source.dtype,
                         ndim=len(source.spatial_shape))
        model = build_model(cfg, spec, source.uri)
        model.fit(source, client)
        return model

    @pytest.fixture(scope="class")
    def whole(self, case_files: dict[str, Path], fit_client: Any
              ) -> tuple[SegmentationModel, np.ndarray]:
        """The fitted model (one tile per image) and its mask of the whole image in one call."""
        cfg = self.config(case_files, extra=("tiling.tile=4096", "tiling.chunk=4096"))
        model = self.model(case_files, fit_client, cfg)
        return model, predict_whole(model, self.source(case_files))

    # --- the contract ---------------------------------------------------------------------
    def test_params_are_the_registered_class_and_strict(self, case_files: dict[str, Path]
                                                         ) -> None:
        kind = model_kind(self.kind)
        assert model_class(self.kind).Params is kind.params
        with pytest.raises(UserError) as error:
            self.config(case_files, extra=("model.params.no_such_key=1",))
        message = str(error.value)
        assert "model.params.no_such_key" in message and f"model.kind={self.kind}" in message
        assert "\n" not in message

    def test_chunk_size_does_not_change_the_mask(
            self, case_files: dict[str, Path], fit_client: Any,
            whole: tuple[SegmentationModel, np.ndarray]) -> None:
        model, expected = whole
        tiled_cfg = self.config(case_files, extra=(
            f"tiling.chunk={self.chunk}", f"tiling.tile={self.chunk // 2}",
            f"tiling.halo={model.receptive_field}"))
        if self.global_context:
            with pytest.warns(Warning, match="depends on the whole tile"):
                self.model(case_files, fit_client, tiled_cfg)
            return
        valid = self.source(case_files).read(full_box(self.source(case_files)))[1]
        assert len(np.unique(expected[valid])) >= 2, "a mask of one class proves nothing"
        tiled_model = self.model(case_files, fit_client, tiled_cfg)
        got = predict_chunked(tiled_model, self.source(case_files), self.chunk,
                              tiled_cfg.tiling.halo)
        if self.exact:
            np.testing.assert_array_equal(got[valid], expected[valid])
        else:  # float32 kernels differ with the input size: near-ties only
            assert (got[valid] != expected[valid]).mean() <= 0.002

    def test_nodata_values_never_reach_a_valid_cell(
            self, case_files: dict[str, Path], whole: tuple[SegmentationModel, np.ndarray]
    ) -> None:
        model, expected = whole
        source = self.source(case_files)
        box = full_box(source)
        pixels, valid = source.read(box)
        if valid.all():
            pytest.skip("the case's image has no nodata cells")
        noisy = pixels.copy()
        rng = np.random.default_rng(0)
        info = (np.iinfo(pixels.dtype) if pixels.dtype.kind in "iu"
                else np.finfo(np.float32))
        noise = rng.uniform(info.min / 2, info.max / 2, noisy.shape)
        noisy[:, ~valid] = noise.astype(pixels.dtype)[:, ~valid]
        core = tuple(slice(0, n) for n in valid.shape)
        got = np.asarray(model.predict_at(noisy, valid, core, box))
        np.testing.assert_array_equal(got[valid], expected[valid])

    def test_valid_cells_get_integer_ids_of_the_table(
            self, whole: tuple[SegmentationModel, np.ndarray], case_files: dict[str, Path]
    ) -> None:
        model, mask = whole
        valid = self.source(case_files).read(full_box(self.source(case_files)))[1]
        assert mask.dtype.kind in "iu" and mask.shape == valid.shape
        inside = mask[valid]
        if self.own_mask:  # the cells it leaves out are nodata, as it says
            inside = inside[inside != label_dtype(len(model.classes))[1]]
        assert inside.size and 0 <= int(inside.min()) and int(inside.max()) < len(model.classes)

    def test_more_than_254_classes(self, case_files: dict[str, Path], fit_client: Any) -> None:
        if self.many is None:
            pytest.skip(f"{self.kind} has a fixed class table")
        model = self.model(case_files, fit_client, self.config(case_files, self.many))
        mask = predict_whole(model, self.source(case_files))
        valid = self.source(case_files).read(full_box(self.source(case_files)))[1]
        assert len(model.classes) > 254 and mask[valid].max() > 254
        assert (mask[valid] < len(model.classes)).all()

    def test_the_fitted_model_pickles(self, whole: tuple[SegmentationModel, np.ndarray],
                                      case_files: dict[str, Path]) -> None:
        model, expected = whole
        shipped = pickle.loads(pickle.dumps(copy.copy(model)))
        np.testing.assert_array_equal(predict_whole(shipped, self.source(case_files)), expected)

    def test_bad_params_and_weights_are_one_line_errors(self, case_files: dict[str, Path]
                                                        ) -> None:
        if not self.bad:
            pytest.skip(f"{self.kind}: the case names no bad config")
        source = self.source(case_files)
        spec = InputSpec(bands=len(source.bands), dtype=source.dtype,
                         ndim=len(source.spatial_shape))
        for overrides, text in self.bad:
            with pytest.raises(UserError) as error:
                build_model(self.config(case_files, overrides), spec, source.uri)
            assert text in str(error.value) and "\n" not in str(error.value)


def full_box(source: SourceBase) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in source.spatial_shape)


def predict_whole(model: SegmentationModel, source: SourceBase) -> np.ndarray:
    """The model's class ids for the whole image in one call."""
    box = full_box(source)
    pixels, valid = source.read(box)
    return np.asarray(model.predict_at(pixels, valid, box, box))


def predict_chunked(model: SegmentationModel, source: SourceBase, chunk: int,
                    halo: int) -> np.ndarray:
    """The model's class ids chunk by chunk, each read with ``halo`` from the reader and
    cropped to its core, as a worker computes them (tasks/mask/chunk.py), without a store."""
    plan = plan_chunks(source.spatial_shape, chunk, halo, stride=model.stride)
    out: np.ndarray | None = None
    for c in plan.chunks:
        pixels, valid = source.read(c.read)
        labels = np.asarray(model.predict_at(pixels, valid, c.crop, c.read))
        if out is None:
            out = np.zeros(source.spatial_shape, labels.dtype)
        out[c.core] = labels
    assert out is not None
    return out
