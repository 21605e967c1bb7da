"""Commands that describe without judging: models (the registry), summary (an architecture's layers), inspect (an artifact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .group import echo_json, main
from .params import ARCH, HWType


@main.command("models")
@click.option("--n-classes", type=click.IntRange(min=1), default=1000, show_default=True, help="Outputs used for the parameter count.")
@click.option("--in-channels", type=click.IntRange(min=1), default=None, help="Input channels (default: each model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of a table.")
def models_cmd(n_classes: int, in_channels: int | None, as_json: bool) -> None:
    """List registered architectures with their parameter counts and the smallest H/W each runs at.

    The minimum is the smallest H = W at which PyTorch runs the net (as export measures the one it declares in
    the ONNX, rn_deploy.min_size). Both come from a table computed once (rn_deploy.modeltable): no model is built.
    """
    from ..modeltable import MODELS

    rows: list[dict[str, Any]] = []
    for name, facts in MODELS.items():
        ch = in_channels or facts.in_channels
        rows.append({"name": name, "params": facts.parameters(n_classes, ch), "in_channels": ch, "min_size": facts.min_size,
                     "description": facts.description})
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


@main.command("summary")
@click.argument("arch", type=ARCH)
@click.option("--size", type=HWType(), default="224", show_default=True, help="Input H or HxW.")
@click.option("--in-channels", type=click.IntRange(min=1), default=None, help="Input channels [default: the model's].")
@click.option("--n-classes", type=click.IntRange(min=1), default=1000, show_default=True, help="Outputs of the final layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows and totals as JSON.")
def summary_cmd(arch: str, size: tuple[int, int], in_channels: int | None, n_classes: int, as_json: bool) -> None:
    """Layer table of ARCH (like fastai's learn.summary()): type, output shape, params, trainable, mult-adds."""
    from ..models import create_model, get_model_spec
    from ..summary import summarize

    ch = in_channels or get_model_spec(arch).default_in_channels
    s = summarize(create_model(arch, n_classes=n_classes, in_channels=ch), (1, ch, *size))
    if as_json:
        echo_json(s.to_dict())
    else:
        click.echo(s.table())


@main.command("inspect")
@click.argument("engine", metavar="ENGINE|CHECKPOINT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print manifest and layers as JSON.")
def inspect_cmd(engine: Path, as_json: bool) -> None:
    """Print an engine's manifest and, where it can be deserialised here, its layers and precisions.

    Given a checkpoint (model.pt): its config and the evaluation training recorded in it.
    """
    from ..filekind import expect
    from ..runtime import inspect_engine

    kind = expect(engine, "engine", "checkpoint").kind  # by content: a misnamed file still gets the right words
    if kind == "checkpoint" or (kind == "unknown" and engine.suffix in (".pt", ".pth", ".ckpt")):
        from ..evaluate import checkpoint_info

        ckpt_info = checkpoint_info(engine)
        if as_json:
            echo_json(ckpt_info)
        else:
            for key, value in ckpt_info.items():
                if not isinstance(value, dict):  # the raw record is for --json
                    click.echo(f"{key:>16}: {value}")
        return
    info = inspect_engine(engine)
    if as_json:
        echo_json(info)
        return
    m = info["manifest"]
    for key in ("backend", "library_version", "precision", "strongly_typed", "targets", "build_gpu", "onnx_path", "onnx_sha256",
                "engine_size", "built_at", "build_seconds"):
        click.echo(f"{key:>16}: {show_value(m[key])}")
    for i, p in enumerate(m["profiles"]):
        for name, s in p.items():
            click.echo(f"{'profile ' + str(i):>16}: {name} min {show_shape(s['min'])} opt {show_shape(s['opt'])} max {show_shape(s['max'])}")
    for t in m["inputs"] + m["outputs"]:
        click.echo(f"{'tensor':>16}: {t['name']} {t['dtype']} {show_shape(t['shape'])}")
    if m.get("config"):
        from ..sizes import size_range

        click.echo(f"{'size range':>16}: {size_range(m['config']).describe()}")
    for n in m["notes"]:
        click.echo(f"{'note':>16}: {n}")
    if info["layers"] is None:
        click.echo(f"{'layers':>16}: not shown ({info['layers_skipped']})")
    else:
        for layer in info["layers"]:
            click.echo(f"  {layer if isinstance(layer, str) else json.dumps(layer)[:200]}")


def show_shape(shape: list[int]) -> str:
    """[-1, 1, -1, -1] -> '?x1x?x?' (a dynamic axis is '?')."""
    return "x".join("?" if d < 0 else str(d) for d in shape)


def show_value(v: Any) -> str:
    """A manifest value for people: lists joined, dicts as key=value, None as 'none', floats rounded."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(show_value(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={show_value(x)}" for k, x in v.items()) or "none"
    return str(v)
