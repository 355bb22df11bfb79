"""An ONNX segmentation model run by onnxruntime: float NCHW (NCDHW) in, logits out.

The session is built once per worker process, like a torch module (``cached_module``): the CPU
execution provider with as many threads as the worker's share of the cores, CUDA's first where
the worker has a GPU and the onnxruntime build has it. A model whose inputs have fixed spatial
sides gets tiles of that side (smaller border tiles are zero-padded on their high side and
cropped back); a fixed batch size is honoured by splitting batches; float16 models are fed
float16. ``params.output`` names the output holding the logits when there are several.

The graph is code segflow cannot see into: ``params.receptive_field`` and ``params.stride``
state its geometry, as for TorchScript; whole-input normalisation and global pooling operators
found in the graph are warned about. A card may travel in the file's metadata as JSON under
``model_card``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F

from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.card import ModelCard
from segflow.tasks.models.params import ModelParams, OnnxParams
from segflow.tasks.models.torch_model import TorchModel, cached_module, worker_torch_threads
from segflow.tasks.sources.base import needs

#: ONNX operators whose output depends on the whole input (or the whole tile)
GLOBAL_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization",
              "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


#: the tile side of ``tiling.tile: auto`` (a dynamic model)
AUTO_TILE = 512


def _ort(path: str) -> Any:
    return needs("onnxruntime", "onnx", path, "model.kind=onnx models")


def _session(path: str, device: str) -> Any:
    ort = _ort(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = worker_torch_threads()
    options.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... errors
        raise UserError(path, f"not an ONNX model onnxruntime can run: {first_line(exc)}") from exc


class OrtModule(nn.Module):
    """An onnxruntime session behind a torch module's call: the tiling code stays one."""

    def __init__(self, path: str, output: str | None, device: str) -> None:
        super().__init__()
        self.session = _session(path, device)
        inp = self.session.get_inputs()
        if len(inp) != 1:
            raise UserError(path, f"takes {len(inp)} inputs ({', '.join(i.name for i in inp)}); "
                                  "segflow feeds one image tensor")
        self.input = inp[0].name
        self.ops = _graph(path).ops
        self.fp16 = inp[0].type == "tensor(float16)"
        dims = list(inp[0].shape)
        self.fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        spatial = dims[2:]
        self.fixed = (tuple(spatial) if spatial and all(isinstance(d, int) and d > 0
                                                         for d in spatial) else None)
        names = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in names:
            raise UserError(path, f"has no output {output!r} (model.params.output); its "
                                  f"outputs: {', '.join(names)}")
        self.output = output or names[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if self.fixed is not None:
            if len(self.fixed) != len(spatial) or any(s > f for s, f in zip(spatial, self.fixed)):
                raise ValueError(f"input {spatial} does not fit the model's fixed {self.fixed}")
            x = F.pad(x, [p for s, f in zip(reversed(spatial), reversed(self.fixed))
                          for p in (0, f - s)])
        step = self.fixed_batch or x.shape[0]
        dtype = np.float16 if self.fp16 else np.float32
        parts = []
        for start in range(0, x.shape[0], step):
            part = x[start:start + step].cpu().numpy().astype(dtype, copy=False)
            if part.shape[0] < step:  # a fixed batch: fill it, keep the real ones
                part = np.concatenate([part, np.zeros((step - part.shape[0], *part.shape[1:]),
                                                      part.dtype)])
            out = self.session.run([self.output], {self.input: part})[0]
            parts.append(out[:min(step, x.shape[0] - start)].astype(np.float32, copy=False))
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        logits = torch.from_numpy(joined).to(x.device)
        crop: tuple[slice, ...] = tuple(slice(0, s) for s in spatial)
        return logits[(..., *crop)]  # type: ignore[index]


class OnnxModel(TorchModel):
    """Runs an ONNX file tile by tile through onnxruntime."""

    kind = "onnx"
    Params = OnnxParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fixed = _graph(self.weights).fixed
        if fixed is not None:  # tiles of the model's side, less the halo on each side
            side = min(fixed) - 2 * self.halo
            if side < self.stride:
                raise UserError(self.weights, f"takes fixed {fixed} inputs: no room for a "
                                              f"tile within a halo of {self.halo} px")
            self.tile = side // self.stride * self.stride

    def _sizes(self, module: nn.Module, device: torch.device,
                core: tuple[int, ...]) -> tuple[int, int]:
        """onnxruntime's memory is invisible to torch's probe: ``auto`` is a 512 px tile (or
        the model's fixed side) and batches of 4."""
        tile = self.tile or -(-AUTO_TILE // self.stride) * self.stride
        return tile, self.batch or 4

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, OnnxParams)
        return OrtModule(weights, params.output, "cpu").eval()

    @classmethod
    def whole_tile_layers(cls, module: nn.Module) -> set[str]:
        assert isinstance(module, OrtModule)
        return set(module.ops & GLOBAL_OPS)

    def _module(self, device: str) -> nn.Module:
        """The session for ``device`` (its execution provider), once per worker process."""
        assert isinstance(self.params, OnnxParams)
        output = self.params.output
        return cached_module((self.weights, f"onnx:{self.digest}:{device}"), device,
                             lambda: OrtModule(self.weights, output, device))

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        text = _graph(path).metadata.get("model_card")
        if text is None:
            return None
        try:
            return ModelCard.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise UserError(path, f"metadata model_card is not a model card: "
                                  f"{first_line(exc)}") from None


@dataclass(frozen=True)
class Header:
    """What segflow reads of an ONNX file besides running it."""

    ops: frozenset[str]  # operator types of the graph, functions included
    fixed: tuple[int, ...] | None  # the input's fixed spatial sides; None when any is dynamic
    metadata: dict[str, str]  # the model's metadata properties


def _graph(path: str) -> Header:
    """The file's header, read once per version of the file (its size and mtime)."""
    stat = os.stat(path)
    return _read_graph(path, stat.st_mtime_ns, stat.st_size)


@cache
def _read_graph(path: str, mtime: int, size: int) -> Header:
    """Read with ``onnx`` without the external weights."""
    onnx = needs("onnx", "onnx", path, "model.kind=onnx models")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own alike
        raise UserError(path, f"not an ONNX model onnxruntime can run: "
                              f"{first_line(exc)}") from None
    ops = {n.op_type for n in proto.graph.node}
    ops |= {n.op_type for f in proto.functions for n in f.node}
    inputs = [i for i in proto.graph.input
              if i.name not in {t.name for t in proto.graph.initializer}]
    dims = inputs[0].type.tensor_type.shape.dim[2:] if inputs else []
    fixed = tuple(d.dim_value for d in dims) if dims and all(
        d.HasField("dim_value") and d.dim_value > 0 for d in dims) else None
    return Header(frozenset(ops), fixed, {p.key: p.value for p in proto.metadata_props})
