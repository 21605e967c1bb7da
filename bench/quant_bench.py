"""Post-training quantization numbers: top-1 of each quantizer x calibration method, and engine bytes.

For one checkpoint (e.g. a Fashion-MNIST resnet18): export the FP32 ONNX, evaluate it with ONNX
Runtime (CPU) on the held-out split, then for every (quantizer, method) quantize with calibration
images from the TRAINING split and evaluate the Q/DQ ONNX the same way (rn_deploy.quantize.try_recipe,
the function the gate uses). Then build TensorRT-RTX engines ahead of time (no GPU needed) for
FP32, FP16 and the INT8 / FP8 Q/DQ models and record their bytes. Writes one JSON.

    python bench/quant_bench.py exports/fmnist/model.pt --out bench/quant_bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from rn_deploy.builder import Profile, build_engine
from rn_deploy.datasets.sources import default_split, load_split
from rn_deploy.export import export_onnx, read_onnx_config
from rn_deploy.quantize import QuantizeOptions, Recipe, evaluate_onnx, try_recipe


def engine_bytes(onnx_path: Path, out: Path, channels: int, target: str, precision: str = "fp32") -> dict[str, Any]:
    prof = Profile((1, channels, 32, 32), (32, channels, 32, 32), (256, channels, 64, 64))
    try:
        m = build_engine(onnx_path, out, backend="tensorrt-rtx", precision=precision, profiles=[prof], targets=[target])
    except Exception as e:  # noqa: BLE001 - report why a build failed, keep going
        return {"bytes": None, "error": str(e)[:300]}
    return {"bytes": m.engine_size, "precision": m.precision, "build_seconds": m.build_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data", default=None)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--eval-limit", type=int, default=None, help="Held-out images [default: all, 10,000 for Fashion-MNIST].")
    ap.add_argument("--quantizers", default="modelopt,ort")
    ap.add_argument("--methods", default="minmax,entropy,percentile")
    ap.add_argument("--target", default="sm89")
    ap.add_argument("--fp8", action="store_true", help="Also quantize to FP8 (ModelOpt) and build it.")
    ap.add_argument("--out", type=Path, default=Path("bench/quant_bench.json"))
    a = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="quant-bench."))
    fp32 = Path(export_onnx(a.checkpoint, work / "model.onnx", verify=False).onnx_path)
    cfg = read_onnx_config(fp32)
    assert cfg is not None
    split = default_split(a.dataset)
    pool = load_split(a.dataset, a.data, "train", limit=a.calib_size, presize=cfg.presize, channels=cfg.in_channels)
    test = load_split(a.dataset, a.data, split, limit=a.eval_limit, presize=cfg.presize, channels=cfg.in_channels)
    t0 = time.perf_counter()
    ref = evaluate_onnx(fp32, test, cfg)
    print(f"FP32 ONNX: top-1 {ref[0]['top1'] * 100:.2f}% on {len(test)} {split} images ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    rows = []
    opts = QuantizeOptions(calib=a.dataset, data=a.data, calib_size=a.calib_size, max_drop=float("inf"))
    for q in a.quantizers.split(","):
        for method in a.methods.split(","):
            dst = work / f"{q}.{method}.int8.onnx"
            try:
                r = try_recipe(fp32, dst, Recipe(method, a.calib_size, (), q), pool, test, ref, opts, "bench")
            except Exception as e:  # noqa: BLE001 - one failing combination must not hide the others
                rows.append({"quantizer": q, "method": method, "error": str(e)[:300]})
                print(f"{q} {method}: failed: {e}", file=sys.stderr)
                continue
            eng = engine_bytes(dst, dst.with_suffix(".engine"), cfg.in_channels, a.target)
            rows.append({"quantizer": q, "method": method, "top1": r.top1, "drop_pts": r.drop_pts, "lost": r.lost, "gained": r.gained,
                         "seconds": r.seconds,
                         "qdq": r.qdq, "engine": eng})
            print(f"{q} {method}: top-1 {r.top1 * 100:.2f}% (drop {r.drop_pts:+.2f} pt), engine {eng}", file=sys.stderr)
    fp8: dict[str, Any] | None = None
    if a.fp8:
        dst = work / "modelopt.fp8.onnx"
        try:
            r = try_recipe(fp32, dst, Recipe("minmax", a.calib_size), pool, test, ref,
                           QuantizeOptions(calib=a.dataset, precision="fp8", max_drop=float("inf")), "bench")
            fp8 = {"top1": r.top1, "drop_pts": r.drop_pts, "engine": engine_bytes(dst, dst.with_suffix(".engine"), cfg.in_channels, a.target)}
        except Exception as e:  # noqa: BLE001
            fp8 = {"error": str(e)[:300]}
        print(f"fp8: {fp8}", file=sys.stderr)
    engines = {p: engine_bytes(fp32, work / f"{p}.engine", cfg.in_channels, a.target, p) for p in ("fp32", "fp16")}
    out = {"checkpoint": str(a.checkpoint), "arch": cfg.arch, "dataset": a.dataset, "eval_split": split, "eval_images": len(test),
           "calib_split": "train", "calib_images": a.calib_size, "reference_top1": ref[0]["top1"], "int8": rows, "fp8": fp8,
           "engines": engines, "target": a.target, "onnxruntime": onnxruntime.__version__, "host": platform.node(),
           "cpu_only": not torch.cuda.is_available()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
