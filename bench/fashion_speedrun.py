"""Fashion-MNIST accuracy against wall time, for the training-speed targets.

    python bench/fashion_speedrun.py --out fashion.json --config NAME [--config NAME ...]

Each config runs `python -m rn_deploy.train ... --json` in a fresh process; "wall_s" is the whole process
(imports, data load, training, per-epoch evaluation and checkpoints), "fit_s" the training call.
Accuracy is on the full 10,000-image Fashion-MNIST test set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def r18(size: int, epochs: int, batch: int, lr: str, *extra: str) -> list[str]:
    return ["--arch", "resnet18", "--size", str(size), "--epochs", str(epochs), "--batch-size", str(batch), "--lr", lr, *extra]


LS = ("--label-smoothing", "0.1")
# name -> `python -m rn_deploy.train` options; the names are those quoted in docs/benchmarks.md
CONFIGS = {
    "r18-s28-e8": r18(28, 8, 256, "4e-3"),
    "r18-s32-e12-ls": r18(32, 12, 256, "4e-3", *LS),
    "r18-s48-e12-ls": r18(48, 12, 256, "4e-3", *LS),
    "r18-s48-e40-ls": r18(48, 40, 256, "4e-3", *LS),
    "r18-s40-e20-bs512": r18(40, 20, 512, "6e-3", *LS),
    "r18-s56-e16-bs512": r18(56, 16, 512, "6e-3", *LS),
    "r18-s56-e20-bs512": r18(56, 20, 512, "6e-3", *LS),
    "r18-s56-e60-bs512": r18(56, 60, 512, "6e-3", *LS),
    "r18-s64-e16-bs512": r18(64, 16, 512, "6e-3", *LS),
    "r18-s56-e24-bs512-mixup": r18(56, 24, 512, "6e-3", "--mixup", "0.2"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="fashion.json")
    ap.add_argument("--config", action="append", choices=list(CONFIGS), required=True)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (IDX files)")
    args = ap.parse_args()
    rows = []
    for name in args.config:
        cmd = [sys.executable, "-m", "rn_deploy.train", *CONFIGS[name], "--device", "cuda", "--out", f"/tmp/fashion-{name}", "--json", "--quiet"]
        if args.data:
            cmd += ["--data", args.data]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            rows.append({"config": name, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        res = json.loads(proc.stdout)
        row = {"config": name, "command": " ".join(cmd[1:]), "accuracy": res["accuracy"], "wall_s": round(wall, 1),
               "fit_s": round(res["seconds"], 1), "img_per_s": round(res["images_per_second"]), "device": res["device"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
