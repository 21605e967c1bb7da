"""Commands that judge and exit 1 on a failure: validate (parity, latency), eval (accuracy on real data), doctor (this machine)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RnDeployError
from .group import echo_json, main, stderr_log
from .params import BACKEND_LIST, DATASET_NAMES, EVAL_BACKENDS, HW_LIST, POINTS, POSITIVE_INTS, TOLERANCE


@main.command("validate")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="model.pt: the FP32 reference [without it: --onnx on ONNX Runtime CPU is the reference].")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ONNX model to check.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None, help="TensorRT engine to check.")
@click.option("--backends", type=BACKEND_LIST, default=None,
              help="Comma list of torch,torch-fp16,ort-cpu,ort-cuda,ort-cuda-graph,trt,trt-graph [default: all that apply].")
@click.option("--sizes", type=HW_LIST, default=None,
              help="Comma list of H or HxW [default: profiles' min/opt/max or the training size, plus 97x211].")
@click.option("--batch", "batches", type=POSITIVE_INTS, default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of real images as inputs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: the checkpoint's folder].")
@click.option("--tol", type=TOLERANCE, multiple=True, help="Tolerance override, e.g. rel_l2=1e-2 or fp16.cosine=0.998 (repeatable).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls per cell before timing.")
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True, help="Timed calls per cell.")
@click.option("--allow-skip", is_flag=True,
              help="Accept a report in which an artifact named by --onnx/--engine could not run here (listed as not judged).")
@click.option("--allow-other-source", is_flag=True,
              help="Compare an --onnx/--engine whose recorded checkpoint digest is not this checkpoint's (refused by default).")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def validate_cmd(checkpoint: Path | None, onnx_path: Path | None, engine: Path | None, backends: list[str] | None,
                 sizes: list[tuple[int, int]] | None,
                 batches: list[int], images: Path | None, out: Path | None, tol: tuple[str, ...], warmup: int, iters: int,
                 allow_skip: bool, allow_other_source: bool, as_json: bool) -> None:
    """Check parity (vs PyTorch FP32) and latency of torch / ONNX Runtime / TensorRT across sizes and batches.

    Exit code 0 only if at least one backend independent of the reference (another framework,
    device or precision) ran and was compared, every compared cell is within tolerance, and every
    artifact named by --onnx/--engine was judged (or --allow-skip). The reference's own twin
    (torch-cpu-fp32) is timed, not compared. Backends that cannot run here are listed with the reason.
    Without --checkpoint (a foreign ONNX), --onnx on ONNX Runtime CPU is the FP32 reference for --engine.
    """
    from ..errors import ValidationFailed
    from ..filekind import expect
    from ..validate import parse_tolerance_overrides, run_validation

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
        batches=batches, images=images, out_dir=out or (checkpoint or onnx_path or Path(".")).parent,
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
@click.option("--backends", type=EVAL_BACKENDS, default=None, help="Comma list of ort-cpu,ort-cuda,trt,torch-fp16 [default: ort-cuda or ort-cpu, trt].")
@click.option("--max-drop", type=POINTS, default=None,
              help="Allowed top-1 drop in points vs the reference; 0 also means no image the reference gets right may be "
                   "lost [default: 0.3 fp16, 1.0 int8 and fp8].")
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
@click.option("--record-range", is_flag=True,
              help="With --sizes: write the measured size range into the checkpoint; refused (exit 1, one line why) when "
                   "the verdict fails or the range leaves out the training size (always measured).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report folder [default: the checkpoint's].")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json on stdout.")
def eval_cmd(checkpoint: Path | None, onnx_paths: tuple[Path, ...], engines: tuple[Path, ...], dataset: str | None, data: str | None,
             split: str | None, limit: int | None, seed: int | None, batch: int, backends: list[str] | None, max_drop: float | None,
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
    want_sizes = _size_options(size_list, scales, record_range)  # before the (slow) evaluate import: exit 2 at once
    if want_sizes and checkpoint is None:
        raise click.UsageError("--sizes/--scales measure against the checkpoint: pass --checkpoint")
    from ..evaluate import EvalFailed, format_table, parse_min_agreement, run_eval

    try:
        agreement = parse_min_agreement(min_agreement)
    except RnDeployError as e:
        raise click.BadParameter(str(e), param_hint="--min-agreement") from None
    bk = backends or None
    rep, files = run_eval(checkpoint, onnx=onnx_paths, engines=engines, dataset=dataset, data=data, split=split, limit=limit,
                          seed=seed, batch=batch, backends=bk, max_drop=max_drop, allow_skip=allow_skip, out_dir=out, log=stderr_log,
                          min_agreement=agreement, allow_other_source=allow_other_source, allow_unreproduced=allow_unreproduced)
    if want_sizes:
        from ..evaluate.sizes import run_sizes
        from ..sizes import sizes_from

        rep, files = run_sizes(rep, files, sizes_from(rep["image_size"], *want_sizes), onnx=onnx_paths, engines=engines, backends=bk,
                               max_drop=max_drop, size_drop=size_drop, range_drop=range_drop, record=record_range, batch=batch,
                               allow_skip=allow_skip, log=stderr_log, min_agreement=agreement)
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


@main.command("doctor")
@click.argument("artifacts", metavar="[ENGINE|ONNX]...", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the environment and the artifact checks as strict JSON.")
def doctor_cmd(artifacts: tuple[Path, ...], as_json: bool) -> None:
    """This machine (OS, Python, driver/CUDA, GPUs, torch, ONNX Runtime, TensorRT, Jetson power mode), and
    for each ENGINE or ONNX given: will it load here, and if not why and the command that fixes it.

    Exit code 1 if any artifact given cannot load here.
    """
    from ..doctor import doctor, format_doctor

    report = doctor(artifacts)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_doctor(report))
    if not report["ok"]:
        raise SystemExit(1)
