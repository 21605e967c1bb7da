"""Training throughput: synthetic batches vs the real data path, same model/optimiser/AMP.

    python bench/train_throughput.py --out bench-train.json [--compile]

For each case (resnet18 at 128x128 bs 256, resnet50 at 224x224 bs 128) it times training steps
(forward, backward, AdamW step; bf16 autocast and channels_last on CUDA) on
  - synthetic: one random batch already on the device, reused every step;
  - real: the DeviceLoader path used by `rn-deploy train` (uint8 image cache on the device,
    random-resized-crop + flip + normalise per batch) over real Fashion-MNIST images
    replicated to 3 channels and resized once to a 160x160 (128 case) / 256x256 (224 case) cache.
Warm-up steps are excluded; timing is synchronised. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from rn_deploy.train.data import DeviceLoader

from rn_deploy.datasets.sources import Augment, ImageSet, load_fashion_mnist
from rn_deploy.models import create_model


def real_set(presize: int, n: int) -> ImageSet:
    fm = load_fashion_mnist(None, "train").subset(n)
    imgs = F.interpolate(fm.images.float(), size=(presize, presize), mode="bilinear", antialias=True)
    imgs = imgs.clamp(0, 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return ImageSet(imgs, fm.labels, fm.class_names, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], Augment(min_scale=0.5, flip=True))


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> None:
    """One AdamW training step, bf16 autocast on CUDA: the same step every measurement here times."""
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def new_model(arch: str, dev: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = create_model(arch, n_classes=10).to(dev).to(memory_format=torch.channels_last)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def run_case(arch: str, size: int, bs: int, presize: int, steps: int, warmup: int, compile_: bool, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model, opt = new_model(arch, dev)
    net = torch.compile(model) if compile_ else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(net, opt, x, y, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    x = torch.randn(bs, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=dev)
    for _ in range(warmup):
        step(x, y)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    synth = bs * steps / (time.perf_counter() - t)

    ds = real_set(presize, bs * (steps + warmup))
    dl = DeviceLoader(ds, bs, (size, size), dev, train=True, channels_last=True)
    it = iter(dl)
    for _ in range(warmup):
        step(*next(it))
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    sync()
    real = bs * steps / (time.perf_counter() - t)
    return {"arch": arch, "size": size, "batch": bs, "compile": compile_, "synthetic_img_s": round(synth, 1),
            "real_img_s": round(real, 1), "real_over_synthetic": round(real / synth, 4)}


def profile_real(arch: str, size: int, bs: int, presize: int, dev: torch.device) -> None:
    """Print the top CUDA ops of a few steps of the real data path (what costs the gap to synthetic)."""
    from torch.profiler import ProfilerActivity, profile

    model, opt = new_model(arch, dev)
    dl = DeviceLoader(real_set(presize, bs * 12), bs, (size, size), dev, train=True, channels_last=True)
    it = iter(dl)

    def step() -> None:
        train_step(model, opt, *next(it), dev)

    for _ in range(4):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(6):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


def data_only(size: int, bs: int, presize: int, dev: torch.device, n: int = 50) -> dict:
    """Time the loader alone (synchronised), with and without augmentation."""
    out = {}
    for name, aug in (("augment", Augment(min_scale=0.5, flip=True)), ("plain", Augment())):
        ds = real_set(presize, bs * (n + 5))
        ds.augment = aug
        it = iter(DeviceLoader(ds, bs, (size, size), dev, train=True, channels_last=True))
        for _ in range(5):
            next(it)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        torch.cuda.synchronize()
        out[f"{name}_ms_per_batch"] = round((time.perf_counter() - t) / n * 1e3, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-train.json")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--compile", action="store_true", help="also run each case with torch.compile")
    ap.add_argument("--small", action="store_true", help="CPU smoke size: resnet18 at 64x64, bs 16")
    ap.add_argument("--sync-check", action="store_true", help="warn on host-device syncs in the real path and exit")
    ap.add_argument("--data-only", action="store_true", help="time the data path alone and exit")
    ap.add_argument("--profile", action="store_true", help="profile the real path of the first case and exit")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.sync_check:
        # Warn on every host-device synchronisation inside a few real-path batches and steps.
        ds = real_set(160, 256 * 4)
        it = iter(DeviceLoader(ds, 256, (128, 128), dev, train=True, channels_last=True))
        model, opt = new_model("resnet18", dev)
        torch.cuda.set_sync_debug_mode("warn")
        for _ in range(3):
            train_step(model, opt, *next(it), dev)
        torch.cuda.set_sync_debug_mode(0)
        print("sync-check done", flush=True)
        return
    if args.data_only:
        print(json.dumps({"data_only_resnet18_128": data_only(128, 256, 160, dev)}), flush=True)
        return
    if args.profile:
        profile_real("resnet18", 128, 256, 160, dev)
        return
    cases = [("resnet18", 64, 16, 80)] if args.small else [("resnet18", 128, 256, 160), ("resnet50", 224, 128, 256)]
    rows = []
    for arch, size, bs, pre in cases:
        for comp in ([False, True] if args.compile else [False]):
            r = run_case(arch, size, bs, pre, args.steps, args.warmup, comp, dev)
            print(json.dumps(r), flush=True)
            rows.append(r)
    meta = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": rows}
    with open(args.out, "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
