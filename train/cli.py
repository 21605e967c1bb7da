"""``rn-deploy train`` / ``python -m rn_deploy.train``: one click command over :func:`rn_deploy.train.loop.fit`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from rn_deploy.datasets import ALIASES, DATASETS
from rn_deploy.errors import RnDeployError
from rn_deploy.strictjson import print_json


def data_options(f: Any) -> Any:
    """Options shared by train, lr-find and show-batch: which data, decoded how."""
    for opt in reversed([
        click.option("--dataset", type=click.Choice([*DATASETS, *ALIASES]), default="fashion-mnist", show_default=True,
                     help="Fashion-MNIST IDX files, MNIST PNG folders, or an ImageFolder tree (train/ + val/); "
                          "mnist-png and imagenette are older names of mnist and imagefolder."),
        click.option("--data", type=click.Path(file_okay=False), default=None,
                     help="Dataset folder [fashion-mnist default: /usr/share/datasets/fashion-mnist]."),
        click.option("--presize", type=click.IntRange(min=8), default=160, show_default=True, help="Decode size for image folders."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N training and N validation images."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for the subset, the weights, the order and the augmentation."),
        click.option("--workers", type=int, default=None, help="Image decode workers [default: min(4, cores)]."),
    ]):
        f = opt(f)
    return f


def model_options(f: Any) -> Any:
    """Options of the commands that run a model (train, lr-find), not of show-batch."""
    for opt in reversed([
        click.option("--arch", default="resnet18", show_default=True, help="Registered model (see `rn-deploy models`)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Per process."),
        click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto."),
    ]):
        f = opt(f)
    return f


class SizeScheduleType(click.ParamType):
    """``--size 28`` or ``--size 64:4,128:4,224:2``: a malformed value is a usage error (exit 2)."""

    name = "SIZE|SIZE:EPOCHS,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .config import parse_size_schedule

        if not isinstance(value, str):
            return value
        try:
            size, phases = parse_size_schedule(value)
        except RnDeployError as e:
            self.fail(str(e), param, ctx)
        if any(s < 8 or e < 1 for s, e in phases or [(size, 1)]):
            self.fail(f"{value!r}: sizes must be >= 8 pixels and phase epochs >= 1", param, ctx)
        return size, phases


@click.command("train")
@model_options
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Epochs to train (with --size phases: their sum; give one or the other).")
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak one-cycle learning rate.")
@click.option("--size", type=SizeScheduleType(), default="28", show_default=True,
              help="Training image size (square), or progressive phases SIZE:EPOCHS,... e.g. 64:4,128:4,224:2 "
                   "(one one-cycle schedule spans all phases; --epochs is then their sum).")
@click.option("--multi-scale", type=str, default=None, metavar="LO:HI",
              help="Size-robust training: resize each training batch to a random square side in LO..HI px "
                   "(e.g. 20:56); the size range is then measured and recorded (docs/sizes.md).")
@click.option("--range-sizes", type=str, default=None, metavar="S,S,...",
              help="Measure top-1 at these sizes after the last epoch and record the size range in the checkpoint "
                   "[default with --multi-scale: 0.75, 1, 1.5, 2 x --size, plus LO and HI].")
@click.option("--range-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Top-1 points below the best size that still count as inside the range.")
@click.option("--out", type=click.Path(file_okay=False), default="exports/model", show_default=True, help="Output folder for model.pt.")
@click.option("--wd", "weight_decay", type=float, default=1e-2, show_default=True, help="AdamW weight decay.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Cross-entropy label smoothing (0: off; 0.1 is common).")
@click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Mixup alpha (0: off).")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="channels_last memory format on CUDA.")
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
    from .loop import TrainConfig, TrainingInterrupted, fit, plural

    opts["size"], schedule = opts["size"]
    ctx = click.get_current_context()
    if schedule and ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE \
            and opts["epochs"] != sum(e for _, e in schedule):
        raise click.BadParameter(f"{opts['epochs']} conflicts with --size phases totalling {sum(e for _, e in schedule)} epochs; "
                                 "give one or the other", param_hint="--epochs")
    opts["multi_scale"] = _int_list(opts["multi_scale"], ":", "--multi-scale", 2)
    opts["range_sizes"] = _int_list(opts["range_sizes"], ",", "--range-sizes")
    cfg = TrainConfig(compile=compile_, schedule=schedule, **opts)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun one process speaks; the others only raise errors
    try:
        res = fit(cfg, log=lambda s: click.echo(s, err=True), progress=not quiet and not as_json)
    except TrainingInterrupted as e:
        if rank0:
            click.echo(f"interrupted: {e.checkpoint} holds {plural(e.epochs_done, 'epoch')} of {e.epochs}; run the same command "
                       "with --resume to continue from it" if e.checkpoint else
                       f"interrupted before the first epoch finished; no checkpoint was written ({cfg.out})", err=True)
        # Every checkpoint is complete (written to a temporary file, then renamed): nothing is left for the interpreter's
        # shutdown to do, and torch's teardown after a Ctrl-C sometimes ended the process by SIGINT (-2) instead of 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if not rank0:
        return
    if as_json:
        print_json(res.to_dict())
    elif res.nothing_to_do:
        click.echo(f"{res.checkpoint}: already trained {res.epochs}/{res.epochs} epochs; nothing to do")
    else:
        click.echo(f"wrote {res.checkpoint}: accuracy {res.accuracy:.4f} after {plural(res.epochs, 'epoch')} ({res.seconds:.1f}s)")


def _int_list(text: str | None, sep: str, flag: str, n: int | None = None) -> Any:
    """``"20:56"`` -> ``(20, 56)``; a malformed value is a usage error (exit 2)."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(sep))
    except ValueError:
        vals = ()
    if not vals or (n is not None and len(vals) != n) or min(vals) < 1:
        example = "20:56" if sep == ":" else "20,28,37,56"
        raise click.BadParameter(f"{text!r}: expected positive integers like {example}", param_hint=flag)
    return vals


@click.command("lr-find")
@model_options
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
    from .config import TrainConfig
    from .lr_find import run_lr_find

    res, png = run_lr_find(TrainConfig(**opts), start=start, end=end, iters=iters, out=out)
    if as_json:
        print_json({**res.to_dict(), "plot": str(png)})
    else:
        click.echo(f"suggested lr {res.suggestion:.3g} (loss minimum at {res.min_loss_lr:.3g}; {len(res.lrs)} steps); plot: {png}")


@click.command("show-batch")
@data_options
@click.option("--size", type=click.IntRange(min=8), default=28, show_default=True, help="Image size after augmentation.")
@click.option("--n", type=click.IntRange(min=1, max=100), default=9, show_default=True, help="Images to show.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default="batch.png", show_default=True, help="PNG file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the file written and the grid as JSON.")
def show_batch_command(size: int, n: int, out: str, as_json: bool, **opts: Any) -> None:
    """Save a grid of augmented training images with their labels (denormalised) as a PNG."""
    from rn_deploy.datasets.sources import load_dataset

    from .show import show_batch

    ds, _ = load_dataset(opts["dataset"], opts["data"], presize=max(opts["presize"], size), workers=opts["workers"])
    rows, cols = show_batch(ds.subset(opts["limit"], opts["seed"]), out, n=n, size=size, seed=opts["seed"])
    if as_json:
        print_json({"png": out, "rows": rows, "cols": cols, "size": size})
    else:
        click.echo(f"wrote {out} ({rows}x{cols} grid)")
