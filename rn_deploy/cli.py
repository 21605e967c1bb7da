"""The ``rn-deploy`` command line: thin click commands over the library functions."""

from __future__ import annotations

import json
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


def _add_train() -> None:
    from train.cli import lr_find_command, show_batch_command, train_command

    for cmd in (train_command, lr_find_command, show_batch_command):
        main.add_command(cmd)


_add_train()

def _parse_profiles(min_: str | None, opt: str | None, max_: str | None, profile: tuple[str, ...], sizes_from: Path | None,
                    bands: int, batch: str, channels: int) -> list[Any]:
    from .build import Profile, parse_shape, profiles_from_sizes, read_sizes

    out = [Profile.parse(p) for p in profile]
    given = [v is not None for v in (min_, opt, max_)]
    if any(given):
        if not all(given):
            raise click.UsageError("--min, --opt and --max go together")
        out.append(Profile(parse_shape(min_ or ""), parse_shape(opt or ""), parse_shape(max_ or "")))
    if sizes_from is not None:
        try:
            b = tuple(int(v) for v in batch.split(","))
        except ValueError:
            raise click.BadParameter(f"{batch!r}: use MIN,OPT,MAX batch sizes, e.g. 1,8,32", param_hint="--batch") from None
        if len(b) != 3:
            raise click.BadParameter(f"{batch!r}: use MIN,OPT,MAX batch sizes, e.g. 1,8,32", param_hint="--batch")
        out += profiles_from_sizes(read_sizes(sizes_from), channels=channels, batch=b, bands=bands)  # type: ignore[arg-type]
    return out


@main.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine file [default: model.<backend>.engine beside the ONNX].")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True)
@click.option("--fp16/--fp32", "fp16", default=True, show_default=True, help="Engine precision.")
@click.option("--min", "min_", default=None, help="Min input shape NxCxHxW (with --opt/--max).")
@click.option("--opt", default=None, help="Opt input shape NxCxHxW.")
@click.option("--max", "max_", default=None, help="Max input shape NxCxHxW.")
@click.option("--profile", multiple=True, help="Extra profile MIN:OPT:MAX (repeatable).")
@click.option("--sizes-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of H x W seen in production (JSON list or HxW lines): derive profiles from it.")
@click.option("--bands", type=click.IntRange(min=1), default=1, show_default=True, help="With --sizes-from: profiles by size band.")
@click.option("--batch", default="1,8,32", show_default=True, help="With --sizes-from: MIN,OPT,MAX batch.")
@click.option("--target", default=None, help="TensorRT-RTX compute capabilities, e.g. sm86,sm89,sm120.")
@click.option("--workspace", type=int, default=None, help="Workspace limit in MiB.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT timing cache file.")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere-plus", "same-cc"]), default="none", show_default=True,
              help="Full TensorRT: run on any GPU of compute capability >= 8.0 (ampere-plus) or of the build GPU's (same-cc).")
@click.option("--version-compatible", is_flag=True, help="Full TensorRT: also load on later TensorRT releases of the same major.")
@click.option("--exclude-lean-runtime", is_flag=True,
              help="With --version-compatible: smaller plan; a later TensorRT then needs this release's libnvinfer_lean "
                   "(RN_DEPLOY_TRT_LEAN_RUNTIME).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def build_cmd(onnx_path: Path, out: Path | None, backend: str, fp16: bool, min_: str | None, opt: str | None, max_: str | None,
              profile: tuple[str, ...], sizes_from: Path | None, bands: int, batch: str, target: str | None, workspace: int | None,
              opt_level: int | None, timing_cache: Path | None, hardware_compat: str, version_compatible: bool,
              exclude_lean_runtime: bool, as_json: bool) -> None:
    """Compile MODEL.onnx into a TensorRT (or TensorRT-RTX) engine with optimisation profiles.

    Writes the engine and ENGINE.json, its manifest (backend/version, precision, targets, profiles,
    ONNX sha256, tensors). TensorRT-RTX builds on a machine without a GPU when --target is given.
    """
    from .build import build_engine, onnx_info

    cfg = onnx_info(onnx_path)[1] if onnx_path.exists() else None
    channels = int(cfg["in_channels"]) if cfg else 3
    profiles = _parse_profiles(min_, opt, max_, profile, sizes_from, bands, batch, channels)
    if out is None:
        out = onnx_path.with_name(f"model.{backend}.engine")
    targets = [t for t in target.split(",") if t.strip()] if target else None
    m = build_engine(onnx_path, out, backend=backend, precision="fp16" if fp16 else "fp32", profiles=profiles,
                     workspace=workspace * (1 << 20) if workspace else None, timing_cache=timing_cache, targets=targets,
                     builder_opt_level=opt_level, hardware_compat=hardware_compat, version_compatible=version_compatible,
                     exclude_lean_runtime=exclude_lean_runtime, log=stderr_log)
    if as_json:
        echo_json(m.to_dict())


