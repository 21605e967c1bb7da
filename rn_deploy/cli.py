"""The ``rn-deploy`` command line: thin click commands over the library functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import RnDeployError


class _Group(click.Group):
    """Prints our errors as one line on stderr (no traceback) and exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RnDeployError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rn-deploy")
def main() -> None:
    """Train, export, build, validate and inspect ResNet image classifiers for production GPUs.

    The path of data: checkpoint (model.pt) -> ONNX -> TensorRT engine -> validation report.
    """


@main.command("models")
@click.option("--n-classes", default=1000, show_default=True, help="Outputs used for the parameter count.")
@click.option("--in-channels", default=None, type=int, help="Input channels (default: each model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of a table.")
def models_cmd(n_classes: int, in_channels: int | None, as_json: bool) -> None:
    """List registered architectures with their parameter counts."""
    from .models import count_parameters, create_model, get_model_spec, list_models

    rows: list[dict[str, Any]] = []
    for name in list_models():
        spec = get_model_spec(name)
        ch = in_channels or spec.default_in_channels
        n = count_parameters(create_model(name, n_classes=n_classes, in_channels=ch))
        rows.append({"name": name, "params": n, "in_channels": ch, "min_size": spec.min_size, "description": spec.description})
    if as_json:
        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"registered models (n_classes={n_classes})")
    for col in ("name", "params", "in_ch", "min H/W", "description"):
        table.add_column(col, justify="right" if col in ("params", "in_ch", "min H/W") else "left")
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", str(r["in_channels"]), str(r["min_size"]), r["description"])
    Console().print(table)


def _not_implemented(name: str) -> None:
    @main.command(name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        click.echo(f"rn-deploy {name}: not implemented yet", err=True)
        sys.exit(2)

    cmd.help = f"(not implemented yet) {name}"


def parse_hw(value: str) -> tuple[int, int]:
    """'224' -> (224, 224); '97x211' -> (97, 211)."""
    parts = value.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size; use H or HxW, e.g. 224 or 97x211") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise click.BadParameter(f"{value!r} is not a size; use H or HxW with positive numbers")
    return nums[0], nums[1]


class HWType(click.ParamType):
    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_hw(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


def stderr_log(msg: str) -> None:
    click.echo(msg, err=True)


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write [default: model.onnx (model.fp16.onnx with --fp16) beside the checkpoint].")
@click.option("--opset", type=int, default=None, help="ONNX opset [default: the exporter's].")
@click.option("--fp16", is_flag=True, help="FP16 weights/compute for strongly typed builders (TensorRT >= 11, TensorRT-RTX).")
@click.option("--fp16-io", is_flag=True, help="With --fp16: FP16 input/output too (default FP32 I/O).")
@click.option("--static", "static", type=HWType(), default=None, help="Fixed HxW instead of dynamic height/width.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check at other sizes.")
@click.option("--external-data/--inline-data", default=None, help="Weights in MODEL.onnx.data or inline [default: by size].")
@click.option("--json", "as_json", is_flag=True, help="Print the ExportResult as JSON on stdout.")
def export_cmd(checkpoint: Path, out: Path | None, opset: int | None, fp16: bool, fp16_io: bool,
               static: tuple[int, int] | None, no_verify: bool, external_data: bool | None, as_json: bool) -> None:
    """Export CHECKPOINT (model.pt) to ONNX with dynamic batch/height/width and verify it.

    Verification runs ONNX Runtime (CPU) against PyTorch FP32 at sizes other than the traced one
    (odd, non-square, the model's minimum, batch > 1) and fails if the relative L2 error exceeds
    1e-4 (FP32) or 1e-2 (FP16). Nothing is written when it fails.
    """
    from .export import ExportVerificationError, export_onnx, format_verification

    if fp16_io and not fp16:
        raise click.UsageError("--fp16-io needs --fp16")
    if out is None:
        out = checkpoint.with_name("model.fp16.onnx" if fp16 else "model.onnx")
    try:
        res = export_onnx(checkpoint, out, opset=opset, fp16=fp16, fp16_io=fp16_io, static_size=static,
                          verify=not no_verify, external_data=external_data, log=stderr_log)
    except ExportVerificationError as e:
        click.echo(format_verification(e.result.verification), err=True)
        raise
    if as_json:
        echo_json(res.to_dict())
        return
    if res.verification:
        click.echo(format_verification(res.verification))
    click.echo(f"wrote {res.onnx_path}{' + ' + res.data_path if res.data_path else ''} "
               f"({res.precision}, opset {res.opset}, {res.seconds:.1f}s)")


def _add_train() -> None:
    from train.cli import train_command

    main.add_command(train_command)


_add_train()

for _name in ("build", "validate", "inspect"):
    _not_implemented(_name)


if __name__ == "__main__":
    main()
