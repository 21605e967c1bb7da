"""What serve's body guard costs (issue 32 item 5 in issue 33's terms): server CPU per request, the guard's own, batches.

    python bench/guard_cost.py MODEL.onnx --runs 2            # alternated: --no-body-guard, --body-guard, ...

Per run: one `rn-deploy serve` (127.0.0.1, free ports, started as bench/serve_bench.py starts it), a 2 s warm-up at
concurrency 16, then `rn-deploy loadtest`'s closed loop (HTTP, Fashion-MNIST test images as PNG) at concurrency 1 and 16 for ``--seconds`` each. Prints req/s,
the supervisor's CPU per request (the guard runs there; ~0 without it), the whole server tree's CPU per request
(supervisor + tritonserver + stub, /proc) and Triton's average batch. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve_bench import start  # noqa: E402

from rn_deploy.loadtest import dataset_images, run_level  # noqa: E402
from rn_deploy.serve.procfs import cpu_seconds, process_tree  # noqa: E402


def one(onnx: Path, flag: str, seconds: float, images: list[bytes], log: Path) -> None:
    proc, url = start(onnx, log, [flag])
    try:
        run_level(url, "classifier", images, 16, 2.0, False)
        for c in (1, 16):
            pids = [proc.pid, *process_tree(proc.pid)]
            sup0, tree0 = cpu_seconds([proc.pid]), cpu_seconds(pids)
            lv = run_level(url, "classifier", images, c, seconds, False)
            sup1, tree1 = cpu_seconds([proc.pid]), cpu_seconds(pids)
            print(f"{flag} c{c}: {lv.requests_per_s:.0f} req/s, supervisor {1e3 * (sup1 - sup0) / lv.requests:.3f} ms CPU/req, "
                  f"tree {1e3 * (tree1 - tree0) / lv.requests:.3f} ms/req, batch {lv.split.avg_batch if lv.split else None}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--runs", type=int, default=2, help="Alternated pairs (without, then with the guard).")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    images = dataset_images("fashion-mnist", 256)
    with tempfile.TemporaryDirectory(prefix="guard-cost.") as tmp:
        for k in range(args.runs):
            for flag in ("--no-body-guard", "--body-guard"):
                one(args.model, flag, args.seconds, images, Path(tmp) / f"serve-{k}{flag}.log")


if __name__ == "__main__":
    main()