@main.command("inspect")
@click.argument("engine", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print manifest and layers as JSON.")
def inspect_cmd(engine: Path, as_json: bool) -> None:
    """Print an engine's manifest and, where it can be deserialised here, its layers and precisions."""
    from .build import inspect_engine

    info = inspect_engine(engine)
    if as_json:
        echo_json(info)
        return
    m = info["manifest"]
    for key in ("backend", "library_version", "precision", "strongly_typed", "targets", "build_gpu", "onnx_path", "onnx_sha256",
                "engine_size", "built_at", "build_seconds"):
        click.echo(f"{key:>16}: {m[key]}")
    for i, p in enumerate(m["profiles"]):
        for name, s in p.items():
            click.echo(f"{'profile ' + str(i):>16}: {name} min {s['min']} opt {s['opt']} max {s['max']}")
    for t in m["inputs"] + m["outputs"]:
        click.echo(f"{'tensor':>16}: {t['name']} {t['dtype']} {t['shape']}")
    for n in m["notes"]:
        click.echo(f"{'note':>16}: {n}")
    if info["layers"] is None:
        click.echo(f"{'layers':>16}: not shown ({info['layers_skipped']})")
    else:
        for layer in info["layers"]:
            click.echo(f"  {layer if isinstance(layer, str) else json.dumps(layer)[:200]}")


def _split_ints(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use comma-separated integers", param_hint=what) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: use positive integers", param_hint=what)
    return out


@main.command("validate")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True, help="model.pt: the FP32 reference.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ONNX model to check.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT engine to check.")
@click.option("--backends", default=None,
              help="Comma list of torch,torch-fp16,ort-cpu,ort-cuda,ort-cuda-graph,trt,trt-graph [default: all that apply].")
@click.option("--sizes", default=None, help="Comma list of H or HxW [default: profiles' min/opt/max or the training size, plus 97x211].")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of real images as inputs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: the checkpoint's folder].")
@click.option("--tol", multiple=True, help="Tolerance override, e.g. rel_l2=1e-2 or fp16.cosine=0.998 (repeatable).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def validate_cmd(checkpoint: Path, onnx_path: Path | None, engine: Path | None, backends: str | None, sizes: str | None,
                 batches: str, images: Path | None, out: Path | None, tol: tuple[str, ...], warmup: int, iters: int,
                 as_json: bool) -> None:
    """Check parity (vs PyTorch FP32) and latency of torch / ONNX Runtime / TensorRT across sizes and batches.

    Exit code 0 only if every cell that ran is within tolerance. Backends that cannot run here
    (no GPU, library missing) are listed as skipped with the reason.
    """
    from .errors import ValidationFailed
    from .validate import parse_tolerance_overrides, run_validation

    size_list = [parse_hw(s) for s in sizes.split(",") if s.strip()] if sizes else None
    rep, files = run_validation(
        checkpoint, onnx_path=onnx_path, engine_path=engine, backends=backends.split(",") if backends else None, sizes=size_list,
        batches=_split_ints(batches, "--batch"), images=images, out_dir=out or checkpoint.parent,
        tolerances=parse_tolerance_overrides(tol), warmup=warmup, iters=iters, log=stderr_log,
    )
    if as_json:
        echo_json(rep.to_dict())
    else:
        for name, b in rep.backends.items():
            click.echo(f"{name:>22}: " + ("ran" if b["ran"] else f"skipped ({b['reason']})"))
        click.echo(f"report: {', '.join(files.values())}")
    if not rep.passed:
        bad = [c for c in rep.cells if c.skipped is None and not c.passed]
        raise ValidationFailed(f"{len(bad)} of {sum(c.skipped is None for c in rep.cells)} cells out of tolerance "
                               f"(first: {bad[0].backend} {bad[0].batch}x{bad[0].height}x{bad[0].width}: {'; '.join(bad[0].failures)})"
                               if bad else "no cell ran; see the skipped backends")


@main.command("summary")
@click.argument("arch")
@click.option("--size", type=HWType(), default="224", show_default=True, help="Input H or HxW.")
@click.option("--in-channels", type=click.IntRange(min=1), default=None, help="Input channels [default: the model's].")
@click.option("--n-classes", type=click.IntRange(min=1), default=1000, show_default=True)
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
        click.echo(json.dumps(report, indent=2, allow_nan=False, default=str))
    else:
        click.echo(format_doctor(report))
    if not report["ok"]:
        raise SystemExit(1)


@main.command("export-triton")
@click.argument("model", metavar="ENGINE|ONNX", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), required=True, help="Triton model repository folder.")
@click.option("--name", required=True, help="Model name (the folder inside the repository).")
@click.option("--max-batch", type=int, default=None, help="max_batch_size [default: the engine's largest profile batch, or 32].")
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
def export_triton_cmd(model: Path, repo: Path, name: str, max_batch: int | None, force: bool) -> None:
    """Write a Triton Inference Server model folder (config.pbtxt, labels.txt, 1/model.plan or 1/model.onnx)."""
    from .triton import export_triton

    dest = export_triton(model, repo, name, max_batch=max_batch, force=force)
    click.echo(f"wrote {dest} ({', '.join(sorted(p.name for p in dest.rglob('*') if p.is_file()))})")


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("exports/demo"), show_default=True)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=64), default=4000, show_default=True, help="Training/validation images.")
@click.option("--device", default="auto", show_default=True)
@click.option("--data", default=None, help="Fashion-MNIST folder [default: /usr/share/datasets/fashion-mnist].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_cmd(out: Path, arch: str, epochs: int, limit: int, device: str, data: str | None, as_json: bool) -> None:
    """The whole pipeline on real Fashion-MNIST: train, export, build, validate, into OUT.

    Builds with full TensorRT where it and a GPU exist, else TensorRT-RTX ahead of time for
    sm86/sm89/sm120 (it builds without a GPU), else skips the build and says why.
    """
    from .demo import run_demo

    summary = run_demo(out, arch=arch, epochs=epochs, limit=limit, device=device, data=data, log=stderr_log)
    if as_json:
        echo_json(summary)
    else:
        for name, b in summary["backends"].items():
            click.echo(f"{name:>22}: " + ("ran" if b["ran"] else f"skipped ({b['reason']})"))
        click.echo(f"accuracy {summary['accuracy']:.4f}; engine: {summary['engine'] or 'none'} ({summary['engine_note']})")
        click.echo(f"report: {summary['report'].get('markdown')} (+ latency.png, parity.png); validation passed")


if __name__ == "__main__":
    main()
