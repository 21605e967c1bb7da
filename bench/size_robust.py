"""Plain vs size-robust training (issue 23): top-1 at 20/28/37/56 px on Fashion-MNIST, and the goal check.

    python bench/size_robust.py --arch resnet18 --epochs 5 --device cuda --out size_robust.json    # the full figure (GPU)
    python bench/size_robust.py --arch mnist_resnet --epochs 1 --limit 500 --device cpu            # a tiny smoke run

Trains the same recipe twice (same seed, epochs, batch, LR): plain at 28 px, and with
``--multi-scale`` (every batch resized to a random side in LO..HI, as a deployer resizes). After the
last epoch each run measures top-1 on the held-out images resized to each size (train's
``range_sizes``: the resize ``rn-deploy eval --sizes`` uses) and records its size range. Goal: the
robust recipe within 1.0 pt of its own 28 px top-1 from 28 to 56 px, within 2.0 pt at 20 px, and its
28 px top-1 no more than 0.5 pt below the plain recipe's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from rn_deploy.train import TrainConfig, fit

from rn_deploy.checkpoint import load_checkpoint

SIZES = [20, 28, 37, 56]


def run(args: argparse.Namespace, multi_scale: tuple[int, int] | None, out: Path) -> dict:
    cfg = TrainConfig(arch=args.arch, dataset="fashion-mnist", data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, size=28, device=args.device, out=str(out), limit=args.limit, seed=args.seed,
                      multi_scale=multi_scale, range_sizes=SIZES)
    t0 = time.perf_counter()
    res = fit(cfg, progress=False)
    rec = load_checkpoint(res.checkpoint).train["sizes"]
    return {"multi_scale": list(multi_scale) if multi_scale else None, "seconds": time.perf_counter() - t0,
            "top1": dict(zip(map(str, rec["sizes"]), rec["top1"], strict=True)), "range": rec["range"], "count": rec["count"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="training and held-out images (default: all)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None)
    ap.add_argument("--multi-scale", default="20:56")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.multi_scale.split(":"))
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args, None, Path(tmp) / "plain")
        robust = run(args, (lo, hi), Path(tmp) / "robust")
    r, p = robust["top1"], plain["top1"]
    goal = {"28_to_56_within_1pt": all(100 * (r["28"] - r[s]) <= 1.0 for s in ("37", "56")),
            "20_within_2pt": 100 * (r["28"] - r["20"]) <= 2.0, "28_not_below_plain_by_0.5pt": 100 * (p["28"] - r["28"]) <= 0.5}
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__,
              "args": vars(args), "sizes": SIZES, "plain": plain, "robust": robust, "goal": goal, "goal_met": all(goal.values())}
    print("size   " + "  ".join(f"{s:>6}" for s in SIZES))
    for name, row in (("plain", p), ("robust", r)):
        print(f"{name:<6} " + "  ".join(f"{100 * row[str(s)]:6.2f}" for s in SIZES))
    print(json.dumps(goal))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
