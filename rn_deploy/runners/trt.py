"""TensorRT / TensorRT-RTX engine runner: torch CUDA tensors for I/O, profile chosen per shape.

Written against the TensorRT 10 name-based I/O API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 and TensorRT-RTX keep. The manifest is checked against
the installed library and GPU before the engine is deserialised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import names
from . import BaseRunner, RunnerUnavailable

_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


class TrtRunner(BaseRunner):
    """Runs a serialised engine built by ``rn-deploy build``.

    Args:
        engine_path: the engine; its manifest (``ENGINE.json``) must sit beside it.
        cuda_graph: capture one CUDA graph per input shape and replay it.
    """

    def __init__(self, engine_path: str | Path, cuda_graph: bool = False):
        from ..build import check_engine_file, deserialize_checked
        from ..errors import MissingDependencyError

        # A wrong or stale engine is an error; a machine without the library or a GPU is a skip.
        try:
            self.manifest, self.trt, data = check_engine_file(engine_path)
        except MissingDependencyError as e:
            raise RunnerUnavailable(f"trt: {e}") from None
        if not torch.cuda.is_available():
            raise RunnerUnavailable("trt: no CUDA GPU visible")
        self.engine = deserialize_checked(self.manifest, self.trt, data)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.profiles = self.manifest.input_profiles
        self.profile_idx = -1
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.in_dtype = self._dtype(names.INPUT)
        self.out_dtype = self._dtype(names.OUTPUT)
        self.device, self.precision = "cuda", self.manifest.precision
        self.name = f"trt-{self.manifest.backend}{'-graph' if cuda_graph else ''}-{self.precision}"

    def _dtype(self, tensor: str) -> torch.dtype:
        return _DTYPES.get(str(self.engine.get_tensor_dtype(tensor)).split(".")[-1], torch.float32)

    def covers(self, shape: tuple[int, ...]) -> str | None:
        if any(p.covers(shape) for p in self.profiles):
            return None
        return f"shape {'x'.join(map(str, shape))} is outside every profile of {self.manifest.engine_path}"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to("cuda", self.in_dtype).contiguous()

    def _select(self, shape: tuple[int, ...]) -> None:
        idx = next((i for i, p in enumerate(self.profiles) if p.covers(shape)), None)
        if idx is None:
            raise RunnerUnavailable(self.covers(shape) or "no profile")
        if idx != self.profile_idx:
            self.context.set_optimization_profile_async(idx, self.stream.cuda_stream)
            self.profile_idx = idx
        self.context.set_input_shape(names.INPUT, shape)

    def _enqueue(self, x: torch.Tensor, out: torch.Tensor) -> None:
        self.context.set_tensor_address(names.INPUT, x.data_ptr())
        self.context.set_tensor_address(names.OUTPUT, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def infer(self, prepared: torch.Tensor) -> torch.Tensor:
        x = prepared
        shape = tuple(x.shape)
        self._select(shape)
        out_shape = tuple(self.context.get_tensor_shape(names.OUTPUT))
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.cuda_graph:
            out = torch.empty(out_shape, device="cuda", dtype=self.out_dtype)
            self._enqueue(x, out)
        else:
            if shape not in self._graphs:
                xin, out = torch.empty_like(x), torch.empty(out_shape, device="cuda", dtype=self.out_dtype)
                with torch.cuda.stream(self.stream):
                    self._enqueue(xin, out)  # one plain run first: TensorRT allocates on its first call
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self.stream):
                    self._enqueue(xin, out)
                self._graphs[shape] = (g, xin, out)
            g, xin, out = self._graphs[shape]
            with torch.cuda.stream(self.stream):
                xin.copy_(x)
                g.replay()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out.float()

    def close(self) -> None:
        self._graphs.clear()
        self.context = None

