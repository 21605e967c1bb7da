"""ONNX Runtime runner: CPU provider, or CUDA provider with IOBinding and optional CUDA graphs.

On CUDA the input and output stay in torch CUDA tensors bound with IOBinding, so timing excludes
host copies. The runner owns a CUDA stream, handed to ORT as ``user_compute_stream``; each call
makes that stream wait for torch's current stream (where ``prepare`` wrote the input) before ORT's
kernels, and makes the current stream wait for ORT's work before the output is used, so no caller
needs an external synchronise. (Torch's default stream has handle 0, which ORT reads as "no user
stream": passing it ordered nothing.)

With ``cuda_graph=True`` each distinct input shape gets its own session with ORT's
``enable_cuda_graph`` (fixed shapes and addresses), static input/output buffers and a bounded LRU
(``max_graphs``, default 8): evicting a shape drops its session (ORT frees its arena) and buffers.
ORT runs a session normally for its first calls and captures the graph after them, so replay
starts from about the third call at a shape. Every call returns a tensor the caller owns.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RnDeployError
from ..preprocess import to_layout
from .base import ArtifactUnsupported, BaseRunner, RunnerUnavailable
from .lru import DEFAULT_MAX_SHAPES, ShapeLRU

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RunnerUnavailable(f"onnxruntime not installed ({e}); pip install onnxruntime") from None
    return ort


class _GraphSession:
    """One shape's CUDA-graph session with the static buffers its graph replays on."""

    def __init__(self, sess: Any, io: Any, xin: torch.Tensor, out: torch.Tensor):
        self.sess, self.io, self.xin, self.out = sess, io, xin, out
        self.calls = 0


