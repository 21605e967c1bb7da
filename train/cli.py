"""``rn-deploy train`` / ``python -m train``: one click command over :func:`train.loop.fit`."""

from __future__ import annotations

import json
from typing import Any

import click

from .data import DATASETS


def data_options(f: Any) -> Any:
    """Options shared by train, lr-find and show-batch: what to train and on which data."""
    for opt in reversed([
        click.option("--arch", default="resnet18", show_default=True, help="Registered model (see `rn-deploy models`)."),
        click.option("--dataset", type=click.Choice([*DATASETS, "imagenette"]), default="fashion-mnist", show_default=True),
        click.option("--data", type=click.Path(file_okay=False), default=None,
                     help="Dataset folder [fashion-mnist default: /usr/share/datasets/fashion-mnist]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Per process."),
        click.option("--presize", type=click.IntRange(min=8), default=160, show_default=True, help="Decode size for image folders."),
        click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N training and N validation images."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--workers", type=int, default=None, help="Image decode workers [default: min(4, cores)]."),
    ]):
        f = opt(f)
    return f


@click.command("train")
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak one-cycle learning rate.")
@click.option("--size", default="28", show_default=True,
              help="Training image size (square), or progressive phases SIZE:EPOCHS,... e.g. 64:4,128:4,224:2 "
                   "(one one-cycle schedule spans all phases; --epochs is then their sum).")
@click.option("--out", default="exports/model", show_default=True, help="Output folder for model.pt.")
@click.option("--wd", "weight_decay", type=float, default=1e-2, show_default=True, help="AdamW weight decay.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Mixup alpha (0: off).")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--clip", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--resume", is_flag=True, help="Continue from OUT/model.pt.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(compile_: bool, as_json: bool, quiet: bool, **opts: Any) -> None:
    """Train a ResNet with a one-cycle schedule and write OUT/model.pt.

    Runs under torchrun for several GPUs (or CPU processes, gloo): the same options, per-process
    batch size. A checkpoint is written after every epoch; --resume continues one.
    """
    from .loop import TrainConfig, fit, parse_size_schedule

    opts["size"], schedule = parse_size_schedule(str(opts["size"]))
    cfg = TrainConfig(compile=compile_, schedule=schedule, **opts)
    res = fit(cfg, log=lambda s: click.echo(s, err=True), progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    else:
        click.echo(f"wrote {res.checkpoint}: accuracy {res.accuracy:.4f} after {res.epochs} epochs ({res.seconds:.1f}s)")


@click.command("lr-find")
@data_options
@click.option("--size", type=click.IntRange(min=8), default=28, show_default=True, help="Image size.")
@click.option("--start", type=float, default=1e-7, show_default=True, help="First learning rate.")
@click.option("--end", type=float, default=10.0, show_default=True, help="Last learning rate.")
@click.option("--iters", type=click.IntRange(min=5), default=100, show_default=True, help="Mini-batches.")
@click.option("--out", type=click.Path(file_okay=False), default="exports/lr_find", show_default=True, help="Folder for lr_find.png.")
@click.option("--json", "as_json", is_flag=True, help="Print LRs, losses and the suggestion as JSON.")
def lr_find_command(start: float, end: float, iters: int, out: str, as_json: bool, **opts: Any) -> None:
    """Learning-rate range test: loss against an exponentially growing LR, with a suggested LR.

    Stops when the smoothed loss exceeds 4x its minimum; suggests the LR of steepest descent.
    """
    from .loop import TrainConfig
    from .lr_find import run_lr_find

    res, png = run_lr_find(TrainConfig(**opts), start=start, end=end, iters=iters, out=out)
    if as_json:
        click.echo(json.dumps({**res.to_dict(), "plot": str(png)}, indent=2))
    else:
        click.echo(f"suggested lr {res.suggestion:.3g} (loss minimum at {res.min_loss_lr:.3g}; {len(res.lrs)} steps); plot: {png}")


@click.command("show-batch")
@data_options
@click.option("--size", type=click.IntRange(min=8), default=28, show_default=True, help="Image size after augmentation.")
@click.option("--n", type=click.IntRange(min=1, max=100), default=9, show_default=True, help="Images to show.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default="batch.png", show_default=True)
def show_batch_command(size: int, n: int, out: str, **opts: Any) -> None:
    """Save a grid of augmented training images with their labels (denormalised) as a PNG."""
    from .data import load_dataset
    from .show import show_batch

    ds, _ = load_dataset(opts["dataset"], opts["data"], presize=max(opts["presize"], size), workers=opts["workers"])
    rows, cols = show_batch(ds.subset(opts["limit"], opts["seed"]), out, n=n, size=size, seed=opts["seed"])
    click.echo(f"wrote {out} ({rows}x{cols} grid)")
