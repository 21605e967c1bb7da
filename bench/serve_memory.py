"""Worst-case memory of `rn-deploy serve` (PSS of serve + tritonserver + backend stub) for a 1- and a 3-channel model.

    python bench/serve_memory.py                       # both models, default limits; prints a Markdown table and JSON
    python bench/serve_memory.py --channels 3 --json-out /tmp/mem.json

Per model (random weights, 28 px, 10 classes: memory is the images', not the model's), one server with the default
limits (--max-pixels 12 MP, --max-batch-pixels 24 MP, --max-request-bytes 64 MiB, --max-batch 32), then in turn:

1. idle: after one small request (the baseline every other figure is relative to);
2. one 12 MP RGB PNG (4000 x 3000, the --max-pixels limit);
3. four such PNGs at once (one batch: two sub-batches of 24 MP);
4. four such PNGs beside 16 clients looping on 28 px PNGs;
5. ten 60 MB bodies at once (under --max-request-bytes, so tritonserver receives them; not images: each a 400
   from the decoder): what --max-bytes-in-flight (256 MiB) bounds;
6. ten 80 MB bodies at once (over --max-request-bytes: each a 413 from the body guard, which reads none of them).

For each: the peak (PSS sampled every 50 ms while it runs) and the level 2 s after it ends, both minus the idle
baseline. PSS counts the stub's shared-memory region (mapped by tritonserver and the stub) once.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rn_deploy.checkpoint import ModelConfig, save_checkpoint  # noqa: E402
from rn_deploy.client import request  # noqa: E402
from rn_deploy.export import export_onnx  # noqa: E402
from rn_deploy.models import create_model  # noqa: E402
from rn_deploy.serve import tree_pss_mb  # noqa: E402


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def photo_12mp() -> bytes:
    """4000 x 3000 RGB: gradients plus noise, so the PNG has a photo's size (tens of MB), not a few KB."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000]
    a = np.stack([(x // 16) % 256, (y // 12) % 256, ((x + y) // 28) % 256], -1).astype(np.int16)
    a += rng.integers(-12, 13, a.shape, dtype=np.int16)
    return png(np.clip(a, 0, 255).astype(np.uint8))


def model(d: Path, channels: int) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=channels, image_size=[28, 28],
                      class_names=[f"c{i}" for i in range(10)], mean=[0.5] * channels, std=[0.25] * channels)
    save_checkpoint(d / f"m{channels}.pt", create_model("mnist_resnet", n_classes=10, in_channels=channels), cfg, {})
    return Path(export_onnx(d / f"m{channels}.pt", d / f"m{channels}.onnx", verify=False).onnx_path)


class Sampler:
    """Peak PSS of a process tree, sampled every 50 ms between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def __enter__(self) -> Sampler:
        self.peak = tree_pss_mb(self.pid)
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, tree_pss_mb(self.pid))

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def send(http: str, data: bytes) -> str:
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    c = thttp.InferenceServerClient(http, network_timeout=600, connection_timeout=600)
    try:
        return str(request(c, "classifier", data)["label"])
    except InferenceServerException as e:
        return f"error {e.status()}"
    finally:
        c.close()


def measure(channels: int, work: Path, photo: bytes) -> dict[str, Any]:
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    h = f"127.0.0.1:{ports[0]}"
    cmd = [sys.executable, "-m", "rn_deploy", "serve", str(model(work, channels)), "--host", "127.0.0.1",
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--json"]
    log = open(work / f"serve{channels}.log", "w")  # noqa: SIM115 - closed with the server below
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    out: dict[str, Any] = {"channels": channels}
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        if not ready:
            raise SystemExit(f"serve did not start: see {work / f'serve{channels}.log'}")
        small = png(np.full((28, 28, 3), 100, np.uint8))
        send(h, small)
        time.sleep(2)
        idle = out["idle_mb"] = round(tree_pss_mb(proc.pid), 1)

        def scenario(name: str, bodies: list[bytes], good_clients: int = 0) -> None:
            stop, good = threading.Event(), {"ok": 0, "failed": 0}

            def loop() -> None:
                while not stop.is_set():
                    good["ok" if send(h, small).startswith("c") else "failed"] += 1

            loops = [threading.Thread(target=loop) for _ in range(good_clients)]
            with Sampler(proc.pid) as s:
                for t in loops:
                    t.start()
                with ThreadPoolExecutor(len(bodies)) as pool:
                    answers = list(pool.map(lambda b: send(h, b), bodies))
                stop.set()
                for t in loops:
                    t.join()
            time.sleep(2)
            after = tree_pss_mb(proc.pid)
            out[name] = {"peak_mb": round(s.peak - idle, 1), "after_mb": round(after - idle, 1),
                         "answers": sorted(set(a if a.startswith("error") else "200" for a in answers)), **(
                             {"good_ok": good["ok"], "good_failed": good["failed"]} if good_clients else {})}
            print(f"{channels} ch {name}: {out[name]}", file=sys.stderr)

        scenario("one_12mp_rgb_png", [photo])
        scenario("four_at_once", [photo] * 4)
        scenario("four_beside_16_good_clients", [photo] * 4, good_clients=16)
        scenario("ten_60mb_bodies", [b"\x89PNG\r\n\x1a\n" + bytes(60_000_000)] * 10)
        scenario("ten_80mb_bodies", [b"\x89PNG\r\n\x1a\n" + bytes(80_000_000)] * 10)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 3], choices=[1, 3])
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    photo = photo_12mp()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                              "cpus": len(__import__("os").sched_getaffinity(0)), "photo_png_bytes": len(photo),
                              "command": " ".join(["python", "bench/serve_memory.py", *sys.argv[1:]]), "models": []}
    with tempfile.TemporaryDirectory(prefix="serve-memory.") as tmp:
        for ch in args.channels:
            result["models"].append(measure(ch, Path(tmp), photo))
    names = ["one_12mp_rgb_png", "four_at_once", "four_beside_16_good_clients", "ten_60mb_bodies", "ten_80mb_bodies"]
    print("| model | idle PSS | " + " | ".join(n.replace("_", " ") for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for m in result["models"]:
        print(f"| {m['channels']} ch | {m['idle_mb']:.0f} MB | "
              + " | ".join(f"+{m[n]['peak_mb']:.0f} / +{m[n]['after_mb']:.0f} MB" for n in names) + " |")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)


if __name__ == "__main__":
    main()
