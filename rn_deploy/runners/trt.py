"""TensorRT / TensorRT-RTX engine runner: torch CUDA tensors for I/O, one context per profile or captured shape.

Written against the TensorRT 10 name-based I/O API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 and TensorRT-RTX keep. The manifest is checked against
the installed library and GPU before the engine is deserialised; tensor names, dtypes and profile
shapes are then read from the engine itself.

Contexts. One deserialised engine serves every context (:meth:`TrtRunner.replica` makes another
runner on the same engine, for another thread). Without CUDA graphs a runner has one execution
context per optimisation profile, set to that profile once and never switched. With
``cuda_graph=True`` (full TensorRT) each input shape gets its own context, set to its profile and
shape once, static input/output buffers and a captured CUDA graph, kept in a bounded LRU
(``max_graphs``): a graph is never replayed on a context reconfigured for another shape. TensorRT-RTX
compiles shape-specialised kernels just in time, so capturing its enqueue from outside is not
reliable (its docs require ``kREQUIRE_USER_ALLOCATION`` and ``isStreamCapturable``); there the
runner asks TensorRT-RTX for its own graphs instead (``IRuntimeConfig.cuda_graph_strategy =
WHOLE_GRAPH_CAPTURE``) and says so in ``graph_note``.

Every boolean TensorRT returns (profile, shape, enqueue) is checked; every call returns an owned tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineCompatibilityError, RnDeployError
from ..names import nchw_shape
from ..preprocess import to_layout
from .base import BaseRunner, RunnerUnavailable
from .lru import DEFAULT_MAX_SHAPES, ShapeLRU

_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32, "INT64": torch.int64,
           "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


def torch_dtype(trt_dtype: Any, tensor: str, where: str) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType``; one this runner cannot hold is an error, never a guess."""
    key = str(trt_dtype).split(".")[-1]
    if key not in _DTYPES:
        raise EngineCompatibilityError(f"{where}: tensor {tensor!r} has dtype {key}, which the runner cannot hold "
                                       f"({', '.join(_DTYPES)}); rebuild with FP32/FP16 I/O")
    return _DTYPES[key]


def _shape4(dims: Any, where: str) -> tuple[int, int, int, int]:
    s = tuple(int(v) for v in dims)
    if len(s) != 4:
        raise EngineCompatibilityError(f"{where}: input profile shape {s} is not NxCxHxW")
    return (s[0], s[1], s[2], s[3])


@dataclass
class _Captured:
    """One shape's own context, static buffers and CUDA graph (full TensorRT, ``cuda_graph=True``)."""

    context: Any
    graph: torch.cuda.CUDAGraph
    xin: torch.Tensor
    out: torch.Tensor


