"""Dynamic-shape penalty: one dynamic ONNX against a static export per shape, on ONNX Runtime (CPU).

    python bench/dynamic_penalty.py --arch resnet18 --sizes 32,64,97x211 --iters 100 --out dyn.json

Per shape: p50/p99 of the dynamic model and of a static export of that exact shape, in
alternating blocks so both see the same machine load; ratio = dynamic p50 / static p50
(goal <= 1.10). Shape switch: the dynamic session is run in rounds that cycle through the
shapes; the first call after each switch is timed apart and its p99 compared with the same
session's steady-state p99 at that shape (goal <= 1.2). Random weights: latency does not depend
on their values. The environment block (rn_deploy.doctor.environment) is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rn_deploy.checkpoint import ModelConfig
from rn_deploy.doctor import environment
from rn_deploy.export import export_onnx
from rn_deploy.models import create_model

GOAL_RATIO, GOAL_SWITCH = 1.10, 1.2


def parse_size(s: str) -> tuple[int, int]:
    parts = [int(p) for p in s.lower().split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def timed(sess: Any, x: np.ndarray) -> float:
    t = time.perf_counter()
    sess.run(None, {"input": x})
    return (time.perf_counter() - t) * 1e3


def pct(v: list[float], q: float) -> float:
    return round(float(np.percentile(v, q)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--sizes", default="32,64,97x211", help="H or HxW, comma-separated")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100, help="timed calls per shape and model")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=4, help="alternating dynamic/static blocks the iters are split into")
    ap.add_argument("--switch-rounds", type=int, default=40, help="rounds through all shapes for the switch test")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (1: least noise on a shared machine)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    torch.manual_seed(0)
    cfg = ModelConfig(arch=a.arch, n_classes=10, in_channels=3, image_size=[64, 64])
    model = create_model(a.arch, n_classes=10, in_channels=3).eval()
    rng = np.random.default_rng(0)
    inputs = {hw: rng.standard_normal((a.batch, 3, *hw), dtype=np.float32) for hw in sizes}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as td:
        dyn_path = Path(export_onnx((model, cfg), Path(td) / "dyn.onnx", verify=False).onnx_path)
        static_paths = {hw: Path(export_onnx((model, cfg), Path(td) / f"s{hw[0]}x{hw[1]}.onnx", static_size=hw, verify=False).onnx_path)
                        for hw in sizes}
        dyn = session(dyn_path, a.threads)
        statics = {hw: session(p, a.threads) for hw, p in static_paths.items()}
        for hw in sizes:
            x = inputs[hw]
            for s in (dyn, statics[hw]):
                for _ in range(a.warmup):
                    s.run(None, {"input": x})
            t_dyn: list[float] = []
            t_st: list[float] = []
            per = max(1, a.iters // a.blocks)
            for _ in range(a.blocks):
                t_dyn += [timed(dyn, x) for _ in range(per)]
                t_st += [timed(statics[hw], x) for _ in range(per)]
            rows.append({"size": f"{hw[0]}x{hw[1]}", "batch": a.batch, "dynamic_p50_ms": pct(t_dyn, 50), "dynamic_p99_ms": pct(t_dyn, 99),
                         "static_p50_ms": pct(t_st, 50), "static_p99_ms": pct(t_st, 99),
                         "ratio_p50": round(pct(t_dyn, 50) / pct(t_st, 50), 3)})
        # Shape switches on the one dynamic session: A A A | B (timed apart) B B | C ... and the same pattern
        # across the static sessions, which pays the cold caches of a switch but no shape re-planning.
        after: dict[tuple[int, int], list[float]] = {hw: [] for hw in sizes}
        steady: dict[tuple[int, int], list[float]] = {hw: [] for hw in sizes}
        after_st: dict[tuple[int, int], list[float]] = {hw: [] for hw in sizes}
        for _ in range(a.switch_rounds):
            for hw in sizes:
                after[hw].append(timed(dyn, inputs[hw]))
                steady[hw] += [timed(dyn, inputs[hw]) for _ in range(3)]
            for hw in sizes:
                after_st[hw].append(timed(statics[hw], inputs[hw]))
                for _ in range(3):
                    statics[hw].run(None, {"input": inputs[hw]})
        for r, hw in zip(rows, sizes, strict=True):
            r["switch_p99_ms"] = pct(after[hw], 99)
            r["switch_p50_ms"] = pct(after[hw], 50)
            r["static_switch_p50_ms"] = pct(after_st[hw], 50)
            r["static_switch_p99_ms"] = pct(after_st[hw], 99)
            r["steady_p50_ms"] = pct(steady[hw], 50)
            r["steady_p99_ms"] = pct(steady[hw], 99)
            r["switch_ratio_p99"] = round(r["switch_p99_ms"] / r["steady_p99_ms"], 3)
            r["meets_ratio"] = r["ratio_p50"] <= GOAL_RATIO
            r["meets_switch"] = r["switch_ratio_p99"] <= GOAL_SWITCH
    result = {"bench": "dynamic_penalty", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: str(v) for k, v in vars(a).items()}, "backend": "onnxruntime CPUExecutionProvider",
              "goals": {"ratio_p50": GOAL_RATIO, "switch_ratio_p99": GOAL_SWITCH}, "rows": rows, "environment": environment()}
    print("| size | dyn p50 ms | static p50 ms | dyn/static p50 | steady p50 / p99 ms | after-switch p50 / p99 ms | switch/steady p99 "
          "| static after-switch p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['dynamic_p50_ms']:.3f} | {r['static_p50_ms']:.3f} | {r['ratio_p50']:.3f}{'' if r['meets_ratio'] else ' (miss)'} "
              f"| {r['steady_p50_ms']:.3f} / {r['steady_p99_ms']:.3f} | {r['switch_p50_ms']:.3f} / {r['switch_p99_ms']:.3f} "
              f"| {r['switch_ratio_p99']:.3f}{'' if r['meets_switch'] else ' (miss)'} "
              f"| {r['static_switch_p50_ms']:.3f} / {r['static_switch_p99_ms']:.3f} |")
    if a.out:
        a.out.write_text(json.dumps(result, indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