class OrtRunner(BaseRunner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        onnx_path: the model (external data beside it is found).
        provider: ``cpu`` or ``cuda``.
        cuda_graph: with ``cuda``: one CUDA-graph session per input shape, in an LRU.
        threads: intra-op threads for CPU (None: ORT's default).
        session_config: ONNX Runtime session config entries (``session.intra_op.allow_spinning``: "0"
            lets the pool sleep between runs instead of spinning on cores a server's other threads need)
            and, as ``inter_op_threads``, the inter-op pool's size.
        nhwc: let ORT's CUDA EP prefer NHWC kernels.
        max_graphs: the most CUDA-graph sessions kept (one per shape); the least recently used is
            evicted, freeing its GPU memory.
        graph_opt: ONNX Runtime's graph optimisation level, one of :data:`GRAPH_OPT_LEVELS` (None: ORT's default, all).
    """

    framework = "onnxruntime"

    def __init__(self, onnx_path: str | Path, provider: str = "cpu", cuda_graph: bool = False, threads: int | None = None,
                 nhwc: bool = True, max_graphs: int = DEFAULT_MAX_SHAPES, graph_opt: str | None = None,
                 session_config: dict[str, str] | None = None):
        from ..onnxfile import check_onnx_file, graph_precision, onnx_interface

        ort = _ort()
        self.path, self.nhwc, self.threads = Path(onnx_path), nhwc, threads
        self.artifact = str(self.path)
        graph = check_onnx_file(self.path)
        self.layout = onnx_interface(graph, self.path).layout  # refuses a graph it cannot feed, in one line
        self.provider, self.cuda_graph = provider, cuda_graph and provider == "cuda"
        self.stream: torch.cuda.Stream | None = None
        if provider == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RunnerUnavailable("ort-cuda: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            if not torch.cuda.is_available():
                raise RunnerUnavailable("ort-cuda: no CUDA GPU visible")
            self.stream = torch.cuda.Stream()
            self.device_id = torch.cuda.current_device()
        self.opts = ort.SessionOptions()
        self.opts.log_severity_level = 3
        if threads:
            self.opts.intra_op_num_threads = threads
        self.graph_opt = graph_opt
        if graph_opt is not None:
            if graph_opt not in GRAPH_OPT_LEVELS:
                raise RnDeployError(f"graph optimisation level {graph_opt!r}: choose one of {', '.join(GRAPH_OPT_LEVELS)}")
            self.opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[graph_opt])
        self.session_config = dict(session_config or {})
        for key, value in self.session_config.items():
            if key == "inter_op_threads":
                self.opts.inter_op_num_threads = int(value)
            else:
                self.opts.add_session_config_entry(key, value)
        self.precision = graph_precision(graph)
        self.sess = self._session(False)
        inp, out = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        # Names and element types come from the model, not from assumptions.
        self.in_name, self.out_name = inp.name, out.name
        self.in_type, self.out_type = inp.type, out.type
        for t in (self.in_type, self.out_type):
            if t not in _TORCH:
                raise ArtifactUnsupported(f"{self.path}: tensor type {t} is not supported by this runner (float or float16)")
        self.n_out = out.shape[1] if len(out.shape) > 1 and isinstance(out.shape[1], int) else None
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.name = f"ort-{provider}{'-graph' if self.cuda_graph else ''}-{self.precision}"
        self.graphs: ShapeLRU[tuple[int, ...], _GraphSession] = ShapeLRU(max_graphs, self._evict)

    def _session(self, graph: bool) -> Any:
        ort = _ort()
        if self.provider == "cuda":
            assert self.stream is not None
            opts: dict[str, Any] = {"device_id": self.device_id, "user_compute_stream": str(self.stream.cuda_stream),
                                    "prefer_nhwc": "1" if self.nhwc else "0",
                                    # an "fp32" runner computes in FP32: ORT's CUDA EP would otherwise allow TF32
                                    "use_tf32": "0" if self.precision == "fp32" else "1"}
            if graph:
                opts["enable_cuda_graph"] = "1"
            providers: list[Any] = [("CUDAExecutionProvider", opts)]
        else:
            providers = ["CPUExecutionProvider"]
        return ort.InferenceSession(str(self.path), self.opts, providers=providers)

    def replica(self) -> OrtRunner:
        """Another runner of the same model for another thread: on CPU it shares the session (ORT's
        ``run`` is thread-safe, so the weights are in memory once); on CUDA it has its own stream
        and session (the stream is a session option)."""
        if self.provider == "cpu":
            twin = copy.copy(self)
            twin.graphs = ShapeLRU(self.graphs.maxsize, twin._evict)
            return twin
        return OrtRunner(self.path, provider=self.provider, cuda_graph=self.cuda_graph, threads=self.threads, nhwc=self.nhwc,
                         max_graphs=self.graphs.maxsize, graph_opt=self.graph_opt, session_config=self.session_config)

    def prepare(self, x: torch.Tensor) -> Any:
        dtype = _TORCH[self.in_type]
        x = to_layout(x, self.layout)
        if self.provider == "cpu":
            return x.to(dtype).numpy()
        return x.to("cuda", dtype).contiguous()

    def sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
            torch.cuda.current_stream().synchronize()

    def _out_buffer(self, batch: int) -> torch.Tensor:
        if self.n_out is None:
            raise ArtifactUnsupported(f"{self.path}: the output's class dimension is not fixed; IOBinding needs it")
        return torch.empty(batch, self.n_out, device="cuda", dtype=_TORCH[self.out_type])

    def _bind(self, sess: Any, x: torch.Tensor, out: torch.Tensor) -> Any:
        io = sess.io_binding()
        io.bind_input(self.in_name, "cuda", self.device_id, _NP[self.in_type], tuple(x.shape), x.data_ptr())
        io.bind_output(self.out_name, "cuda", self.device_id, _NP[self.out_type], tuple(out.shape), out.data_ptr())
        return io

    def _new_graph(self, x: torch.Tensor) -> _GraphSession:
        sess = self._session(True)
        xin, out = torch.empty_like(x), self._out_buffer(x.shape[0])
        return _GraphSession(sess, self._bind(sess, xin, out), xin, out)

    def _evict(self, _key: tuple[int, ...], g: _GraphSession) -> None:
        # The graph may still be replaying on our stream: wait before its buffers and session go.
        if self.stream is not None:
            self.stream.synchronize()
        g.io, g.sess = None, None

    def infer(self, prepared: Any) -> torch.Tensor:
        if self.provider == "cpu":
            return torch.from_numpy(self.sess.run([self.out_name], {self.in_name: prepared})[0]).float()
        assert self.stream is not None
        x: torch.Tensor = prepared
        caller = torch.cuda.current_stream()
        self.stream.wait_stream(caller)  # the input (written on the caller's stream) is ready before ORT reads it
        with torch.cuda.stream(self.stream):
            if not self.cuda_graph:
                out = self._out_buffer(x.shape[0])
                self.sess.run_with_iobinding(self._bind(self.sess, x, out))
                result = out.float()
            else:
                g, _ = self.graphs.get_or_create(tuple(x.shape), lambda: self._new_graph(x))
                g.xin.copy_(x)  # fixed addresses: the graph replays on these buffers
                g.sess.run_with_iobinding(g.io)
                g.calls += 1
                result = g.out.float().clone() if g.out.dtype == torch.float32 else g.out.float()  # owned: the buffer is reused
        x.record_stream(self.stream)
        caller.wait_stream(self.stream)  # the caller sees the output only after ORT wrote it
        result.record_stream(caller)
        return result

    def close(self) -> None:
        self.graphs.clear()
