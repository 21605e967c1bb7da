"""Served throughput and latency (`rn-deploy serve`) against in-process `Engine.predict`, with perf_analyzer and loadtest.

    python bench/serve_bench.py --arch resnet18 --size 28 --duration 20 --out exports/serve-bench
    python bench/serve_bench.py --soak 30              # concurrency 32 for 30 s: errors, server RSS at 10 s and 30 s

One run, one server, the same 512 Fashion-MNIST test images (PNG) everywhere:

1. in-process ``Engine.predict`` at batch ``--batch`` (16) on the decoded images;
2. NVIDIA perf_analyzer against the server at concurrency 1, 4, 16 (``--perf-analyzer PATH``, or found
   on PATH / in the tritonclient wheel's ``bin/``; see docs/serving.md for its install); skipped, and
   said so, when absent;
3. ``rn-deploy loadtest`` (its client) at the same concurrencies, with its own CPU use, and the
   loadtest / perf_analyzer ratio per level (goal: within 10%);
4. served (perf_analyzer, else loadtest) at concurrency 16 / in-process at batch 16 (goal >= 90%);
   p50/p99 at concurrency 1;
5. poisoned traffic: 16 good clients and one client looping on b"not an image" for ``--duration``:
   good requests failed (goal 0), good req/s with and without the poison.

The model has random weights (latency does not depend on them), 1 channel, 10 classes. The load
generators run on the server's machine and take CPU from it: record the machine and its load
average (written into the result).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import struct
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
from rn_deploy.client import make_client
from rn_deploy.engine import Engine
from rn_deploy.export import export_onnx
from rn_deploy.loadtest import format_level, loadtest, run_level, write_report
from rn_deploy.models import create_model
from rn_deploy.names import DEFAULT_MAX_QUEUE_DELAY_US
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


def perf_analyzer_input(images: list[bytes], path: Path) -> Path:
    """perf_analyzer's --input-data for the BYTES input `image`: base64 of a 4-byte little-endian length, then the bytes."""
    data = [{"image": {"b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode()}} for b in images]
    path.write_text(json.dumps({"data": data}))
    return path


def find_perf_analyzer(given: str | None) -> Path | None:
    """--perf-analyzer, else on PATH, else the tritonclient wheel's bin/perf_analyzer (2.50.0 ships one)."""
    if given:
        return Path(given)
    if found := shutil.which("perf_analyzer"):
        return Path(found)
    try:
        import tritonclient
    except ImportError:
        return None
    cand = Path(tritonclient.__file__).parent.parent.parent.parent / "bin" / "perf_analyzer"  # <prefix>/bin of the wheel
    cand = cand if cand.exists() else Path(sys.prefix) / "bin" / "perf_analyzer"
    return cand if cand.exists() else None


def perf_analyzer_env() -> dict[str, str]:
    """libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel, when installed, on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]

        lib = str(Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib")
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p)
    except ImportError:
        pass
    return env


def run_perf_analyzer(exe: Path, url: str, data: Path, concurrency: int, out: Path, interval_ms: int,
                      stability: int, expected_rps: float | None = None) -> dict[str, Any]:
    """One perf_analyzer level over HTTP: throughput and client-side latency percentiles from its CSV."""
    csv = out / f"perf_analyzer_c{concurrency}.csv"
    # docs/serving.md's command: count windows (time windows judged on p99 failed to stabilise on a CPU server, issue 32),
    # sized to about interval_ms of requests at this level's rate (at least 200 requests).
    count = max(200, int(expected_rps * interval_ms / 1000)) if expected_rps else 200
    cmd = [str(exe), "-m", "classifier", "-u", url, "-i", "http", "--input-data", str(data), "--concurrency-range",
           str(concurrency), "--measurement-mode", "count_windows", "--measurement-request-count", str(count),
           "--stability-percentage", str(stability), "--max-trials", "20", "-f", str(csv)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=perf_analyzer_env(), timeout=600)
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout).strip().splitlines()[-1:], "command": " ".join(cmd)}
    head, row = csv.read_text().splitlines()[:2]
    rec = dict(zip(head.split(","), row.split(","), strict=False))
    return {"concurrency": concurrency, "requests_per_s": float(rec["Inferences/Second"]),
            "p50_ms": float(rec["p50 latency"]) / 1e3, "p99_ms": float(rec["p99 latency"]) / 1e3, "command": " ".join(cmd)}


def poisoned(url: str, images: list[bytes], seconds: float) -> dict[str, Any]:
    """16 good clients alone, then with one client looping on b"not an image": good failures and req/s."""
    clean = run_level(url, "classifier", images, 16, seconds, False)
    stop, bad = threading.Event(), {"sent": 0, "refused": 0}

    def poison() -> None:
        c = make_client(url)
        try:
            while not stop.is_set():
                bad["sent"] += 1
                try:
                    c.infer("classifier", _bad_inputs())
                except Exception:  # noqa: BLE001 - the expected 400
                    bad["refused"] += 1
        finally:
            c.close()

    t = threading.Thread(target=poison)
    t.start()
    try:
        dirty = run_level(url, "classifier", images, 16, seconds, False)
    finally:
        stop.set()
        t.join(60)
    return {"good_alone": clean.__dict__, "good_with_poison": dirty.__dict__, "bad_sent": bad["sent"], "bad_refused": bad["refused"],
            "good_failed": dirty.errors, "good_failed_fraction": dirty.errors / max(1, dirty.errors + dirty.requests)}


def _bad_inputs() -> list[Any]:
    import tritonclient.http as th

    inp = th.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
    return [inp]


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
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary [default: PATH, then the tritonclient wheel's bin/].")
    ap.add_argument("--pa-stability", type=int, default=10,
                    help="perf_analyzer -s: %% spread allowed between its trials (raise it on a loaded machine).")
    ap.add_argument("--images", type=int, default=512, help="Test images to cycle through.")
    ap.add_argument("--batch", type=int, default=16, help="In-process Engine.predict batch (compare with that concurrency).")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_MAX_QUEUE_DELAY_US)
    ap.add_argument("--soak", type=float, default=0.0, help="Instead: concurrency 32 for this many seconds, RSS at 1/3 and end.")
    ap.add_argument("--out", type=Path, default=Path("exports/serve-bench"))
    args = ap.parse_args()

    from rn_deploy.datasets.sources import load_fashion_mnist

    x = load_fashion_mnist(None, "test").images[: args.images, 0].numpy()
    arrays = [a[:, :, None] for a in x]
    encoded = []
    for a in x:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                          "torch_threads": torch.get_num_threads()},
                              "load_average_at_start": os.getloadavg(),
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
                exe = find_perf_analyzer(args.perf_analyzer)
                pa: dict[int, dict[str, Any]] = {}
                if exe is None:
                    print("perf_analyzer not found (docs/serving.md says how to install it): its figures are skipped", flush=True)
                else:
                    data = perf_analyzer_input(encoded, args.out / "perf_analyzer_input.json")
                    for c in conc:
                        pa[c] = run_perf_analyzer(exe, url, data, c, args.out, int(min(args.duration, 20) * 1000),
                                              args.pa_stability)
                        print(f"perf_analyzer concurrency {c}: {pa[c]}", flush=True)
                result["perf_analyzer"] = pa
                rep = loadtest(url, encoded, conc, args.duration, image_source="fashion-mnist test (PNG)", log=print)
                write_report(rep, args.out)
                result["served"] = rep.to_dict()
                by_c = {lv.concurrency: lv for lv in rep.levels}
                result["loadtest_over_perf_analyzer"] = {c: by_c[c].requests_per_s / pa[c]["requests_per_s"]
                                                         for c in conc if "requests_per_s" in pa.get(c, {})}
                for c, r in result["loadtest_over_perf_analyzer"].items():
                    print(f"concurrency {c}: loadtest / perf_analyzer = {r:.1%} (goal 90-110%)"
                          + (" (loadtest was client-bound)" if by_c[c].client_bound else "")
                          + (f" (loadtest's client held the rate back: up to ~{by_c[c].ceiling_x:.2f}x)"
                             if by_c[c].client_held and by_c[c].ceiling_x else ""))
                if args.batch in by_c:
                    served = pa.get(args.batch, {}).get("requests_per_s") or by_c[args.batch].requests_per_s
                    result["served_vs_in_process"] = served / result["in_process"]["img_per_s"]
                    print(f"served ({'perf_analyzer' if 'requests_per_s' in pa.get(args.batch, {}) else 'loadtest'}) at concurrency "
                          f"{args.batch} / in-process at batch {args.batch}: {result['served_vs_in_process']:.1%} (goal >= 90%)")
                if 1 in by_c and by_c[1].p50_ms:
                    one = pa.get(1) if "p50_ms" in pa.get(1, {}) else {"p50_ms": by_c[1].p50_ms, "p99_ms": by_c[1].p99_ms}
                    result["concurrency_1"] = one
                    print(f"concurrency 1: p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms")
                result["poisoned"] = poisoned(url, encoded, args.duration)
                p = result["poisoned"]
                print(f"poisoned traffic: {p['good_failed']} of {p['good_failed'] + p['good_with_poison']['requests']} good requests "
                      f"failed (goal 0); good req/s {p['good_alone']['requests_per_s']:.1f} alone, "
                      f"{p['good_with_poison']['requests_per_s']:.1f} with the poison; {p['bad_refused']}/{p['bad_sent']} bad refused")
                result["load_average_at_end"] = os.getloadavg()
        finally:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            result["stop"] = {"rc": proc.wait(30), "seconds": time.monotonic() - t0}
    (args.out / "serve_bench.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out / 'serve_bench.json'}")


if __name__ == "__main__":
    main()
