"""Inference latency: PyTorch eager FP16, torch.compile, ONNX Runtime CUDA EP (FP32/FP16, with and
without CUDA graphs), the Engine service API, and TensorRT where an engine can run.

    python bench/infer_bench.py --models tv_resnet50 --sizes 224 --batches 1,256 --compile --out infer.json

Every timing uses rn_deploy.benchmark.benchmark, the same code as `rn-deploy validate`: one first call
(reported separately), warm-up calls, then device-synchronised timed calls; p50/p90/p99 ms and
img/s. Models have random weights (1000 classes): latency does not depend on the values. ONNX
files are exported with rn_deploy.export (dynamic axes; FP16 = FP16 weights/compute, FP32 I/O).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rn_deploy.benchmark import benchmark
from rn_deploy.checkpoint import ModelConfig
from rn_deploy.engine import Engine
from rn_deploy.export import export_onnx
from rn_deploy.models import create_model
from rn_deploy.runners import BaseRunner, OrtRunner, RunnerUnavailable, TorchRunner


class CompiledRunner(BaseRunner):
    """torch.compile (default mode, static shapes) of the FP16 model on CUDA."""

    def __init__(self, model: torch.nn.Module):
        self.model = torch.compile(model.eval().cuda().half().to(memory_format=torch.channels_last), dynamic=False)
        self.device, self.precision, self.name = "cuda", "fp16", "torch-compile-fp16"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.cuda().half().contiguous(memory_format=torch.channels_last)

    def infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(prepared)


class EngineRunner(BaseRunner):
    """The service API: Engine.load(onnx).logits(x) with a CUDA-resident normalised batch."""

    def __init__(self, onnx_path: Path, cuda_graph: bool):
        self.eng = Engine.load(onnx_path, provider="cuda", cuda_graph=cuda_graph)
        self.device, self.precision = "cuda", self.eng.runner.precision
        self.name = f"Engine(ort-cuda{'-graph' if cuda_graph else ''})-{self.precision}"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.cuda()

    def infer(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.eng.logits(prepared)


def make_runner(method: str, model: torch.nn.Module, onnx32: Path, onnx16: Path) -> BaseRunner:
    if method == "eager-fp16":
        return TorchRunner(copy.deepcopy(model), device="cuda", precision="fp16")
    if method == "compile-fp16":
        return CompiledRunner(copy.deepcopy(model))
    if method == "engine-graph-fp16":
        return EngineRunner(onnx16, cuda_graph=True)
    if method.startswith("ort-"):
        onnx_path = onnx16 if method.endswith("fp16") else onnx32
        return OrtRunner(onnx_path, provider="cuda", cuda_graph="graph" in method)
    raise SystemExit(f"unknown method {method!r}")


def iters_for(batch: int, size: int) -> tuple[int, int]:
    work = batch * size * size
    return (10, 100) if work <= 224 * 224 * 8 else (5, 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tv_resnet50")
    ap.add_argument("--sizes", default="128,224,320")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--methods", default="eager-fp16,ort-fp32,ort-fp16,ort-graph-fp32,ort-graph-fp16,engine-graph-fp16")
    ap.add_argument("--compile", action="store_true", help="add torch.compile (compiles once per shape: slow to start)")
    ap.add_argument("--out", default="infer.json")
    args = ap.parse_args()
    methods = args.methods.split(",") + (["compile-fp16"] if args.compile else [])
    rows: list[dict[str, Any]] = []
    meta = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    try:
        import onnxruntime as ort

        meta["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="rn-bench-"))
    for arch in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(arch, n_classes=1000).eval()
        cfg = ModelConfig(arch=arch, n_classes=1000, image_size=[224, 224])
        onnx32 = Path(export_onnx((model, cfg), tmp / f"{arch}.onnx", verify=False).onnx_path)
        onnx16 = Path(export_onnx((model, cfg), tmp / f"{arch}.fp16.onnx", fp16=True, verify=False).onnx_path)
        for method in methods:
            try:
                runner = make_runner(method, model, onnx32, onnx16)
            except RunnerUnavailable as e:
                print(json.dumps({"model": arch, "method": method, "skipped": str(e)}), flush=True)
                continue
            for size in [int(s) for s in args.sizes.split(",")]:
                for b in [int(v) for v in args.batches.split(",")]:
                    warm, iters = iters_for(b, size)
                    x = torch.randn(b, 3, size, size)
                    try:
                        lat = benchmark(runner, runner.prepare(x), b, warm, iters)
                    except Exception as e:  # noqa: BLE001 - record and go on with the next cell
                        print(json.dumps({"model": arch, "method": method, "batch": b, "size": size, "error": str(e)[:200]}), flush=True)
                        continue
                    row = {"model": arch, "method": runner.name, "batch": b, "size": size, **lat.__dict__}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    with open(args.out, "w") as f:
                        json.dump({**meta, "results": rows}, f, indent=2)
            runner.close()
            del runner
            torch.cuda.empty_cache() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
