"""The optimize command: every artifact this machine can make, judged, measured, and the best one chosen and packaged."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RnDeployError
from .group import echo_json, main, stderr_log
from .params import DATASET_NAMES, LibraryValueType, split_ints


def _list(choices: str) -> LibraryValueType:
    def parse(text: str) -> tuple[str, ...]:
        from ..optimize import BACKENDS, PRECISIONS, parse_list

        return parse_list(text, BACKENDS if choices == "backends" else PRECISIONS, f"--{choices}")

    return LibraryValueType(choices.upper(), parse)


def _ints(option: str) -> LibraryValueType:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(split_ints(text, option))
        except (click.BadParameter, ValueError):
            values = ()
        if not values or min(values) < 1:
            raise RnDeployError(f"{option} {text!r}: give a comma list of positive whole numbers, e.g. 1,8,32")
        return values

    return LibraryValueType("N,N,...", parse)


@main.command("optimize")
@click.argument("model", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: artifacts, optimize.json/.md/.png, triton/ (rerun into it to reuse unchanged candidates).")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), default=None,
              help="Dataset to judge on [default: the one MODEL recorded; another one is refused].")
@click.option("--data", default=None, help="Dataset folder [default: the recorded one; Fashion-MNIST: the system copy].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Judge on this many held-out images (the subset `eval --limit N` takes) [default: all].")
@click.option("--sizes", type=_ints("--sizes"), default=None,
              help="Image sizes (short side, px) every candidate is judged at [default: the recorded range's ends and the training size].")
@click.option("--max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Top-1 points a candidate may fall below FP32 (at every size) and still be chosen.")
@click.option("--p99-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency budget: p99 at batch 1 in ms [default: none].")
@click.option("--objective", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True,
              help="Choose the highest images/s, or the lowest p99 at batch 1.")
@click.option("--backends", type=_list("backends"), default=None,
              help="Comma list of ort-cpu,ort-cuda,tensorrt-rtx,tensorrt [default: all; those that cannot run here are listed with why].")
@click.option("--precisions", type=_list("precisions"), default=None, help="Comma list of fp32,fp16,int8,fp8 [default: all].")
@click.option("--batches", type=_ints("--batches"), default="1,8,32", show_default=True,
              help="Batch sizes timed for throughput (batch 1 is always timed for latency).")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timing rounds; each times every candidate in turn, the order rotated.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True, help="Timed calls per candidate, batch and round.")
@click.option("--calib-size", type=click.IntRange(min=1), default=512, show_default=True, help="INT8 calibration images (training split).")
@click.option("--name", "triton_name", default=None, help="Model name in DIR/triton [default: the architecture's name].")
@click.option("--json", "as_json", is_flag=True, help="Print optimize.json on stdout.")
def optimize_cmd(model: Path, out: Path, dataset: str | None, data: str | None, limit: int | None, sizes: tuple[int, ...] | None,
                 max_drop: float, p99_ms: float | None, objective: str, backends: tuple[str, ...] | None,
                 precisions: tuple[str, ...] | None, batches: tuple[int, ...], rounds: int, iters: int, calib_size: int,
                 triton_name: str | None, as_json: bool) -> None:
    """Find the fastest artifact of MODEL (model.pt or an FP32 ONNX) that is still right, and package it for Triton.

    Candidates: ONNX FP32, FP16 (onnxconverter-common and ModelOpt AutoCast) and INT8 (`quantize`, with its
    ladder); ONNX Runtime settings (1 thread vs all cores, graph optimisation level; CUDA graphs on a GPU);
    TensorRT-RTX / TensorRT engines where they run (built and listed as not judged where they only build).
    Each is judged against the FP32 reference (parity on real images; top-1 and agreement at every size,
    the limits of `rn-deploy eval`), then all are timed in one run, alternated in rounds: p50/p99 at
    batch 1 and images/s at the best batch, with the load average. The rule: the highest images/s (or
    lowest p99) among candidates that pass every gate, within --max-drop of FP32 and under --p99-ms; ties
    go to the smaller artifact. Writes DIR/optimize.json, optimize.md, optimize.png, the artifacts and
    DIR/triton; exit 1 when no candidate qualifies. A rerun reuses candidates whose inputs did not change.
    """
    from ..optimize import BACKENDS, PRECISIONS, OptimizeOptions, optimize

    opts = OptimizeOptions(dataset=dataset, data=data, limit=limit, sizes=tuple(sizes or ()), max_drop=max_drop, p99_ms=p99_ms,
                           objective=objective, backends=backends or BACKENDS, precisions=precisions or PRECISIONS,
                           batches=batches, rounds=rounds, iters=iters,
                           calib_size=calib_size, triton_name=triton_name)
    doc = optimize(model, out, opts, log=stderr_log)
    if as_json:
        echo_json(doc)
    else:
        click.echo(f"{doc['files']['markdown']}: chosen {doc['chosen'] or 'none'}")
        click.echo(doc["reason"])
    if doc["chosen"] is None:
        raise RnDeployError(f"{doc['files']['json']}: {doc['reason']}")
