"""FP16 ONNX writers compared on real data: onnxconverter-common ("converter") vs NVIDIA ModelOpt AutoCast.

    python bench/fp16_tools.py exports/model/model.pt --limit 2000 --out fp16_tools.json

For each tool: FP16 ONNX (FP32 I/O) from the checkpoint with rn_deploy.export, then
- top-1 accuracy on the first LIMIT Fashion-MNIST test images with ONNX Runtime (CPU), at the
  training size, beside the FP32 ONNX's, and the share of predictions equal to FP32's;
- validate-style parity against PyTorch FP32 on real test images resized to odd sizes
  (relative L2 error, max abs error, cosine), the numbers `rn-deploy validate` reports;
- what the tool changed: ops and weights left in FP32, Cast nodes, file size, conversion time.
ONNX Runtime's CPU provider computes FP16 models in FP32 after casting (DESIGN.md, Known traps), so
this measures the rounding of weights and the graph each tool writes, not FP16 arithmetic on a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.datasets.sources import load_fashion_mnist
from rn_deploy.doctor import environment
from rn_deploy.engine import preprocess
from rn_deploy.export import FP16_TOOLS, export_onnx
from rn_deploy.metrics import parity


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits(sess: Any, x: torch.Tensor, batch: int = 250) -> np.ndarray:
    return np.concatenate([sess.run(None, {"input": x[i : i + batch].numpy()})[0] for i in range(0, len(x), batch)])


def graph_stats(path: Path) -> dict[str, Any]:
    m = onnx.load(str(path))
    inits = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer)
    return {"nodes": len(m.graph.node), "casts": sum(n.op_type == "Cast" for n in m.graph.node),
            "fp32_weights": inits.get("FLOAT", 0), "fp16_weights": inits.get("FLOAT16", 0), "bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder [default: /usr/share/datasets/fashion-mnist]")
    ap.add_argument("--limit", type=int, default=2000, help="test images for top-1")
    ap.add_argument("--sizes", default="97x211,45x61,224x160", help="odd HxW sizes for parity (real images resized)")
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ck = load_checkpoint(a.checkpoint)
    cfg = ck.config
    model = ck.model.eval().float()
    test = load_fashion_mnist(a.data, "test")
    imgs = [im.permute(1, 2, 0).numpy() for im in test.images[: a.limit]]
    labels = test.labels[: a.limit].numpy()
    train_hw = (cfg.image_size[0], cfg.image_size[1])
    x_eval = preprocess(imgs, train_hw, cfg.in_channels, cfg.mean, cfg.std)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    x_par = {hw: preprocess(imgs[: a.parity_images], hw, cfg.in_channels, cfg.mean, cfg.std) for hw in sizes}
    with torch.no_grad():
        ref_par = {hw: model(x).numpy() for hw, x in x_par.items()}
        ref_eval = model(x_eval).numpy()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as td:
        variants = [("fp32", None)] + [(f"fp16-{t}", t) for t in FP16_TOOLS]
        for name, tool in variants:
            path = Path(td) / f"{name}.onnx"
            t0 = time.perf_counter()
            res = export_onnx(a.checkpoint, path, fp16=tool is not None, **({"fp16_tool": tool} if tool else {}), verify=False)
            secs = time.perf_counter() - t0
            sess = session(Path(res.onnx_path))
            out = logits(sess, x_eval)
            pred = out.argmax(1)
            row: dict[str, Any] = {"export_seconds": round(secs, 2), **graph_stats(path),
                                   "top1": round(float((pred == labels).mean()), 4),
                                   "same_pred_as_torch_fp32": round(float((pred == ref_eval.argmax(1)).mean()), 4),
                                   "eval_rel_l2_vs_torch": round(parity(ref_eval, out).rel_l2, 6), "parity": {}}
            for hw, x in x_par.items():
                p = parity(ref_par[hw], logits(sess, x))
                row["parity"][f"{hw[0]}x{hw[1]}"] = {"rel_l2": p.rel_l2, "max_abs": p.max_abs, "cosine": p.cosine, "top1": p.top1}
            rows[name] = row
            print(name, json.dumps({k: v for k, v in row.items() if k != "parity"}), flush=True)
            for hw, p in row["parity"].items():
                print(f"  {hw}: rel_l2 {p['rel_l2']:.2e} max_abs {p['max_abs']:.2e} cosine {p['cosine']:.6f} top1 {p['top1']:.3f}")
        same = onnx.load(str(Path(td) / "fp16-converter.onnx")).graph == onnx.load(str(Path(td) / "fp16-autocast.onnx")).graph
    result = {"bench": "fp16_tools", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "checkpoint": str(a.checkpoint), "arch": cfg.arch, "eval_size": list(train_hw), "limit": a.limit,
              "identical_graphs": same, "rows": rows, "environment": environment()}
    print("identical FP16 graphs:", same)
    if a.out:
        a.out.write_text(json.dumps(result, indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
