"""``rn-deploy train`` / ``python -m train``: one click command over :func:`train.loop.fit`."""

from __future__ import annotations

import json
from typing import Any

import click

from .data import DATASETS


@click.command("train")
@click.option("--arch", default="resnet18", show_default=True, help="Registered model (see `rn-deploy models`).")
@click.option("--dataset", type=click.Choice([*DATASETS, "imagenette"]), default="fashion-mnist", show_default=True)
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Dataset folder [fashion-mnist default: /usr/share/datasets/fashion-mnist].")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Per process.")
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak one-cycle learning rate.")
@click.option("--size", type=click.IntRange(min=8), default=28, show_default=True, help="Training image size (square).")
@click.option("--presize", type=click.IntRange(min=8), default=160, show_default=True, help="Decode size for image folders.")
@click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto.")
@click.option("--out", default="exports/model", show_default=True, help="Output folder for model.pt.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N training and N validation images.")
@click.option("--wd", "weight_decay", type=float, default=1e-2, show_default=True, help="AdamW weight decay.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Mixup alpha (0: off).")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--clip", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/model.pt.")
@click.option("--workers", type=int, default=None, help="Image decode workers [default: min(4, cores)].")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(compile_: bool, as_json: bool, quiet: bool, **opts: Any) -> None:
    """Train a ResNet with a one-cycle schedule and write OUT/model.pt.

    Runs under torchrun for several GPUs (or CPU processes, gloo): the same options, per-process
    batch size. A checkpoint is written after every epoch; --resume continues one.
    """
    from .loop import TrainConfig, fit

    cfg = TrainConfig(compile=compile_, **opts)
    res = fit(cfg, log=lambda s: click.echo(s, err=True), progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    else:
        click.echo(f"wrote {res.checkpoint}: accuracy {res.accuracy:.4f} after {res.epochs} epochs ({res.seconds:.1f}s)")
