"""Speed of `rn-deploy eval`: the Fashion-MNIST test set through ONNX Runtime, end to end.

    python bench/eval_speed.py --threads 2 --out eval_speed.json

Runs rn_deploy.evaluate.predict_split (the code `rn-deploy eval` runs: slices of the uint8 split,
preprocess.eval_batch, OrtRunner, top-5 kept) on the 10,000 test images at 28 px through an FP32
resnet18 exported with rn_deploy.export. Weights are untrained (speed does not depend on them).
The timed figure includes preprocessing and the progress bar, not the export or the data load.
Target (issue 13): <= 60 s on 2 CPU cores. With --provider cuda, the ORT CUDA EP figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from rn_deploy.checkpoint import ModelConfig
from rn_deploy.datasets.sources import FASHION_CLASSES, load_split
from rn_deploy.evaluate import accuracy, predict_split
from rn_deploy.export import export_onnx
from rn_deploy.runners import OrtRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder [default: /usr/share/datasets/fashion-mnist]")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="images (default: all 10,000)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (and torch threads for preprocessing)")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--target-s", type=float, default=60.0)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(arch=args.arch, n_classes=10, in_channels=1, class_names=list(FASHION_CLASSES), mean=[0.2860],
                         std=[0.3530], image_size=[args.size, args.size])
    images = load_split("fashion-mnist", args.data, "test", limit=args.limit)
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx((config.build().eval(), config), onnx_path, verify=False)
        with OrtRunner(onnx_path, provider=args.provider, threads=args.threads) as runner:
            runner.infer(runner.prepare(torch.zeros(args.batch, 1, args.size, args.size)))  # session warm-up
            pred = predict_split(runner, images, config, batch=args.batch)
    acc = accuracy(pred, config.class_names)
    res = {"images": len(pred), "seconds": round(pred.seconds, 2), "images_per_s": round(pred.images_per_s, 1),
           "target_s": args.target_s, "met": pred.seconds <= args.target_s, "arch": args.arch, "size": args.size,
           "batch": args.batch, "threads": args.threads, "provider": args.provider, "top1_untrained": acc["top1"],
           "loadavg_1min_before": round(load1, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
           "cpus": os.cpu_count(), "host": platform.node(), "cpu": platform.processor() or platform.machine(),
           "gpu": torch.cuda.get_device_name() if args.provider == "cuda" else None, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