class TrtRunner(BaseRunner):
    """Runs a serialised engine built by ``rn-deploy build``.

    Args:
        engine_path: the engine; its manifest (``ENGINE.json``) must sit beside it.
        cuda_graph: replay CUDA graphs (see the module docstring for TensorRT-RTX).
        max_graphs: the most captured shapes kept; the least recently used is evicted (its
            context, graph and buffers freed).
    """

    framework = "tensorrt"

    def __init__(self, engine_path: str | Path, cuda_graph: bool = False, max_graphs: int = DEFAULT_MAX_SHAPES):
        from ..errors import MissingDependencyError
        from ..runtime import check_engine_file, deserialize_checked

        # A wrong or stale engine is an error; a machine without the library or a GPU is a skip.
        try:
            manifest, trt, data = check_engine_file(engine_path)
        except MissingDependencyError as e:
            raise RunnerUnavailable(f"trt: {e}") from None
        if not torch.cuda.is_available():
            raise RunnerUnavailable("trt: no CUDA GPU visible")
        self._setup(manifest, trt, deserialize_checked(manifest, trt, data), cuda_graph, max_graphs)

    def _setup(self, manifest: Any, trt: Any, engine: Any, cuda_graph: bool, max_graphs: int) -> None:
        from ..runtime import Profile

        self.manifest, self.trt, self.engine = manifest, trt, engine
        self.artifact = str(manifest.engine_path)
        where = str(manifest.engine_path)
        io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in io if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in io if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise EngineCompatibilityError(f"{where}: the engine has inputs {ins} and outputs {outs}; this runner takes one "
                                           "image input and one logits output")
        self.in_name, self.out_name = ins[0], outs[0]
        listed = {d.get("name") for d in list(manifest.inputs) + list(manifest.outputs)} - {None}
        if listed and listed != {self.in_name, self.out_name}:
            raise EngineCompatibilityError(f"{where}: the manifest lists tensors {sorted(listed)} but the engine has "
                                           f"{[self.in_name, self.out_name]}; the manifest belongs to another engine")
        self.in_dtype = torch_dtype(engine.get_tensor_dtype(self.in_name), self.in_name, where)
        self.out_dtype = torch_dtype(engine.get_tensor_dtype(self.out_name), self.out_name, where)
        self.layout = getattr(manifest, "layout", "NCHW")
        self.profiles = []  # NCHW, as callers ask; the engine's own shapes are in its input's layout
        for i in range(engine.num_optimization_profiles):
            lo, opt, hi = (_shape4(nchw_shape(s, self.layout), where) for s in engine.get_tensor_profile_shape(self.in_name, i))
            self.profiles.append(Profile(lo, opt, hi))
        self.stream = torch.cuda.Stream()
        self.rtx = manifest.backend == "tensorrt-rtx"
        self.cuda_graph = cuda_graph
        self.graph_note: str | None = None
        if cuda_graph and self.rtx:
            self.graph_note = ("TensorRT-RTX captures its own CUDA graphs (IRuntimeConfig.cuda_graph_strategy = "
                               "WHOLE_GRAPH_CAPTURE); stream capture from outside needs kREQUIRE_USER_ALLOCATION")
        self._contexts: dict[int, Any] = {}
        self.graphs: ShapeLRU[tuple[int, ...], _Captured] = ShapeLRU(max_graphs, self._evict)
        self.device, self.precision = "cuda", manifest.precision
        self.name = f"trt-{manifest.backend}{'-graph' if cuda_graph else ''}-{self.precision}"

    def replica(self) -> TrtRunner:
        """Another runner on the same deserialised engine (one copy of the weights on the GPU), with its own stream and contexts."""
        twin = TrtRunner.__new__(TrtRunner)
        twin._setup(self.manifest, self.trt, self.engine, self.cuda_graph, self.graphs.maxsize)
        return twin

    def covers(self, shape: tuple[int, ...]) -> str | None:
        if any(p.covers(shape) for p in self.profiles):
            return None
        return f"shape {'x'.join(map(str, shape))} is outside every profile of {self.manifest.engine_path}"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return to_layout(x.to("cuda", self.in_dtype), self.layout).contiguous()

    def sync(self) -> None:
        self.stream.synchronize()
        torch.cuda.current_stream().synchronize()

    def _profile_of(self, shape: tuple[int, ...]) -> int:
        """The profile covering a prepared input's ``shape`` (in the engine's layout)."""
        nchw = nchw_shape(shape, self.layout)
        idx = next((i for i, p in enumerate(self.profiles) if p.covers(nchw)), None)
        if idx is None:
            raise RnDeployError(self.covers(nchw) or "no profile covers the shape")
        return idx

    def _new_context(self, profile: int) -> Any:
        if self.rtx and self.cuda_graph:
            cfg = self.engine.create_runtime_config()
            cfg.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            ctx = self.engine.create_execution_context(cfg)
        else:
            ctx = self.engine.create_execution_context()
        if ctx is None:
            raise RnDeployError(f"{self.manifest.engine_path}: TensorRT could not create an execution context (GPU memory?)")
        if not ctx.set_optimization_profile_async(profile, self.stream.cuda_stream):
            raise RnDeployError(f"{self.manifest.engine_path}: TensorRT refused optimisation profile {profile}")
        return ctx

    def _set_shape(self, ctx: Any, shape: tuple[int, ...]) -> None:
        if not ctx.set_input_shape(self.in_name, shape):
            raise RnDeployError(f"{self.manifest.engine_path}: TensorRT refused input shape {'x'.join(map(str, shape))} "
                                f"for {self.in_name!r}")

    def _out_shape(self, ctx: Any) -> tuple[int, ...]:
        shape = tuple(int(d) for d in ctx.get_tensor_shape(self.out_name))
        if any(d < 0 for d in shape):
            raise RnDeployError(f"{self.manifest.engine_path}: output shape {shape} is not resolved after setting the input shape")
        return shape

    def _enqueue(self, ctx: Any, x: torch.Tensor, out: torch.Tensor) -> None:
        if not ctx.set_tensor_address(self.in_name, x.data_ptr()) or not ctx.set_tensor_address(self.out_name, out.data_ptr()):
            raise RnDeployError(f"{self.manifest.engine_path}: TensorRT refused a tensor address")
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RnDeployError(f"{self.manifest.engine_path}: TensorRT execute_async_v3 failed")

    def _capture(self, shape: tuple[int, ...], x: torch.Tensor) -> _Captured:
        ctx = self._new_context(self._profile_of(shape))
        self._set_shape(ctx, shape)  # this context keeps this shape for its whole life
        xin = torch.empty_like(x)
        out = torch.empty(self._out_shape(ctx), device="cuda", dtype=self.out_dtype)
        with torch.cuda.stream(self.stream):
            xin.copy_(x)
            self._enqueue(ctx, xin, out)  # one plain run first: TensorRT allocates on its first call
        self.stream.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=self.stream):
            self._enqueue(ctx, xin, out)
        return _Captured(ctx, g, xin, out)

    def _evict(self, _shape: tuple[int, ...], c: _Captured) -> None:
        self.stream.synchronize()  # the graph may still be replaying
        c.context = None

    def infer(self, prepared: torch.Tensor) -> torch.Tensor:
        x = prepared
        shape = tuple(x.shape)
        caller = torch.cuda.current_stream()
        self.stream.wait_stream(caller)  # the input is written on the caller's stream
        with torch.cuda.stream(self.stream):
            if self.cuda_graph and not self.rtx:
                c, _ = self.graphs.get_or_create(shape, lambda: self._capture(shape, x))
                c.xin.copy_(x)
                c.graph.replay()
                result = c.out.to(torch.float32, copy=True)  # owned: the graph's buffer is reused by the next replay
            else:
                idx = self._profile_of(shape)
                if idx not in self._contexts:
                    self._contexts[idx] = self._new_context(idx)
                ctx = self._contexts[idx]
                self._set_shape(ctx, shape)
                out = torch.empty(self._out_shape(ctx), device="cuda", dtype=self.out_dtype)
                self._enqueue(ctx, x, out)
                result = out.float()
        x.record_stream(self.stream)
        caller.wait_stream(self.stream)
        result.record_stream(caller)
        return result

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.stream.synchronize()  # nothing of ours may still run when contexts and buffers go
        if hasattr(self, "graphs"):
            self.graphs.clear()
        self._contexts = {}
