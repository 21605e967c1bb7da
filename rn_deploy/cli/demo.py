"""The demo command: the whole pipeline (train, export, build, validate) on real Fashion-MNIST in one call."""

from __future__ import annotations

from pathlib import Path

import click

from .group import echo_json, main, stderr_log
from .params import ARCH


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("exports/demo"), show_default=True,
              help="Folder for every artifact and the report.")
@click.option("--arch", type=ARCH, default="resnet18", show_default=True, help="Registered model to train (see `rn-deploy models`).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Training epochs.")
@click.option("--limit", type=click.IntRange(min=64), default=4000, show_default=True, help="Training/validation images.")
@click.option("--device", default="auto", show_default=True, help="Training device: cuda, cpu or auto.")
@click.option("--data", default=None, help="Fashion-MNIST folder [default: /usr/share/datasets/fashion-mnist].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_cmd(out: Path, arch: str, epochs: int, limit: int, device: str, data: str | None, as_json: bool) -> None:
    """The whole pipeline on real Fashion-MNIST: train, export, build, validate, into OUT.

    Builds with full TensorRT where it and a GPU exist, else TensorRT-RTX ahead of time for
    sm86/sm89/sm120 (it builds without a GPU), else skips the build and says why.
    """
    from ..demo import format_summary, run_demo

    summary = run_demo(out, arch=arch, epochs=epochs, limit=limit, device=device, data=data, log=stderr_log)
    if as_json:
        echo_json(summary)
    else:
        click.echo("\n".join(format_summary(summary)))
