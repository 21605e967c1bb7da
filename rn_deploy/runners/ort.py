"""ONNX Runtime runner: CPU provider, or CUDA provider with IOBinding and optional CUDA graphs.

On CUDA the input and output stay in torch CUDA tensors bound with IOBinding, so timing excludes
host copies. With ``cuda_graph=True`` each distinct input shape gets its own session captured as
a CUDA graph (ORT's ``enable_cuda_graph`` needs fixed shapes and addresses); the first call at a
new shape pays for that and is reported separately by the validator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import names
from . import BaseRunner, RunnerUnavailable

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RunnerUnavailable(f"onnxruntime not installed ({e}); pip install onnxruntime") from None
    return ort


class OrtRunner(BaseRunner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        onnx_path: the model (external data beside it is found).
        provider: ``cpu`` or ``cuda``.
        cuda_graph: with ``cuda``: one CUDA-graph session per input shape.
        threads: intra-op threads for CPU (None: ORT's default).
    """

    def __init__(self, onnx_path: str | Path, provider: str = "cpu", cuda_graph: bool = False, threads: int | None = None,
                 nhwc: bool = True):
        from ..export import check_onnx_file, weights_fp16

        ort = _ort()
        self.path, self.nhwc = Path(onnx_path), nhwc
        graph = check_onnx_file(self.path)
        self.provider, self.cuda_graph = provider, cuda_graph and provider == "cuda"
        if provider == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RunnerUnavailable("ort-cuda: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            if not torch.cuda.is_available():
                raise RunnerUnavailable("ort-cuda: no CUDA GPU visible")
        self.opts = ort.SessionOptions()
        self.opts.log_severity_level = 3
        if threads:
            self.opts.intra_op_num_threads = threads
        quantized = next((p.value for p in graph.metadata_props if p.key == "rn_deploy.precision" and p.value in ("int8", "fp8")), None)
        self.precision = quantized or ("fp16" if weights_fp16(graph) else "fp32")
        self.sess = self._session(False)
        inp, out = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.in_type, self.out_type = inp.type, out.type
        self.n_out = out.shape[1] if isinstance(out.shape[1], int) else None
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.name = f"ort-{provider}{'-graph' if self.cuda_graph else ''}-{self.precision}"
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, torch.Tensor, torch.Tensor]] = {}

    def _session(self, graph: bool) -> Any:
        ort = _ort()
        if self.provider == "cuda":
            # ORT computes on torch's current stream: inputs written by torch are ordered before it.
            opts: dict[str, Any] = {"device_id": 0, "user_compute_stream": str(torch.cuda.current_stream().cuda_stream),
                                    "prefer_nhwc": "1" if self.nhwc else "0",
                                    # an "fp32" runner computes in FP32: ORT's CUDA EP would otherwise allow TF32
                                    "use_tf32": "0" if self.precision == "fp32" else "1"}
            if graph:
                opts["enable_cuda_graph"] = 1
            providers: list[Any] = [("CUDAExecutionProvider", opts)]
        else:
            providers = ["CPUExecutionProvider"]
        return ort.InferenceSession(str(self.path), self.opts, providers=providers)

    def prepare(self, x: torch.Tensor) -> Any:
        dtype = _TORCH.get(self.in_type, torch.float32)
        if self.provider == "cpu":
            return x.to(dtype).numpy()
        return x.to("cuda", dtype).contiguous()

    def _out_buffer(self, batch: int) -> torch.Tensor:
        return torch.empty(batch, self.n_out or 0, device="cuda", dtype=_TORCH.get(self.out_type, torch.float32))

    def _bind(self, sess: Any, x: torch.Tensor, out: torch.Tensor) -> Any:
        io = sess.io_binding()
        io.bind_input(names.INPUT, "cuda", 0, _NP.get(self.in_type, np.float32), tuple(x.shape), x.data_ptr())
        io.bind_output(names.OUTPUT, "cuda", 0, _NP.get(self.out_type, np.float32), tuple(out.shape), out.data_ptr())
        return io

    def infer(self, prepared: Any) -> torch.Tensor:
        if self.provider == "cpu":
            return torch.from_numpy(self.sess.run([names.OUTPUT], {names.INPUT: prepared})[0]).float()
        x: torch.Tensor = prepared
        if not self.cuda_graph:
            out = self._out_buffer(x.shape[0])
            self.sess.run_with_iobinding(self._bind(self.sess, x, out))
            return out.float()
        key = tuple(x.shape)
        if key not in self._graphs:
            sess = self._session(True)
            xin, out = torch.empty_like(x), self._out_buffer(x.shape[0])
            self._graphs[key] = (sess, self._bind(sess, xin, out), xin, out)
        sess, io, xin, out = self._graphs[key]
        xin.copy_(x)  # fixed addresses: the graph replays on these buffers
        sess.run_with_iobinding(io)
        return out.float()

    def close(self) -> None:
        self._graphs.clear()
