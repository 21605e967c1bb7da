"""Accuracy across image sizes for every artifact: ``rn-deploy eval --sizes/--scales``, the range it measures.

:func:`run_sizes` takes the report :func:`rn_deploy.evaluate.run_eval` wrote and adds a ``sizes``
section to it: each artifact (and the reference checkpoint) is run on the same images resized to
each size (the whole image, :data:`rn_deploy.sizes.RESAMPLING`, as a deployer resizes), and judged
there twice:

- accuracy: top-1 at that size may fall at most ``size_drop`` points (default 1.0) below the
  reference's top-1 at the training size; more, and the artifact fails at that size;
- parity: against the reference at the same size, by the artifact's usual eval rule
  (:func:`rn_deploy.evaluate.gates.judge`).

A size an engine's profiles do not accept is reported as not accepted, not as a failure. The
reference's curve gives the measured size range (:func:`rn_deploy.sizes.measure_range`), which
``record=True`` writes into the checkpoint (the one source of truth; see :mod:`rn_deploy.sizes`) only
when the verdict passes and the range contains the training size, which is always measured.
eval.json, eval.md and sizes.png are rewritten atomically with the section in them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import ModelConfig
from ..errors import RnDeployError
from ..log import Log
from ..sizes import DEFAULT_DROP, RESAMPLING, hw_at, measure_range, record_range, size_range
from .artifacts import open_runner, plan_artifacts
from .gates import judge, limits_for
from .predict import load_judged_split, predict_split
from .report import markdown
from .scores import accuracy, agreement, lost_images


def at_size(config: ModelConfig, side: int) -> ModelConfig:
    """``config`` evaluated at short side ``side`` (the training aspect kept)."""
    return replace(config, image_size=list(hw_at(config, side)))


def _cell(side: int, hw: Sequence[int], acc: dict[str, Any], agree: float, ref_train_top1: float, parity_fails: list[str],
          size_drop: float) -> dict[str, Any]:
    drop = 100.0 * (ref_train_top1 - acc["top1"])
    fails = [f"at {side} px: {f}" for f in parity_fails]
    if drop > size_drop + 1e-9:
        fails.insert(0, f"at {side} px: top-1 {100 * acc['top1']:.2f}% is {drop:.2f} points below the reference at the "
                        f"training size (allowed {size_drop:g})")
    return {"size": side, "hw": list(hw), "ran": True, "reason": None, "count": acc["count"], "correct": acc["correct"],
            "top1": acc["top1"], "agreement": agree, "drop_points": drop, "passed": not fails, "failures": fails}


def run_sizes(report: dict[str, Any], files: dict[str, str], sizes: Sequence[int], *, onnx: Sequence[str | Path] = (),
              engines: Sequence[str | Path] = (), backends: Sequence[str] | None = None, max_drop: float | None = None,
              size_drop: float = DEFAULT_DROP, range_drop: float = DEFAULT_DROP, record: bool = False, batch: int = 256,
              allow_skip: bool = False, log: Log | None = None, progress: bool = True,
              min_agreement: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Add the per-size section to ``report`` (from ``run_eval`` with the same artifacts) and rewrite its files.

    Args:
        report, files: what :func:`rn_deploy.evaluate.run_eval` returned.
        sizes: short-side sizes in px (see :func:`rn_deploy.sizes.sizes_from` for ``--scales``); the training size is added.
        onnx, engines, backends, max_drop, min_agreement, batch, allow_skip: as given to ``run_eval``: parity at each size
            is judged by the same limits (:func:`rn_deploy.evaluate.gates.judge`).
        size_drop: top-1 points an artifact may fall below the reference's training-size top-1 at a size.
        range_drop: the range is where the reference stays within this many points of its best size.
        record: write the measured range into the checkpoint; refused (``sizes.not_recorded`` says why) when the verdict
            fails, or when the range leaves out the training size (then a report failure: the run did not do what was asked).
    """
    from ..checkpoint import load_checkpoint
    from ..runners import ArtifactUnsupported, RunnerUnavailable, TorchRunner

    say = log or (lambda _s: None)
    if not sizes or min(sizes) < 1:
        raise RnDeployError(f"sizes {list(sizes)}: give at least one size of 1 pixel or more")
    checkpoint = report["checkpoint"]
    ckpt = load_checkpoint(checkpoint)
    config = ckpt.config
    images = load_judged_split(report["dataset"], report["data"], report["split"], config, limit=report["limit"],
                               seed=report["seed"])
    ref_train_top1 = float(report["artifacts"][0]["top1"])
    artifacts = plan_artifacts(checkpoint, config, onnx, engines, backends)
    ref_rows: list[dict[str, Any]] = []
    rows: dict[str, list[dict[str, Any]]] = {a.label: [] for a in artifacts}
    train_side = min(config.image_size)
    if train_side not in sizes:  # every size is judged against the training size, and the range must be placed around it
        say(f"also measuring the training size {train_side} px")
    sizes = sorted({*sizes, train_side})
    for side in sizes:
        cfg = at_size(config, side)
        hw = cfg.image_size
        with TorchRunner(ckpt.model, device="cuda" if torch.cuda.is_available() else "cpu") as ref_runner:
            ref = predict_split(ref_runner, images, cfg, batch=batch, progress=progress)
        ref_acc = accuracy(ref, config.class_names)
        ref_rows.append(_cell(side, hw, ref_acc, 1.0, ref_train_top1, [], size_drop))
        for a in artifacts:
            try:
                with open_runner(a) as runner:
                    pred = predict_split(runner, images, at_size(a.config, side), batch=batch, progress=progress)
            except RunnerUnavailable as e:
                rows[a.label].append({"size": side, "hw": hw, "ran": False, "reason": str(e), "passed": allow_skip,
                                      "failures": [] if allow_skip else [f"at {side} px: cannot run here ({e})"]})
                continue
            except ArtifactUnsupported as e:  # the artifact itself: a failure at every size, --allow-skip or not
                rows[a.label].append({"size": side, "hw": hw, "ran": False, "reason": str(e), "passed": False,
                                      "failures": [f"at {side} px: {e}"]})
                continue
            except RnDeployError as e:  # an engine whose profiles do not take this size: not a size it accepts
                rows[a.label].append({"size": side, "hw": hw, "ran": False, "reason": f"not accepted: {e}", "passed": True,
                                      "failures": []})
                continue
            acc = accuracy(pred, config.class_names)
            agree, _ = agreement(pred, ref)
            _, parity = judge(acc, ref_acc, agree, pred.nonfinite, limits_for(a.precision, max_drop, min_agreement),
                              lost=lost_images(pred, ref))
            rows[a.label].append(_cell(side, hw, acc, agree, ref_train_top1, parity, size_drop))
        say(f"{side} px: reference top-1 {100 * ref_acc['top1']:.2f}%"
            + "".join(f"; {name} {100 * r[-1]['top1']:.2f}%" for name, r in rows.items() if r[-1]["ran"]))
    curve = {r["size"]: r["top1"] for r in ref_rows}
    lo, hi = measure_range(curve, range_drop, prefer=min(config.image_size))
    arts: list[dict[str, Any]] = [{"name": "reference", "precision": "fp32", "per_size": ref_rows}]
    arts += [{"name": a.label, "precision": a.precision, "carries_range": a.config.size_range, "per_size": rows[a.label]}
             for a in artifacts]
    for art in arts:
        art["failing_sizes"] = [c["size"] for c in art["per_size"] if not c["passed"]]
        art["passed"] = not art["failing_sizes"]
    section: dict[str, Any] = {
        "sizes": sizes, "train_size": list(config.image_size), "resampling": f"whole image, {RESAMPLING}",
        "size_drop_points": size_drop, "range_drop_points": range_drop, "reference_train_top1": ref_train_top1,
        "measured_range": [lo, hi], "recorded_range_before": config.size_range, "recorded": False, "not_recorded": None,
        "artifacts": arts, "passed": all(a["passed"] for a in arts)}
    say(f"size range: {lo}-{hi} px (the reference within {range_drop:g} pt of its best; {size_range(config).describe()} before)")
    why_not = _why_not_record(report, section, train_side) if record else None
    if why_not:
        section["not_recorded"] = why_not
        if report["passed"] and section["passed"]:  # the verdict holds, but what was asked for was not done: exit 1, this line
            report["failures"] = [*report["failures"], why_not]
        else:
            say(why_not)
    elif record:
        measured = {"sizes": list(curve), "top1": list(curve.values()), "drop_points": range_drop, "range": [lo, hi], "by": "eval",
                    "resampling": section["resampling"], **{k: report[k] for k in ("dataset", "data", "split", "count", "limit", "seed")}}
        record_range(checkpoint, (lo, hi), measured)
        section["recorded"] = True
        stale = [a["name"] for a in arts[1:] if a.get("carries_range") != [lo, hi]]
        say(f"recorded size range {lo}-{hi} px in {checkpoint}" + (f"; re-export so {', '.join(stale)} carry it" if stale else ""))
    report["sizes"] = section
    report["passed"] = bool(report["passed"]) and section["passed"] and not report["failures"]
    return report, _rewrite(report, files)


