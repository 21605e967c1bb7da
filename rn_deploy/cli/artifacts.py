"""Commands that write artifacts: export, import, build, quantize, export-triton."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import RnDeployError
from .group import echo_json, main, stderr_log
from .params import BATCH_TRIPLE, DATASET_NAMES, FLOATS, MODEL_NAME, POINTS, POSITIVE_FLOATS, PROFILE, SHAPE, HWType, apply_tuned


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write [default: model.onnx (model.fp16.onnx with --fp16) beside the checkpoint].")
@click.option("--opset", type=click.IntRange(min=18), default=None,
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
    from ..export import DEFAULT_FP16_TOOL, ExportVerificationError, export_onnx, format_verification

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


@main.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write: exports/NAME/model.pt for weights, exports/NAME/model.onnx for an ONNX.")
@click.option("--classes", default=None, help="Class names: a file with one per line, or a comma list [default: 0..N-1].")
@click.option("--mean", type=FLOATS, default=None, help="Per-channel mean of pixels in [0, 1] [default: ImageNet's].")
@click.option("--std", type=POSITIVE_FLOATS, default=None, help="Per-channel std [default: ImageNet's].")
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
    from ..filekind import expect

    names = None
    if classes:
        from ..importers import read_class_names

        names = read_class_names(classes)
    if expect(source, "onnx", "weights").kind == "onnx" or source.suffix == ".onnx":
        from ..foreign import import_onnx

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
    from ..importers import import_weights

    res = import_weights(source, out, class_names=names, mean=mean, std=std, image_size=size, meta=meta)
    if as_json:
        echo_json(res.to_dict())
        return
    cfg = res.config
    click.echo(f"wrote {res.checkpoint}: {res.library} {res.source_arch} -> {res.arch}, {cfg['n_classes']} classes, "
               f"{cfg['in_channels']} channel(s), size {cfg['image_size'][0]}x{cfg['image_size'][1]}")


def _parse_profiles(min_: Any, opt: Any, max_: Any, profile: tuple[Any, ...], sizes_from: Path | None,
                    bands: int, batch: tuple[int, int, int], channels: int) -> list[Any]:
    from ..builder import Profile, profiles_from_sizes, read_sizes, sizes_coverage

    # Order is the engine's profile order: --min/--opt/--max is profile 0, then each --profile, then --sizes-from.
    out = []
    if min_ is not None:  # with --opt and --max: build_cmd checked that
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
@click.option("--workspace", type=click.IntRange(min=1), default=None, help="Workspace limit in MiB.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT timing cache file.")
@click.option("--dla-core", type=click.IntRange(min=0), default=None, help="Full TensorRT on Jetson: run on this DLA core (FP16/INT8).")
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
    given = [v is not None for v in (min_, opt, max_)]
    if any(given) and not all(given):
        raise click.UsageError("--min, --opt and --max go together")
    if all(given):  # judged before the (slow) builder import: a usage error, exit 2
        from ..errors import BuildError
        from ..runtime.manifest import Profile, fmt_shape

        try:
            Profile(min_, opt, max_).check_order(f"--min {fmt_shape(min_)} --opt {fmt_shape(opt)} --max {fmt_shape(max_)}")
        except BuildError as e:
            raise click.BadParameter(str(e), param_hint="--min/--opt/--max") from None
    if gpu_fallback and dla_core is None:
        raise click.UsageError("--gpu-fallback goes with --dla-core")
    from ..builder import build_engine, onnx_info

    channels = (onnx_info(onnx_path).channels or 3) if onnx_path.exists() else 3
    profiles = _parse_profiles(min_, opt, max_, profile, sizes_from, bands, batch, channels)
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
@click.option("--max-drop", type=POINTS, default=None,
              help="Largest top-1 drop (points) the gate accepts; 0 also means no image FP32 got right may be lost "
                   "[default: eval's, 1.0 for int8 and fp8].")
@click.option("--min-agreement", multiple=True,
              help="Least fraction of images on which a rung picks FP32's class: FRACTION or PREC=FRACTION (repeatable), as "
                   "eval takes it [default: eval's, int8 0.95, fp8 0.95].")
@click.option("--ladder/--no-ladder", default=True, show_default=True,
              help="On a failed gate, try another method, more calibration images, then first/last layers kept.")
@click.option("--force", is_flag=True, help="Write the best rung even when it fails the gate.")
@click.option("--quantizer", type=click.Choice(["modelopt", "ort"]), default="modelopt", show_default=True,
              help="NVIDIA ModelOpt ONNX PTQ, or ONNX Runtime quantize_static with TensorRT options.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Gate on at most N held-out images [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration/evaluation subsets.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def quantize_cmd(source: Path, out: Path | None, calib: str | None, data: str | None, calib_size: int, method: str, precision: str,
                 exclude: tuple[str, ...], max_drop: float | None, min_agreement: tuple[str, ...], ladder: bool, force: bool,
                 quantizer: str, eval_limit: int | None, seed: int, as_json: bool) -> None:
    """Post-training quantization of CKPT|MODEL.onnx to an explicit Q/DQ ONNX (TensorRT form), behind an accuracy gate.

    Calibrates on the training split, then runs the FP32 and the Q/DQ ONNX (ONNX Runtime CPU) on the
    held-out split and judges it by eval's gate: top-1 at most --max-drop points below FP32 and top-1
    agreement with FP32 of at least --min-agreement. A failing rung walks a ladder (another method,
    more calibration images, first/last layers kept); the first rung that passes is written, with
    OUT.quant.json/.md. Nothing is written (exit 1) when no rung passes, unless --force.
    """
    from ..evaluate import parse_min_agreement
    from ..quantize import GateFailed, QuantizeOptions, quantize

    try:
        agreement = parse_min_agreement(min_agreement)
    except RnDeployError as e:
        raise click.BadParameter(str(e), param_hint="--min-agreement") from None
    if out is None:
        out = source.with_name(f"model.{precision}.onnx")
    opts = QuantizeOptions(calib=calib, data=data, calib_size=calib_size, method=method, precision=precision,
                           exclude=tuple(e for item in exclude for e in item.split(",") if e.strip()), max_drop=max_drop,
                           min_agreement=agreement, force=force, ladder=ladder, quantizer=quantizer, eval_limit=eval_limit, seed=seed)
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


@main.command("export-triton")
@click.argument("model", metavar="ENGINE|ONNX", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), required=True, help="Triton model repository folder.")
@click.option("--name", type=MODEL_NAME, required=True, help="Model name (the folder inside the repository).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size [default: an engine's largest profile batch (the max over its profiles); 32 for ONNX].")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Instance kind for ONNX models (KIND_GPU or KIND_CPU) [default: gpu]; plans run on the GPU.")
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@click.option("--json", "as_json", is_flag=True, help="Print rn-deploy.json (preprocessing, size policy, classes) as JSON.")
def export_triton_cmd(model: Path, repo: Path, name: str, max_batch: int | None, kind: str | None, force: bool, as_json: bool) -> None:
    """Write a Triton Inference Server model folder (config.pbtxt, labels.txt, rn-deploy.json, 1/model.plan or 1/model.onnx).

    The preprocessing a client applies (mean/std, 1/255 scale, channel order, size policy) and the
    class names go in config.pbtxt's parameters and in rn-deploy.json (see docs/formats.md).
    A setting `serve --tune` saved for this file (MODEL.serving.json) gives --max-batch when it is not
    given, and the batching delay, instance count and ONNX Runtime threads of NAME_image.
    """
    from ..triton import export_triton
    from ..tuned import SETTINGS

    tuned = apply_tuned(model, SETTINGS)
    dest = export_triton(model, repo, name, max_batch=tuned.get("max_batch", max_batch), force=force, kind=kind,
                         image_setting=tuned)
    if as_json:
        echo_json({"folder": str(dest), **json.loads((dest / "rn-deploy.json").read_text())})
        return
    click.echo(f"wrote {dest} ({', '.join(sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file()))})")
    front = json.loads((dest / "rn-deploy.json").read_text()).get("image_model")
    if front:
        click.echo(f"wrote {dest.parent / front} (the image contract of `rn-deploy serve` over it: Python backend, needs rn-deploy)")
