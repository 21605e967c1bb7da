"""The ``rn-deploy`` command line: thin click commands over the library functions."""

from __future__ import annotations

import json
import sys
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


for _name in ("train", "export", "build", "validate", "inspect"):
    _not_implemented(_name)


if __name__ == "__main__":
    main()
