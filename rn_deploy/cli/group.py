"""The ``rn-deploy`` click group ``main``: lazy training commands, output checks, --json stdout, errors and Ctrl-C.

``main`` is the group every command module registers on; :func:`echo_json` and :func:`stderr_log` are how commands print.
Training commands live in rn_deploy.train.cli and are loaded only when one of them is run or asked for its --help.
"""

from __future__ import annotations

import functools
from typing import Any

import click

from ..errors import RnDeployError
from ..version import __version__

# Training commands live in rn_deploy.train (which imports torch): loaded only when one of them is run or asked
# for its --help, so `rn-deploy --help` and the other commands start without torch. name -> (attribute, short help).
LAZY_COMMANDS = {
    "train": ("train_command", "Train a ResNet with a one-cycle schedule and write OUT/model.pt."),
    "lr-find": ("lr_find_command", "Learning-rate range test: loss against an exponentially growing LR, with a suggested LR."),
    "show-batch": ("show_batch_command", "Save a grid of augmented training images with their labels (denormalised) as a PNG."),
}


# Where each command writes: its output parameter, whether that names a "file" or a "folder", and the input
# parameter beside which it writes when the output is not given. Checked before any work (see _guard).
OUTPUTS = {
    "export": ("out", "file", "checkpoint"), "build": ("out", "file", "onnx_path"), "quantize": ("out", "file", "source"),
    "validate": ("out", "folder", "checkpoint"), "eval": ("out", "folder", "checkpoint"), "train": ("out", "folder", None),
    "lr-find": ("out", "folder", None), "show-batch": ("out", "file", None), "demo": ("out", "folder", None),
    "loadtest": ("out", "folder", None), "optimize": ("out", "folder", None),
}


def _guard(cmd: click.Command) -> click.Command:
    """Wrap ``cmd``'s body once: refuse an unwritable output before the work, and with ``--json`` keep stdout
    for the one document (:func:`rn_deploy.strictjson.json_stdout`)."""
    body = cmd.callback
    if body is None or getattr(body, "_guarded", False):
        return cmd

    def run(*args: Any, **kwargs: Any) -> Any:
        from .._io import check_writable
        from ..strictjson import json_stdout

        name, kind, beside = OUTPUTS.get(cmd.name or "", (None, "", None))
        given = kwargs.get(name) if name else None
        if given is not None:
            check_writable(given, folder=kind == "folder", option=_option_name(cmd, name))
        elif beside and kwargs.get(beside) is not None:
            check_writable(kwargs[beside], option=_option_name(cmd, name))  # its folder
        if not kwargs.get("as_json"):
            return body(*args, **kwargs)
        with json_stdout():
            return body(*args, **kwargs)

    run._guarded = True  # type: ignore[attr-defined]
    cmd.callback = functools.update_wrapper(run, body)
    return cmd


def _option_name(cmd: click.Command, param: str | None) -> str:
    opts = next((p.opts for p in cmd.params if p.name == param), [])
    return max(opts, key=len, default="--out")


class _Group(click.Group):
    """Prints our errors as one line on stderr (no traceback) and exits 1, usage errors as one line and exits 2;
    Ctrl-C exits 130 saying what was kept; loads training commands lazily."""

    def invoke(self, ctx: click.Context) -> Any:
        import signal

        if getattr(signal.getsignal(signal.SIGINT), "rn_deploy_start", False):  # rn_deploy/__init__'s start-up handler
            signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt, caught below
        try:
            return super().invoke(ctx)
        except RnDeployError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except click.UsageError as e:  # a bad option value: one line too (click's own print is 4), exit 2
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            from .._io import WRITTEN

            kept = f"kept {len(WRITTEN)} complete file(s) written before it: {', '.join(WRITTEN)}" if WRITTEN else "nothing was written"
            click.echo(f"\ninterrupted: {kept}; no partial file is left", err=True)
            ctx.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            self.add_command(getattr(importlib.import_module("rn_deploy.train.cli"), LAZY_COMMANDS[cmd_name][0]))
        cmd = super().get_command(ctx, cmd_name)
        return _guard(cmd) if cmd is not None else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in LAZY_COMMANDS and name not in self.commands:
                # click's own shortening, through public API (click 8.5 made make_default_short_help private)
                rows.append((name, click.Command(name, help=LAZY_COMMANDS[name][1]).get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout: NaN and infinities become null (see :mod:`rn_deploy.strictjson`)."""
    from ..strictjson import print_json

    print_json(obj)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rn-deploy")
def main() -> None:
    """Train, export, build, validate and inspect ResNet image classifiers for production GPUs.

    The path of data: checkpoint (model.pt) -> ONNX -> TensorRT engine -> validation report.
    """


def stderr_log(msg: str) -> None:
    click.echo(msg, err=True)
