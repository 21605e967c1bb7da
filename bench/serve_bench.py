"""Served throughput and latency (`rn-deploy serve` + the load test) against in-process `Engine.predict`.

    python bench/serve_bench.py --arch resnet18 --size 28 --concurrency 1,16 --duration 20 --out exports/serve-bench
    python bench/serve_bench.py --soak 30              # concurrency 32 for 30 s: errors, server RSS at 10 s and 30 s

The model has random weights (latency does not depend on them), exported with rn_deploy.export,
1 channel, 10 Fashion-MNIST classes. Requests are real Fashion-MNIST test images, PNG-encoded;
the server decodes them, the in-process baseline gets the decoded uint8 arrays (so the ratio
charges the server with decoding, transport and batching). The load generator runs on the same
machine as the server and takes CPU from it: on a small machine that is part of what is measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.client import format_level, loadtest, make_client, run_level, write_report
from rn_deploy.engine import Engine
from rn_deploy.export import export_onnx
from rn_deploy.models import create_model
from rn_deploy.serve import tree_rss_mb

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def export(arch: str, size: int, out: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_classes=10, in_channels=1, image_size=[size, size], class_names=FASHION, mean=[0.286], std=[0.353])
    save_checkpoint(out / "model.pt", create_model(arch, n_classes=10, in_channels=1), cfg, {"note": "random weights (bench)"})
    return Path(export_onnx(out / "model.pt", out / "model.onnx", verify=False).onnx_path)


def in_process(onnx: Path, images: list[np.ndarray], batch: int, seconds: float) -> dict[str, Any]:
    eng = Engine.load(onnx, provider="cpu")
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    for b in batches[:3]:
        eng.predict(b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        eng.predict(batches[n % len(batches)])
        n += 1
    dt = time.perf_counter() - t0
    return {"batch": batch, "calls": n, "img_per_s": n * batch / dt, "ms_per_batch": dt / n * 1e3}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start(onnx: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    h, g, m = free_ports(3)
    cmd = [sys.executable, "-m", "rn_deploy.cli", "serve", str(onnx), "--host", "127.0.0.1", "--http-port", str(h),
           "--grpc-port", str(g), "--metrics-port", str(m), *extra]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    client, deadline = make_client(f"127.0.0.1:{h}"), time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.is_model_ready("classifier"):
                return proc, f"127.0.0.1:{h}"
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"server did not start; see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--batch", type=int, default=16, help="In-process Engine.predict batch (compare with that concurrency).")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--soak", type=float, default=0.0, help="Instead: concurrency 32 for this many seconds, RSS at 1/3 and end.")
    ap.add_argument("--out", type=Path, default=Path("exports/serve-bench"))
    args = ap.parse_args()

    from rn_deploy.train.data import load_fashion_mnist

    x = load_fashion_mnist(None, "test").images[:512, 0].numpy()
    arrays = [a[:, :, None] for a in x]
    encoded = []
    for a in x:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                          "torch_threads": torch.get_num_threads()},
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                              "model": f"{args.arch} 1x{args.size}x{args.size}, ORT CPU"}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export(args.arch, args.size, Path(tmp))
        if not args.soak:
            result["in_process"] = in_process(onnx, arrays, args.batch, min(args.duration, 10))
            print(f"in-process Engine.predict batch {args.batch}: {result['in_process']['img_per_s']:.1f} img/s", flush=True)
        extra = ["--instances", str(args.instances), "--max-queue-delay-us", str(args.max_queue_delay_us)]
        proc, url = start(onnx, args.out / "serve.log", extra)
        try:
            if args.soak:
                got: list[Any] = []
                t = threading.Thread(target=lambda: got.append(run_level(url, "classifier", encoded, 32, args.soak, False)))
                t.start()
                time.sleep(1 + args.soak / 3)
                early = tree_rss_mb(proc.pid)
                t.join()
                late = tree_rss_mb(proc.pid)
                print(format_level(got[0]))
                result["soak"] = {"level": got[0].__dict__, "rss_mb_at_third": early, "rss_mb_at_end": late,
                                  "rss_change": (late - early) / early}
                print(f"server RSS {early:.0f} MB -> {late:.0f} MB ({(late - early) / early:+.1%})")
            else:
                conc = [int(c) for c in args.concurrency.split(",")]
                rep = loadtest(url, encoded, conc, args.duration, image_source="fashion-mnist test (PNG)", log=print)
                write_report(rep, args.out)
                result["served"] = rep.to_dict()
                by_c = {lv.concurrency: lv for lv in rep.levels}
                if args.batch in by_c:
                    result["served_vs_in_process"] = by_c[args.batch].requests_per_s / result["in_process"]["img_per_s"]
                    print(f"served at concurrency {args.batch} / in-process at batch {args.batch}: "
                          f"{result['served_vs_in_process']:.1%} (goal >= 80%)")
                if 1 in by_c and by_c[1].p50_ms:
                    result["p99_over_p50_at_1"] = (by_c[1].p99_ms or 0) / by_c[1].p50_ms
                    print(f"concurrency 1: p99 / p50 = {result['p99_over_p50_at_1']:.2f} (goal <= 2)")
        finally:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            result["stop"] = {"rc": proc.wait(30), "seconds": time.monotonic() - t0}
    (args.out / "serve_bench.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out / 'serve_bench.json'}")


if __name__ == "__main__":
    main()
