"""The ``rn-deploy`` command line: thin click commands over the library functions.

Long on purpose: one place lists every command and its options (click declarations are most of it); each
command body is a few lines over a library function. Training commands live in rn_deploy.train.cli.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

from .datasets import ALIASES, DATASETS
from .errors import RnDeployError
from .version import __version__

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
    "loadtest": ("out", "folder", None),
}


def _guard(cmd: click.Command) -> click.Command:
    """Wrap ``cmd``'s body once: refuse an unwritable output before the work, and with ``--json`` keep stdout
    for the one document (:func:`rn_deploy.strictjson.json_stdout`)."""
    body = cmd.callback
    if body is None or getattr(body, "_guarded", False):
        return cmd

    def run(*args: Any, **kwargs: Any) -> Any:
        from ._io import check_writable
        from .strictjson import json_stdout

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
    """Prints our errors as one line on stderr (no traceback) and exits 1; Ctrl-C exits 130 saying what was kept;
    loads training commands lazily."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RnDeployError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            from ._io import WRITTEN

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
        from click.utils import make_default_short_help

        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in LAZY_COMMANDS and name not in self.commands:
                rows.append((name, make_default_short_help(LAZY_COMMANDS[name][1], limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout: NaN and infinities become null (see :mod:`rn_deploy.strictjson`)."""
    from .strictjson import print_json

    print_json(obj)


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
    """List registered architectures with their parameter counts and the smallest H/W each runs at.

    The minimum is measured as export measures the one it declares in the ONNX (rn_deploy.min_size).
    """
    from .export import torch_min_size
    from .models import count_parameters, create_model, get_model_spec, list_models

    rows: list[dict[str, Any]] = []
    for name in list_models():
        spec = get_model_spec(name)
        ch = in_channels or spec.default_in_channels
        model = create_model(name, n_classes=n_classes, in_channels=ch).eval()
        rows.append({"name": name, "params": count_parameters(model), "in_channels": ch, "min_size": torch_min_size(model, ch, cap=224),
                     "description": spec.description})
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


class LibraryValueType(click.ParamType):
    """An option value parsed by a library function: its RnDeployError becomes a usage error (exit 2)."""

    def __init__(self, name: str, parse: Any):
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except RnDeployError as e:
            self.fail(str(e), param, ctx)


def _shape(text: str) -> Any:
    from .builder import parse_shape

    return parse_shape(text)


def _profile(text: str) -> Any:
    from .builder import Profile

    return Profile.parse(text)


def _batch_triple(text: str) -> tuple[int, int, int]:
    try:
        b = tuple(int(v) for v in text.split(","))
    except ValueError:
        b = ()
    if len(b) != 3 or min(b) < 1:
        raise RnDeployError(f"{text!r}: use MIN,OPT,MAX batch sizes, e.g. 1,8,32")
    return b  # type: ignore[return-value]


def _hw_list(text: str) -> list[tuple[int, int]]:
    try:
        return [parse_hw(s) for s in text.split(",") if s.strip()]
    except click.BadParameter as e:
        raise RnDeployError(e.message) from None


def _backend_list(text: str) -> list[str]:
    from .validate import BACKEND_NAMES

    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKEND_NAMES]
    if unknown or not names:
        raise RnDeployError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKEND_NAMES)}")
    return names


SHAPE = LibraryValueType("NxCxHxW", _shape)
PROFILE = LibraryValueType("MIN:OPT:MAX", _profile)
BATCH_TRIPLE = LibraryValueType("MIN,OPT,MAX", _batch_triple)
HW_LIST = LibraryValueType("H|HxW,...", _hw_list)
BACKEND_LIST = LibraryValueType("BACKEND,...", _backend_list)
# rn_deploy.datasets' names, then its older aliases (that package's names are torch-free)
DATASET_NAMES = [*DATASETS, *ALIASES]


def stderr_log(msg: str) -> None:
    click.echo(msg, err=True)


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write [default: model.onnx (model.fp16.onnx with --fp16) beside the checkpoint].")
@click.option("--opset", type=int, default=None,
              help="ONNX opset, 18 or newer [default: 20, IR 9: ONNX Runtime >= 1.17; 18 gives IR 8: ONNX Runtime >= 1.14].")
@click.option("--fp16", is_flag=True, help="FP16 weights/compute for strongly typed builders (TensorRT >= 11, TensorRT-RTX).")
@click.option("--fp16-io", is_flag=True, help="With --fp16: FP16 input/output too (default FP32 I/O).")
@click.option("--fp16-tool", type=click.Choice(["converter", "autocast"]), default=None,
              help="With --fp16: onnxconverter-common (all ops FP16) or NVIDIA ModelOpt AutoCast (keeps range-sensitive ops "
                   "FP32) [default: converter, see docs/benchmarks.md].")
@click.option("--static", "static", type=HWType(), default=None, help="Fixed HxW instead of dynamic height/width.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check at other sizes.")
@click.option("--external-data/--inline-data", default=None, help="Weights in MODEL.onnx.data or inline [default: by size].")
@click.option("--json", "as_json", is_flag=True, help="Print the ExportResult as JSON on stdout.")
def export_cmd(checkpoint: Path, out: Path | None, opset: int | None, fp16: bool, fp16_io: bool, fp16_tool: str | None,
               static: tuple[int, int] | None, no_verify: bool, external_data: bool | None, as_json: bool) -> None:
    """Export CHECKPOINT (model.pt) to ONNX with dynamic batch/height/width and verify it.

    Verification runs ONNX Runtime (CPU) against PyTorch FP32 at sizes other than the traced one
    (odd, non-square, the model's minimum, batch > 1) and fails if the relative L2 error exceeds
    1e-4 (FP32) or 1e-2 (FP16). Nothing is written when it fails.
    """
    from .export import DEFAULT_FP16_TOOL, ExportVerificationError, export_onnx, format_verification

    if fp16_io and not fp16:
        raise click.UsageError("--fp16-io needs --fp16")
    if fp16_tool and not fp16:
        raise click.UsageError("--fp16-tool needs --fp16")
    if out is None:
        out = checkpoint.with_name("model.fp16.onnx" if fp16 else "model.onnx")
    try:
        res = export_onnx(checkpoint, out, opset=opset, fp16=fp16, fp16_io=fp16_io, static_size=static,
                          fp16_tool=fp16_tool or DEFAULT_FP16_TOOL,
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



def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RnDeployError(f"{text!r}: use comma-separated numbers, e.g. 0.485,0.456,0.406") from None


FLOATS = LibraryValueType("A,B,C", _floats)


@main.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write: exports/NAME/model.pt for weights, exports/NAME/model.onnx for an ONNX.")
@click.option("--classes", default=None, help="Class names: a file with one per line, or a comma list [default: 0..N-1].")
@click.option("--mean", type=FLOATS, default=None, help="Per-channel mean of pixels in [0, 1] [default: ImageNet's].")
@click.option("--std", type=FLOATS, default=None, help="Per-channel std [default: ImageNet's].")
@click.option("--size", type=HWType(), default=None, help="Training image size H or HxW [default: an ONNX's fixed size, else 224].")
@click.option("--meta", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights: JSON with class_names/mean/std/image_size (or a timm config.json); flags win over it.")
@click.option("--input-name", default=None, help="ONNX: the image input [default: the graph's only input].")
@click.option("--output-name", default=None, help="ONNX: the logits output [default: the graph's only output].")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
              help="ONNX: the input's layout [default: detected from the axis with 1 or 3 channels].")
@click.option("--no-normalize", is_flag=True, help="ONNX: the graph normalises itself; feed it pixels / 255.")
@click.option("--json", "as_json", is_flag=True, help="Print what was imported as JSON.")
def import_cmd(source: Path, out: Path, classes: str | None, mean: list[float] | None, std: list[float] | None,
               size: tuple[int, int] | None, meta: Path | None, input_name: str | None, output_name: str | None,
               layout: str | None, no_normalize: bool, as_json: bool) -> None:
    """Bring in SOURCE, a ResNet trained elsewhere or a foreign ONNX, so every other command takes it.

    Weights: a state_dict (torch.save(model.state_dict()), .safetensors) or a fastai learn.save() file of a fastai
    xresnet18..152, a timm resnet18d..152d or resnet18..152, or a torchvision resnet18..152, recognised from its keys
    and written as an rn-deploy checkpoint (then export it). It is read without running code (a learn.export()
    pickle is refused).

    ONNX: one image input and one (batch, classes) output, named or detected; the copy written carries the class
    names, mean/std, size and layout, so build, validate, eval, quantize, serve and export-triton need no flags.
    """
    from .filekind import expect

    names = None
    if classes:
        from .importers import read_class_names

        names = read_class_names(classes)
    if expect(source, "onnx", "weights").kind == "onnx" or source.suffix == ".onnx":
        from .foreign import import_onnx

        if meta is not None:
            raise click.UsageError("--meta is for weights; give an ONNX's class names, mean/std and size with flags")
        ores = import_onnx(source, out, input_name=input_name, output_name=output_name, layout=layout, class_names=names,
                           mean=mean, std=std, normalize=not no_normalize, image_size=size)
        if as_json:
            echo_json(ores.to_dict())
            return
        cfg = ores.config
        click.echo(f"wrote {ores.onnx_path}: {ores.input_name!r} ({ores.layout}) -> {ores.output_name!r}, {cfg['n_classes']} classes, "
                   f"{cfg['in_channels']} channel(s), {'dynamic' if ores.dynamic_hw else 'fixed'} H/W, "
                   f"size {cfg['image_size'][0]}x{cfg['image_size'][1]}")
        return
    if input_name or output_name or layout or no_normalize:
        raise click.UsageError("--input-name/--output-name/--layout/--no-normalize are for an ONNX SOURCE")
    from .importers import import_weights

    res = import_weights(source, out, class_names=names, mean=mean, std=std, image_size=size, meta=meta)
    if as_json:
        echo_json(res.to_dict())
        return
    cfg = res.config
    click.echo(f"wrote {res.checkpoint}: {res.library} {res.source_arch} -> {res.arch}, {cfg['n_classes']} classes, "
               f"{cfg['in_channels']} channel(s), size {cfg['image_size'][0]}x{cfg['image_size'][1]}")

def _parse_profiles(min_: Any, opt: Any, max_: Any, profile: tuple[Any, ...], sizes_from: Path | None,
                    bands: int, batch: tuple[int, int, int], channels: int) -> list[Any]:
    from .builder import Profile, profiles_from_sizes, read_sizes, sizes_coverage

    # Order is the engine's profile order: --min/--opt/--max is profile 0, then each --profile, then --sizes-from.
    out = []
    given = [v is not None for v in (min_, opt, max_)]
    if any(given):
        if not all(given):
            raise click.UsageError("--min, --opt and --max go together")
        out.append(Profile(min_, opt, max_))
    out += list(profile)
    if sizes_from is not None:
        seen = read_sizes(sizes_from)
        derived = profiles_from_sizes(seen, channels=channels, batch=batch, bands=bands)
        stderr_log(f"{sizes_from}: {sizes_coverage(derived, seen)}")
        out += derived
    return out


@main.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine file [default: model.<backend>.engine beside the ONNX].")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
              help="Full TensorRT (builds on the GPU it targets) or TensorRT-RTX (ahead of time with --target).")
@click.option("--fp16/--fp32", "fp16", default=True, show_default=True, help="Engine precision.")
@click.option("--min", "min_", type=SHAPE, default=None, help="Min input shape NxCxHxW (with --opt/--max).")
@click.option("--opt", type=SHAPE, default=None, help="Opt input shape NxCxHxW.")
@click.option("--max", "max_", type=SHAPE, default=None, help="Max input shape NxCxHxW.")
@click.option("--profile", type=PROFILE, multiple=True,
              help="Extra profile MIN:OPT:MAX (repeatable); profiles follow --min/--opt/--max (profile 0) in the order given.")
@click.option("--sizes-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of H x W seen in production (JSON list or HxW lines): derive profiles from it.")
@click.option("--bands", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --sizes-from: one profile per size band, nested so every size between the smallest and largest is covered.")
@click.option("--batch", type=BATCH_TRIPLE, default="1,8,32", show_default=True, help="With --sizes-from: MIN,OPT,MAX batch.")
@click.option("--target", default=None, help="TensorRT-RTX compute capabilities, e.g. sm86,sm89,sm120.")
@click.option("--workspace", type=int, default=None, help="Workspace limit in MiB.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT timing cache file.")
@click.option("--dla-core", type=int, default=None, help="Full TensorRT on Jetson: run on this DLA core (FP16/INT8).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the GPU.")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere-plus", "same-cc"]), default="none", show_default=True,
              help="Full TensorRT: run on any GPU of compute capability >= 8.0 (ampere-plus) or of the build GPU's (same-cc).")
@click.option("--version-compatible", is_flag=True, help="Full TensorRT: also load on later TensorRT releases of the same major.")
@click.option("--exclude-lean-runtime", is_flag=True,
              help="With --version-compatible: smaller plan; a later TensorRT then needs this release's libnvinfer_lean "
                   "(RN_DEPLOY_TRT_LEAN_RUNTIME).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def build_cmd(onnx_path: Path, out: Path | None, backend: str, fp16: bool, min_: Any, opt: Any, max_: Any,
              profile: tuple[Any, ...], sizes_from: Path | None, bands: int, batch: tuple[int, int, int], target: str | None,
              workspace: int | None, opt_level: int | None, timing_cache: Path | None, dla_core: int | None, gpu_fallback: bool,
              hardware_compat: str, version_compatible: bool, exclude_lean_runtime: bool, as_json: bool) -> None:
    """Compile MODEL.onnx into a TensorRT (or TensorRT-RTX) engine with optimisation profiles.

    Writes the engine and ENGINE.json, its manifest (backend/version, precision, targets, profiles,
    ONNX sha256, tensors). TensorRT-RTX builds on a machine without a GPU when --target is given.
    A Q/DQ ONNX from `rn-deploy quantize` builds as INT8/FP8 (explicit quantization, strongly typed).
    """
    from .builder import build_engine, onnx_info

    channels = (onnx_info(onnx_path).channels or 3) if onnx_path.exists() else 3
    profiles = _parse_profiles(min_, opt, max_, profile, sizes_from, bands, batch, channels)
    if gpu_fallback and dla_core is None:
        raise click.UsageError("--gpu-fallback goes with --dla-core")
    if out is None:
        quant = next((q for q in ("int8", "fp8") if onnx_path.name.endswith(f".{q}.onnx")), None)
        out = onnx_path.with_name(f"model.{quant + '.' if quant else ''}{backend}.engine")
    targets = [t for t in target.split(",") if t.strip()] if target else None
    m = build_engine(onnx_path, out, backend=backend, precision="fp16" if fp16 else "fp32", profiles=profiles,
                     workspace=workspace * (1 << 20) if workspace else None, timing_cache=timing_cache, targets=targets,
                     builder_opt_level=opt_level, dla_core=dla_core, gpu_fallback=gpu_fallback, hardware_compat=hardware_compat,
                     version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime, log=stderr_log)
    if as_json:
        echo_json(m.to_dict())


@main.command("quantize")
@click.argument("source", metavar="CKPT|MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Q/DQ ONNX to write [default: model.<precision>.onnx beside SOURCE].")
@click.option("--calib", type=click.Choice(DATASET_NAMES), default=None,
              help="Calibration dataset (its TRAINING split); the gate evaluates on its held-out split [default: the dataset "
                   "the checkpoint/ONNX recorded; another one is refused].")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Dataset folder [default: the recorded one; fashion-mnist: the system copy].")
@click.option("--calib-size", type=click.IntRange(min=1), default=512, show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy", show_default=True,
              help="Activation range calibration.")
@click.option("--precision", type=click.Choice(["int8", "fp8"]), default="int8", show_default=True,
              help="INT8 (any TensorRT GPU, Jetson DLA) or FP8 (sm89 and newer).")
@click.option("--exclude", multiple=True, help="Keep nodes in higher precision: first, last or node names (comma list, repeatable).")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Largest top-1 drop (points) the gate accepts; 0 also means no image FP32 got right may be lost.")
@click.option("--ladder/--no-ladder", default=True, show_default=True,
              help="On a failed gate, try another method, more calibration images, then first/last layers kept.")
@click.option("--force", is_flag=True, help="Write the best rung even when it fails the gate.")
@click.option("--quantizer", type=click.Choice(["modelopt", "ort"]), default="modelopt", show_default=True,
              help="NVIDIA ModelOpt ONNX PTQ, or ONNX Runtime quantize_static with TensorRT options.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Gate on at most N held-out images [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration/evaluation subsets.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def quantize_cmd(source: Path, out: Path | None, calib: str | None, data: str | None, calib_size: int, method: str, precision: str,
                 exclude: tuple[str, ...], max_drop: float, ladder: bool, force: bool, quantizer: str, eval_limit: int | None,
                 seed: int, as_json: bool) -> None:
    """Post-training quantization of CKPT|MODEL.onnx to an explicit Q/DQ ONNX (TensorRT form), behind an accuracy gate.

    Calibrates on the training split, then runs the FP32 and the Q/DQ ONNX (ONNX Runtime CPU) on the
    held-out split. If top-1 drops by more than --max-drop points it walks a ladder (another method,
    more calibration images, first/last layers kept) and writes the first rung that passes, with
    OUT.quant.json/.md. Nothing is written (exit 1) when no rung passes, unless --force.
    """
    from .quantize import GateFailed, QuantizeOptions, quantize

    if out is None:
        out = source.with_name(f"model.{precision}.onnx")
    opts = QuantizeOptions(calib=calib, data=data, calib_size=calib_size, method=method, precision=precision,
                           exclude=tuple(e for item in exclude for e in item.split(",") if e.strip()), max_drop=max_drop,
                           force=force, ladder=ladder, quantizer=quantizer, eval_limit=eval_limit, seed=seed)
    try:
        rep = quantize(source, out, opts, log=stderr_log)
    except GateFailed as e:
        click.echo(e.report.markdown(), err=True)
        if as_json:
            echo_json(e.report.to_dict())
        raise
    if as_json:
        echo_json(rep.to_dict())
        return
    r = rep.rungs[rep.chosen or 0]
    click.echo(f"wrote {out}: top-1 {r.top1 * 100:.2f}% vs FP32 {rep.reference['top1'] * 100:.2f}% "
               f"(drop {r.drop_pts:+.2f} pt, rung {(rep.chosen or 0) + 1}: {r.recipe.label()})"
               + ("" if r.passed else " -- FAILS the gate, written because of --force"))


@main.command("inspect")
@click.argument("engine", metavar="ENGINE|CHECKPOINT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print manifest and layers as JSON.")
def inspect_cmd(engine: Path, as_json: bool) -> None:
    """Print an engine's manifest and, where it can be deserialised here, its layers and precisions.

    Given a checkpoint (model.pt): its config and the evaluation training recorded in it.
    """
    from .filekind import expect
    from .runtime import inspect_engine

    kind = expect(engine, "engine", "checkpoint").kind  # by content: a misnamed file still gets the right words
    if kind == "checkpoint" or (kind == "unknown" and engine.suffix in (".pt", ".pth", ".ckpt")):
        from .evaluate import checkpoint_info

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
        from .sizes import size_range

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


def _split_ints(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use comma-separated integers", param_hint=what) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: use positive integers", param_hint=what)
    return out


@main.command("validate")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="model.pt: the FP32 reference [without it: --onnx on ONNX Runtime CPU is the reference].")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ONNX model to check.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT engine to check.")
@click.option("--backends", type=BACKEND_LIST, default=None,
              help="Comma list of torch,torch-fp16,ort-cpu,ort-cuda,ort-cuda-graph,trt,trt-graph [default: all that apply].")
@click.option("--sizes", type=HW_LIST, default=None,
              help="Comma list of H or HxW [default: profiles' min/opt/max or the training size, plus 97x211].")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of real images as inputs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: the checkpoint's folder].")
@click.option("--tol", multiple=True, help="Tolerance override, e.g. rel_l2=1e-2 or fp16.cosine=0.998 (repeatable).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls per cell before timing.")
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True, help="Timed calls per cell.")
@click.option("--allow-skip", is_flag=True,
              help="Accept a report in which an artifact named by --onnx/--engine could not run here (listed as not judged).")
@click.option("--allow-other-source", is_flag=True,
              help="Compare an --onnx/--engine whose recorded checkpoint digest is not this checkpoint's (refused by default).")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def validate_cmd(checkpoint: Path | None, onnx_path: Path | None, engine: Path | None, backends: list[str] | None,
                 sizes: list[tuple[int, int]] | None,
                 batches: str, images: Path | None, out: Path | None, tol: tuple[str, ...], warmup: int, iters: int,
                 allow_skip: bool, allow_other_source: bool, as_json: bool) -> None:
    """Check parity (vs PyTorch FP32) and latency of torch / ONNX Runtime / TensorRT across sizes and batches.

    Exit code 0 only if at least one backend independent of the reference (another framework,
    device or precision) ran and was compared, every compared cell is within tolerance, and every
    artifact named by --onnx/--engine was judged (or --allow-skip). The reference's own twin
    (torch-cpu-fp32) is timed, not compared. Backends that cannot run here are listed with the reason.
    Without --checkpoint (a foreign ONNX), --onnx on ONNX Runtime CPU is the FP32 reference for --engine.
    """
    from .errors import ValidationFailed
    from .filekind import expect
    from .validate import parse_tolerance_overrides, run_validation

    if checkpoint is None and onnx_path is None:
        raise click.UsageError("pass --checkpoint (the FP32 reference), or --onnx alone for a foreign ONNX")

    for path, kind, option in ((checkpoint, "checkpoint", "--checkpoint"), (onnx_path, "onnx", "--onnx"), (engine, "engine", "--engine")):
        if path is not None:
            expect(path, kind, option=option)

    try:
        tolerances = parse_tolerance_overrides(tol)
    except RnDeployError as e:
        raise click.BadParameter(str(e), param_hint="--tol") from None
    rep, files = run_validation(
        checkpoint, onnx_path=onnx_path, engine_path=engine, backends=backends, sizes=sizes,
        batches=_split_ints(batches, "--batch"), images=images, out_dir=out or (checkpoint or onnx_path or Path(".")).parent,
        tolerances=tolerances, warmup=warmup, iters=iters, allow_skip=allow_skip, log=stderr_log,
        allow_other_source=allow_other_source,
    )
    if as_json:
        echo_json(rep.to_dict())
    else:
        for name, b in rep.backends.items():
            click.echo(f"{name:>22}: " + ("ran" if b["ran"] else f"skipped ({b['reason']})"))
        click.echo(f"report: {', '.join(files.values())}")
    if not rep.passed:
        raise ValidationFailed(rep.failure() or "validation failed")


@main.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="model.pt: the FP32 reference [without it: the first --onnx, on ONNX Runtime CPU].")
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX model (repeatable).")
@click.option("--engine", "engines", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="Engine (repeatable).")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), default=None,
              help="Dataset [default: the one training recorded in the checkpoint; another one is refused].")
@click.option("--data", default=None, help="Dataset folder [default: the recorded one; Fashion-MNIST: /usr/share/datasets/fashion-mnist].")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default=None,
              help="Split [default: test for Fashion-MNIST/MNIST, val for image folders].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the subset `train --limit N` evaluated on.")
@click.option("--seed", type=int, default=None, help="Seed of that subset [default: the recorded training seed, else 0].")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True, help="Images per inference call.")
@click.option("--backends", default=None, help="Comma list of ort-cpu,ort-cuda,trt,torch-fp16 [default: ort-cuda or ort-cpu, trt].")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Allowed top-1 drop in points vs the reference [default: 0.3 fp16, 1.0 int8].")
@click.option("--min-agreement", multiple=True,
              help="Least fraction of images on which an artifact picks the reference's class: FRACTION for every precision "
                   "or PREC=FRACTION (repeatable) [default: fp32 0.999, fp16 0.99, int8 0.95, fp8 0.95].")
@click.option("--allow-skip", is_flag=True, help="An artifact that cannot run here (no GPU) is not a failure.")
@click.option("--allow-other-source", is_flag=True,
              help="Judge artifacts whose recorded checkpoint digest is not this checkpoint's (refused by default).")
@click.option("--allow-unreproduced", is_flag=True,
              help="Do not fail when the reference misses the accuracy training recorded on the same images.")
@click.option("--sizes", "size_list", default=None, metavar="S,S,...",
              help="Also measure every artifact at these image sizes (short side, px), e.g. 20,28,37,56 (docs/sizes.md).")
@click.option("--scales", default=None, metavar="F,F,...", help="Sizes relative to the training size, e.g. 0.75,1,1.5,2.")
@click.option("--size-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="With --sizes: top-1 points an artifact may fall below the reference's training-size top-1 at a size.")
@click.option("--range-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="With --sizes: the size range is where the reference stays within this many points of its best size.")
@click.option("--record-range", is_flag=True, help="With --sizes: write the measured size range into the checkpoint.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report folder [default: the checkpoint's].")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json on stdout.")
def eval_cmd(checkpoint: Path | None, onnx_paths: tuple[Path, ...], engines: tuple[Path, ...], dataset: str | None, data: str | None,
             split: str | None, limit: int | None, seed: int | None, batch: int, backends: str | None, max_drop: float | None,
             min_agreement: tuple[str, ...], allow_skip: bool, allow_other_source: bool, allow_unreproduced: bool,
             size_list: str | None, scales: str | None, size_drop: float, range_drop: float, record_range: bool, out: Path | None,
             as_json: bool) -> None:
    """Top-1/top-5 accuracy on a real dataset split for the checkpoint and each ONNX / engine.

    Writes eval.json, eval.md, confusion.png (reference) and delta-*.png (per-class change per
    artifact); with --sizes/--scales also the accuracy at each size (sizes.png) and the measured
    size range. Exit 1 when an artifact drops more than allowed below the reference (at any size) or
    agrees with it on too few images, or when the reference does not reproduce the accuracy training
    recorded. Artifacts made from another checkpoint (their recorded digest) are refused unless
    --allow-other-source.
    """
    from .evaluate import EvalFailed, format_table, parse_min_agreement, run_eval

    try:
        agreement = parse_min_agreement(min_agreement)
    except RnDeployError as e:
        raise click.BadParameter(str(e), param_hint="--min-agreement") from None
    want_sizes = _size_options(size_list, scales, record_range)
    if want_sizes and checkpoint is None:
        raise click.UsageError("--sizes/--scales measure against the checkpoint: pass --checkpoint")
    bk = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    rep, files = run_eval(checkpoint, onnx=onnx_paths, engines=engines, dataset=dataset, data=data, split=split, limit=limit,
                          seed=seed, batch=batch, backends=bk, max_drop=max_drop, allow_skip=allow_skip, out_dir=out, log=stderr_log,
                          min_agreement=agreement, allow_other_source=allow_other_source, allow_unreproduced=allow_unreproduced)
    if want_sizes:
        from .evaluate_sizes import run_sizes
        from .sizes import sizes_from

        rep, files = run_sizes(rep, files, sizes_from(rep["image_size"], *want_sizes), onnx=onnx_paths, engines=engines, backends=bk,
                               max_drop=max_drop, size_drop=size_drop, range_drop=range_drop, record=record_range, batch=batch,
                               allow_skip=allow_skip, log=stderr_log)
    if as_json:
        echo_json(rep)
    else:
        click.echo(format_table(rep))
        click.echo(f"report: {', '.join(files.values())}")
    if rep["failures"]:
        raise EvalFailed(rep["failures"][0])
    bad = [a for a in rep["artifacts"] if not a["passed"]]
    if bad:
        raise EvalFailed(f"{len(bad)} artifact(s) failed: {bad[0]['name']}: {'; '.join(bad[0]['failures'])}")
    by_size = [a for a in rep.get("sizes", {}).get("artifacts", []) if not a["passed"]]
    if by_size:
        raise EvalFailed(f"{len(by_size)} artifact(s) failed at some size: " + "; ".join(
            f"{a['name']} at {', '.join(f'{s} px' for s in a['failing_sizes'])}" for a in by_size))


def _size_options(size_list: str | None, scales: str | None, record: bool) -> tuple[list[int], list[float]] | None:
    """``--sizes``/``--scales`` parsed; malformed values are usage errors (exit 2)."""
    if size_list is None and scales is None:
        if record:
            raise click.BadParameter("needs --sizes or --scales to measure the range", param_hint="--record-range")
        return None
    parsed: dict[str, list[float]] = {}
    for text, flag, conv in ((size_list, "--sizes", int), (scales, "--scales", float)):
        parsed[flag] = []
        for part in text.split(",") if text is not None else []:
            try:
                v = conv(part.strip())
            except ValueError:
                v = 0
            if not v > 0:
                raise click.BadParameter(f"{text!r}: expected positive numbers separated by commas, e.g. "
                                         f"{'20,28,37,56' if flag == '--sizes' else '0.75,1,1.5,2'}", param_hint=flag)
            parsed[flag].append(v)
    return [int(s) for s in parsed["--sizes"]], parsed["--scales"]


@main.command("summary")
@click.argument("arch")
@click.option("--size", type=HWType(), default="224", show_default=True, help="Input H or HxW.")
@click.option("--in-channels", type=click.IntRange(min=1), default=None, help="Input channels [default: the model's].")
@click.option("--n-classes", type=click.IntRange(min=1), default=1000, show_default=True, help="Outputs of the final layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows and totals as JSON.")
def summary_cmd(arch: str, size: tuple[int, int], in_channels: int | None, n_classes: int, as_json: bool) -> None:
    """Layer table of ARCH (like fastai's learn.summary()): type, output shape, params, trainable, mult-adds."""
    from .models import create_model, get_model_spec
    from .summary import summarize

    ch = in_channels or get_model_spec(arch).default_in_channels
    s = summarize(create_model(arch, n_classes=n_classes, in_channels=ch), (1, ch, *size))
    if as_json:
        echo_json(s.to_dict())
    else:
        click.echo(s.table())


@main.command("doctor")
@click.argument("artifacts", metavar="[ENGINE|ONNX]...", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the environment and the artifact checks as strict JSON.")
def doctor_cmd(artifacts: tuple[Path, ...], as_json: bool) -> None:
    """This machine (OS, Python, driver/CUDA, GPUs, torch, ONNX Runtime, TensorRT, Jetson power mode), and
    for each ENGINE or ONNX given: will it load here, and if not why and the command that fixes it.

    Exit code 1 if any artifact given cannot load here.
    """
    from .doctor import doctor, format_doctor

    report = doctor(artifacts)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_doctor(report))
    if not report["ok"]:
        raise SystemExit(1)


@main.command("export-triton")
@click.argument("model", metavar="ENGINE|ONNX", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), required=True, help="Triton model repository folder.")
@click.option("--name", required=True, help="Model name (the folder inside the repository).")
@click.option("--max-batch", type=int, default=None,
              help="max_batch_size [default: an engine's largest profile batch (the max over its profiles); 32 for ONNX].")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Instance kind for ONNX models (KIND_GPU or KIND_CPU) [default: gpu]; plans run on the GPU.")
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@click.option("--json", "as_json", is_flag=True, help="Print rn-deploy.json (preprocessing, size policy, classes) as JSON.")
def export_triton_cmd(model: Path, repo: Path, name: str, max_batch: int | None, kind: str | None, force: bool, as_json: bool) -> None:
    """Write a Triton Inference Server model folder (config.pbtxt, labels.txt, rn-deploy.json, 1/model.plan or 1/model.onnx).

    The preprocessing a client applies (mean/std, 1/255 scale, channel order, size policy) and the
    class names go in config.pbtxt's parameters and in rn-deploy.json (see docs/formats.md).
    """
    from .triton import export_triton

    dest = export_triton(model, repo, name, max_batch=max_batch, force=force, kind=kind)
    if as_json:
        echo_json({"folder": str(dest), **json.loads((dest / "rn-deploy.json").read_text())})
        return
    click.echo(f"wrote {dest} ({', '.join(sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file()))})")
    front = json.loads((dest / "rn-deploy.json").read_text()).get("image_model")
    if front:
        click.echo(f"wrote {dest.parent / front} (the image contract of `rn-deploy serve` over it: Python backend, needs rn-deploy)")


@main.command("serve")
@click.argument("model", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default="classifier", show_default=True, help="Model name clients address.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--http-port", type=int, default=8000, show_default=True, help="KServe-v2 HTTP port.")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="KServe-v2 gRPC port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics at /metrics.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Dynamic batching: largest batch.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Dynamic batching: longest wait for a batch to fill.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (parallel batches).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=12_000_000, show_default=True,
              help="Largest image (W x H; a request's images together) accepted, checked from the header before decoding.")
@click.option("--max-aspect", type=click.FloatRange(min=1), default=32.0, show_default=True,
              help="Largest long/short side ratio accepted (the centre crop of a wider image keeps a sliver of it).")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON object on stdout once the server is ready.")
def serve_cmd(model: Path, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int,
              max_queue_delay_us: int, instances: int, max_pixels: int, max_aspect: float, as_json: bool) -> None:
    """Serve MODEL (.onnx or .engine) on Triton Inference Server (bundled tritonserver, Python backend): HTTP/gRPC, dynamic batching, metrics.

    Input `image` (encoded PNG/JPEG bytes) or `pixels` (uint8 HxWxC); outputs label, index, score,
    probs (docs/formats.md). A bad request gets its own HTTP 400 / gRPC INVALID_ARGUMENT; the others
    batched with it are answered. The statistics API is open (perf_analyzer). Stops on
    SIGTERM/Ctrl-C after answering the requests in flight.
    """
    import os
    import sys

    from .serve import ServeOptions, serve
    from .strictjson import print_json

    serve(ServeOptions(model, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances, max_pixels=max_pixels,
                       max_aspect=max_aspect),
          log=stderr_log, on_ready=(lambda info: print_json(info, indent=None)) if as_json else None)
    # Drained, children stopped, temporary repository removed: exit now. The interpreter's own shutdown (torch's, loaded
    # to check the model) took 5-16 s on a loaded machine, past the 10 s a SIGTERM drain is allowed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command("classify")
@click.argument("url")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grpc", is_flag=True, help="URL is the gRPC port (default: HTTP).")
@click.option("--model", default=None, help="Model name [default: classifier, serve's default].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (with all class probabilities).")
def classify_cmd(url: str, images: tuple[Path, ...], grpc: bool, model: str | None, as_json: bool) -> None:
    """Classify IMAGES with a server started by `rn-deploy serve` at URL (host:port); exit 1 if any image failed."""
    from .client import classify

    results = classify(url, list(images), grpc=grpc, model=model)
    if as_json:
        echo_json(results)
    else:
        for r in results:
            if "error" in r:
                click.echo(f"{r['image']}: error: {r['error']}", err=True)
            else:
                click.echo(f"{r['image']}: {r['label']} {r['score']:.4f}")
    failed = sum("error" in r for r in results)
    if failed:
        raise RnDeployError(f"{failed} of {len(results)} image(s) failed")


@main.command("loadtest")
@click.argument("url")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of images to send.")
@click.option("--dataset", type=click.Choice(["fashion-mnist"]), default=None, help="Send a dataset's test images instead.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="Images to cycle through.")
@click.option("--concurrency", default="1,4,16,64", show_default=True, help="Comma list of concurrent clients.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds per level.")
@click.option("--grpc", is_flag=True, help="URL is the gRPC port (default: HTTP).")
@click.option("--model", default=None, help="Model name [default: classifier, serve's default].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write loadtest.json, loadtest.md, loadtest.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def loadtest_cmd(url: str, images: Path | None, dataset: str | None, limit: int, concurrency: str, duration: float, grpc: bool,
                 model: str | None, out: Path | None, as_json: bool) -> None:
    """Closed-loop load test of a server at URL: requests/s, p50/p90/p99 latency and errors per concurrency."""
    from .client import dataset_images, folder_images, loadtest, write_report

    if (images is None) == (dataset is None):
        raise click.UsageError("give one of --images DIR or --dataset fashion-mnist")
    data = folder_images(images, limit) if images else dataset_images(str(dataset), limit)
    rep = loadtest(url, data, _split_ints(concurrency, "--concurrency"), duration, grpc=grpc, model=model,
                   image_source=str(images or dataset), log=None if as_json else click.echo)
    if out is not None:
        files = write_report(rep, out)
        if not as_json:
            click.echo(f"report: {', '.join(files.values())}")
    if as_json:
        echo_json(rep.to_dict())


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("exports/demo"), show_default=True,
              help="Folder for every artifact and the report.")
@click.option("--arch", default="resnet18", show_default=True, help="Registered model to train (see `rn-deploy models`).")
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
    from .demo import format_summary, run_demo

    summary = run_demo(out, arch=arch, epochs=epochs, limit=limit, device=device, data=data, log=stderr_log)
    if as_json:
        echo_json(summary)
    else:
        click.echo("\n".join(format_summary(summary)))


if __name__ == "__main__":
    main()