def _why_not_record(report: dict[str, Any], section: dict[str, Any], train_side: int) -> str | None:
    """Why the measured range must not go into the checkpoint (one line), or None when it may.

    Engine and serve resize every image into the recorded range: a range without the training size, or one measured in
    a run whose verdict failed, would move images the model is right at to sizes it is wrong at.
    """
    lo, hi = section["measured_range"]
    head = f"not recording the size range {lo}-{hi} px in {report['checkpoint']}"
    if not (report["passed"] and section["passed"]):
        failing = [*report["failures"], *(f"{a['name']}: {'; '.join(a['failures'])}" for a in report["artifacts"] if not a["passed"]),
                   *(f"{a['name']} at {', '.join(f'{s} px' for s in a['failing_sizes'])}" for a in section["artifacts"]
                     if not a["passed"])]
        why = failing[0] + (f" and {len(failing) - 1} more" if len(failing) > 1 else "")
        return f"{head}: the verdict failed ({why}); measure sizes where it passes, or loosen --size-drop"
    if not lo <= train_side <= hi:
        return (f"{head}: it leaves out the training size {train_side} px (the reference is more than "
                f"{section['range_drop_points']:g} pt better there than at {train_side} px); a range must contain the training size")
    return None


def size_markdown(section: dict[str, Any]) -> str:
    """The per-size table of eval.md: top-1 % (agreement %) per artifact and size, FAIL where an artifact fails."""
    sizes = section["sizes"]
    lines = ["## Accuracy across sizes", "",
             f"Images resized as a deployer would: {section['resampling']}. Training size "
             f"{'x'.join(map(str, section['train_size']))}; an artifact fails at a size where its top-1 is more than "
             f"{section['size_drop_points']:g} pt below the reference at the training size "
             f"({100 * section['reference_train_top1']:.2f}%) or where it loses parity with the reference at that size.", "",
             "| artifact | " + " | ".join(f"{s} px" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for a in section["artifacts"]:
        cells = []
        for c in a["per_size"]:
            if not c["ran"]:
                cells.append("not accepted" if c["passed"] else "FAIL: not run")
            else:
                cells.append(f"{100 * c['top1']:.2f} ({100 * c['agreement']:.1f})" + ("" if c["passed"] else " FAIL"))
        lines.append(f"| {a['name']} | " + " | ".join(cells) + " |")
    lo, hi = section["measured_range"]
    lines += ["", "Cells: top-1 % (top-1 agreement with the reference at the same size, %).", "",
              f"Measured size range: {lo}-{hi} px (the reference within {section['range_drop_points']:g} pt of its best)"
              + ("; recorded in the checkpoint." if section["recorded"] else f"; {section['not_recorded']}." if section.get("not_recorded")
                 else "; not recorded (pass --record-range)."), ""]
    for a in section["artifacts"]:
        for c in a["per_size"]:
            lines += [f"- {a['name']}: {f}" for f in c["failures"]]
    return "\n".join(lines) + "\n"


def _plot(section: dict[str, Any], path: Path) -> str:
    from .._io import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lo, hi = section["measured_range"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="tab:green", alpha=0.12, label=f"measured range {lo}-{hi} px")
    ax.axvline(min(section["train_size"]), color="grey", ls=":", lw=1, label="training size")
    ax.axhline(100 * section["reference_train_top1"] - section["size_drop_points"], color="tab:red", ls="--", lw=0.8,
               label=f"gate: {section['size_drop_points']:g} pt below the training size")
    for i, a in enumerate(section["artifacts"]):
        pts = [(c["size"], 100 * c["top1"]) for c in a["per_size"] if c["ran"]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ls="-" if i == 0 else "--", label=a["name"])
    ax.set_xlabel("image size (short side, px)")
    ax.set_ylabel("top-1 %")
    ax.set_title("Accuracy against image size", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def _rewrite(report: dict[str, Any], files: dict[str, str]) -> dict[str, str]:
    from .._io import atomic_write_text

    out = Path(files["json"]).parent
    files = {**files, "sizes": _plot(report["sizes"], out / "sizes.png")}
    report["files"] = files
    atomic_write_text(files["json"], json.dumps(report, indent=2, allow_nan=False))
    atomic_write_text(files["markdown"], markdown(report) + "\n" + size_markdown(report["sizes"]))
    return files
