"""The quantize workflow: check the source, load calibration and gate images, export, climb the ladder, write the result."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from .._io import atomic_path, atomic_write_text, check_writable
from ..log import Log
from ..onnxfile import qdq_precision
from .calibration import calib_dataset
from .form import QuantizeError, resolve_exclude
from .gate import LADDER_CALIB_FACTOR, QuantizeOptions, evaluate_onnx, gate_limits, ladder, try_recipe
from .recipes import Recipe, load_modelopt
from .report import GateFailed, QuantizeReport, report_paths


def _source_config(source: Path) -> tuple[Any, str | None, str | None]:
    """The ModelConfig of a checkpoint or an FP32 rn-deploy ONNX, with the checks that need no export, and the
    dataset (name, folder) it recorded training on (None where not recorded)."""
    from ..checkpoint import ModelConfig, read_checkpoint, recorded_dataset, recorded_eval
    from ..onnxfile import DATASET_KEY, check_onnx_file, metadata_value, onnx_config, weights_fp16

    if not source.exists():
        raise QuantizeError(f"{source}: no such file; pass a checkpoint (model.pt) or an FP32 ONNX from `rn-deploy export`")
    if source.suffix != ".onnx":
        raw = read_checkpoint(source)
        train = raw.get("train") or {}
        data = recorded_eval(train).get("data")
        return ModelConfig.from_dict(raw["config"]), recorded_dataset(train), str(data) if data else None
    m = check_onnx_file(source)
    cfg = onnx_config(m)
    if cfg is None:
        raise QuantizeError(f"{source}: no rn-deploy metadata (class names, mean/std); export it with `rn-deploy export`, or "
                            "bring a foreign ONNX in with `rn-deploy import`")
    if qdq_precision(m):
        raise QuantizeError(f"{source}: already quantized ({qdq_precision(m)}); pass the FP32 ONNX or the checkpoint")
    if weights_fp16(m):
        raise QuantizeError(f"{source}: FP16 weights; quantize from the FP32 ONNX (export without --fp16) or the checkpoint")
    return cfg, metadata_value(m, DATASET_KEY), None


def quantize(source: str | Path, out: str | Path, opts: QuantizeOptions, *, log: Log | None = None) -> QuantizeReport:
    """Quantize a checkpoint or FP32 ONNX to a Q/DQ ONNX that passes the accuracy gate, and write it with its report.

    Raises:
        GateFailed: no rung passed eval's gate (top-1 drop, agreement with FP32) and ``opts.force`` is off; nothing is
            written.
        QuantizeError / DataError / MissingDependencyError: bad input, in one line.
    """
    from ..datasets.sources import default_split, load_split
    from ..evaluate import check_data_fits, load_judged_split

    say = log or (lambda _s: None)
    t0 = time.perf_counter()
    opts.check()
    source, out = Path(source), Path(out)
    if out.suffix != ".onnx":
        raise QuantizeError(f"-o {out}: the output is an ONNX file; name it e.g. model.{opts.precision}.onnx")
    check_writable(out, option="-o")  # before calibration; the folder is made when the result is written
    if opts.quantizer == "modelopt":
        load_modelopt()  # fail before any work when it is missing
    with tempfile.TemporaryDirectory(prefix="rn-quant.") as td:
        work = Path(td)
        cfg, recorded, recorded_data = _source_config(source)
        calib = calib_dataset(source, opts.calib, recorded)
        opts = replace(opts, calib=calib, data=opts.data if opts.data is not None else recorded_data)
        first = Recipe(opts.method, opts.calib_size, tuple(opts.exclude), opts.quantizer)
        if source.suffix == ".onnx":  # refuse unknown node names before any work
            resolve_exclude(onnx.load(str(source), load_external_data=False), first.exclude, str(source))
        eval_split = default_split(calib)
        where = f"--calib {calib}"
        calib_pool = load_split(calib, opts.data, "train", limit=opts.calib_size * (LADDER_CALIB_FACTOR if opts.ladder else 1),
                                seed=opts.seed, presize=cfg.presize or max(cfg.image_size), channels=cfg.in_channels,
                                class_names=cfg.class_names)
        check_data_fits(calib_pool, cfg, where)
        # the gate's images are eval's: `eval --limit N --seed S` judges exactly what `--eval-limit N --seed S` gated on
        test = load_judged_split(calib, opts.data, eval_split, cfg, limit=opts.eval_limit, seed=opts.seed,
                                 where=f"{where} ({eval_split} split)")
        say(f"calibration: {calib} train split ({len(calib_pool)} images available); gate: {len(test)} {eval_split} images")
        fp32 = source
        if source.suffix != ".onnx":
            from ..export import export_onnx

            say(f"export: {source} -> FP32 ONNX")
            fp32 = Path(export_onnx(source, work / "model.onnx", log=say).onnx_path)
            resolve_exclude(onnx.load(str(fp32), load_external_data=False), first.exclude, str(source))

        ref = evaluate_onnx(fp32, test, cfg, opts.batch)
        say(f"reference: FP32 ONNX top-1 {ref[0]['top1'] * 100:.2f}%")
        limits = gate_limits(opts, opts.precision)
        report = QuantizeReport(source=str(source), output=None, precision=opts.precision, max_drop=limits["max_drop_points"],
                                min_agreement=limits["min_agreement"], calib_dataset=calib, calib_split="train", eval_split=eval_split, eval_images=len(test),
                                reference=ref[0], forced=opts.force)
        plan: list[tuple[str, Recipe]] = [("requested", first)]
        files: list[Path] = []
        while plan:
            why, recipe = plan.pop(0)
            if any(r.recipe == recipe for r in report.rungs):
                continue
            dst = work / f"rung{len(report.rungs) + 1}.onnx"
            rung = try_recipe(fp32, dst, recipe, calib_pool, test, ref, opts, why)
            report.rungs.append(rung)
            files.append(dst)
            say(f"rung {len(report.rungs)} ({why}): {recipe.label()}: top-1 {rung.top1 * 100:.2f}% "
                f"(drop {rung.drop_pts:+.2f} pt; agreement {rung.agreement * 100:.2f}%; {rung.lost} images lost, {rung.gained} "
                f"gained) " + ("pass" if rung.passed else "fail: " + "; ".join(rung.failures)))
            if rung.passed:
                report.chosen = len(report.rungs) - 1
                break
            if opts.ladder and len(report.rungs) == 1:
                plan = ladder(first, len(calib_pool), report.rungs)
        report.seconds = round(time.perf_counter() - t0, 2)
        if report.chosen is None:
            best = min(range(len(report.rungs)), key=lambda i: (report.rungs[i].drop_pts, -report.rungs[i].agreement))
            if not opts.force:
                r = report.rungs[best]
                raise GateFailed(f"{out}: not written: no rung passed the gate ({report.gate_text()}; FP32 top-1 "
                                 f"{ref[0]['top1'] * 100:.2f}%); best was rung {best + 1} ({r.recipe.label()}): "
                                 f"{'; '.join(r.failures)}; relax --max-drop/--min-agreement, or --force to write it anyway", report)
            report.chosen = best
            say(f"--force: writing rung {best + 1} although it fails the gate")
        report.output = str(out)
        with atomic_path(out) as tmp:
            shutil.copyfile(files[report.chosen], tmp)
    jpath, mpath = report_paths(out)
    atomic_write_text(jpath, json.dumps(report.to_dict(), indent=2, allow_nan=False))
    atomic_write_text(mpath, report.markdown())
    say(f"wrote {out} + {jpath.name}, {mpath.name}")
    return report
