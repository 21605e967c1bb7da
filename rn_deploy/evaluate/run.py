"""``run_eval``: the reference and every planned artifact through one split, judged, and the report written."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..datasets.sources import default_split
from ..errors import RnDeployError
from ..log import Log
from .artifacts import artifact_source, cannot_run_here, open_runner, plan_artifacts, source_status
from .gates import DEFAULT_MIN_AGREEMENT, judge, limits_for
from .predict import SplitPredictions, load_judged_split, predict_split
from .recorded import recorded_dataset, recorded_evaluation, reproduces_training
from .report import write_eval_report
from .scores import accuracy, agreement, confusion, lost_images

FORMAT = "rn-deploy-eval/1"
MAX_LISTED = 1000  # disagreeing indices listed per artifact in eval.json


class EvalFailed(RnDeployError):
    """Evaluation ran, and an artifact lost too much accuracy (or could not run)."""


def run_eval(checkpoint: str | Path | None, *, onnx: Sequence[str | Path] = (), engines: Sequence[str | Path] = (),
             dataset: str | None = None, data: str | Path | None = None, split: str | None = None, limit: int | None = None,
             seed: int | None = None, batch: int = 256, backends: Sequence[str] | None = None, max_drop: float | None = None,
             allow_skip: bool = False, out_dir: str | Path | None = None, log: Log | None = None,
             progress: bool = True, min_agreement: dict[str, float] | None = None, allow_other_source: bool = False,
             allow_unreproduced: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Evaluate the checkpoint (the FP32 reference) and every artifact on one split; write the report.

    ``dataset``/``data``/``seed`` default to what training recorded in the checkpoint; another dataset than the
    recorded one is refused. An artifact that records another checkpoint's weights digest is refused unless
    ``allow_other_source``. The verdict fails when the reference does not reproduce the accuracy training recorded
    on the same images (unless ``allow_unreproduced``) or any artifact fails its limits (:func:`limits_for`).
    Returns the report (the ``eval.json`` dict) and the written files; ``report["passed"]`` is the verdict.
    Without a checkpoint (a foreign ONNX brought in by ``rn-deploy import``) the first ONNX, on ONNX Runtime CPU,
    is the reference.
    """
    from ..checkpoint import load_checkpoint, weights_sha256
    from ..runners import RunnerUnavailable, TorchRunner

    say = log or (lambda _s: None)
    if checkpoint is None:
        if not onnx:
            raise RnDeployError("nothing to evaluate against: pass --checkpoint (the FP32 reference), or --onnx (the first is then the reference)")
        from ..reference import onnx_reference

        checkpoint, onnx = Path(onnx[0]), list(onnx[1:])
        ref_runner, config = onnx_reference(checkpoint)
        train: dict[str, Any] = {}
        ref_kind, ref_device = "onnx", "cpu"
        reference_digest = artifact_source("onnx", checkpoint)
    else:
        ckpt = load_checkpoint(checkpoint)
        config, train, ref_kind = ckpt.config, ckpt.train, "checkpoint"
        ref_device = "cuda" if torch.cuda.is_available() else "cpu"
        ref_runner = TorchRunner(ckpt.model, device=ref_device)
        reference_digest = weights_sha256(ckpt.model)
    raw_rec = train.get("eval")
    rec: dict[str, Any] = raw_rec if isinstance(raw_rec, dict) else {}
    dataset, data = recorded_dataset(checkpoint, train, dataset, data)
    split = split or default_split(dataset)
    seed = int(rec.get("seed", 0)) if seed is None else seed
    artifacts = plan_artifacts(checkpoint, config, onnx, engines, backends)
    sources = {}
    for a in artifacts:
        if a.config.in_channels != config.in_channels or a.config.n_classes != config.n_classes:
            raise RnDeployError(f"{a.path}: takes {a.config.in_channels} channel(s) and has {a.config.n_classes} outputs, the "
                                f"checkpoint {config.in_channels} and {config.n_classes}; was it exported from another model?")
        sources[a.label] = "same" if a.kind == "checkpoint" else source_status(a.path, a.source, reference_digest, checkpoint,
                                                                                allow_other_source)
    blocked = [(a, why) for a in artifacts if (why := cannot_run_here(a.backend))]
    if blocked and not allow_skip:  # say so before the data loads, not after minutes of the reference
        a, why = blocked[0]
        raise RnDeployError(f"{a.path}: cannot run here ({why}); run where it can, or pass --allow-skip to evaluate the rest "
                            "and report it as skipped")
    images = load_judged_split(dataset, data, split, config, limit=limit, seed=seed)
    say(f"data: {dataset} {split}, {len(images)} images" + (f" (--limit {limit} --seed {seed})" if limit else ""))

    with ref_runner:
        ref = predict_split(ref_runner, images, config, batch=batch, log=say, progress=progress)
    ref_acc = accuracy(ref, config.class_names)
    recorded = recorded_evaluation(train, dataset, split, limit, seed, images)
    reproduces = None
    failures: list[str] = []
    if recorded and recorded["same_images"]:
        reproduces, rule = reproduces_training(recorded, ref_acc["correct"], ref_device, len(images))
        recorded["rule"] = rule
        say(f"reference top-1 {100 * ref_acc['top1']:.2f}%; training recorded {100 * float(recorded['top1']):.2f}% on the same "
            f"images: {'reproduced' if reproduces else 'NOT reproduced' if reproduces is False else 'not comparable'} ({rule})")
        if reproduces is False and not allow_unreproduced:
            failures.append(f"the reference gets {ref_acc['correct']}/{len(images)} right where training recorded "
                            f"{recorded.get('correct')}/{len(images)} on the same images ({rule}): data or preprocessing changed "
                            "since training; fix that, or pass --allow-unreproduced to judge the artifacts anyway")
    elif recorded:
        say(f"training evaluated on other images ({recorded.get('split')}, count {recorded.get('count')}, limit "
            f"{recorded.get('limit')}, seed {recorded.get('seed')}); pass --limit/--seed to compare")
    rows: list[dict[str, Any]] = [{
        "name": "reference", "kind": ref_kind, "path": str(checkpoint), "backend": ref.name, "precision": "fp32", "ran": True,
        "reason": None, **_acc_fields(ref, ref_acc), "agreement": 1.0, "disagree_count": 0, "disagree": [], "drop_points": 0.0,
        "limits": None, "passed": True, "failures": [], "source": "same"}]
    preds: dict[str, SplitPredictions] = {}
    for a in artifacts:
        row: dict[str, Any] = {"name": a.label, "kind": a.kind, "path": str(a.path), "backend": a.backend, "precision": a.precision,
                               "source": sources[a.label]}
        limits = limits_for(a.precision, max_drop, min_agreement)
        try:
            with open_runner(a) as runner:
                pred = predict_split(runner, images, a.config, batch=batch, log=say, progress=progress)
        except RunnerUnavailable as e:
            why = str(e)
            ok = allow_skip
            row.update({"ran": False, "reason": why, "limits": limits, "passed": ok,
                        "failures": [] if ok else [f"cannot run here ({why}); pass --allow-skip to accept that"]})
            say(f"{a.label}: skipped ({why})")
            rows.append(row)
            continue
        except RnDeployError as e:  # the artifact itself is unusable (stale engine, profiles missing the image size)
            row.update({"ran": False, "reason": str(e), "limits": limits, "passed": False, "failures": [str(e)]})
            say(f"{a.label}: FAIL ({e})")
            rows.append(row)
            continue
        acc = accuracy(pred, config.class_names)
        agree, differ = agreement(pred, ref)
        drop, fails = judge(acc, ref_acc, agree, pred.nonfinite, limits, lost=lost_images(pred, ref))
        preds[a.label] = pred
        row.update({"backend": pred.name, "ran": True, "reason": None, **_acc_fields(pred, acc), "agreement": agree,
                    "disagree_count": len(differ), "disagree": [int(i) for i in differ[:MAX_LISTED]], "drop_points": drop,
                    "limits": limits, "passed": not fails, "failures": fails})
        say(f"{a.label}: top-1 {100 * acc['top1']:.2f}% ({-drop or 0.0:+.2f} pts), agreement {100 * agree:.2f}% "
            + ("ok" if not fails else "FAIL: " + "; ".join(fails)))
        rows.append(row)
    report = {
        "format": FORMAT, "passed": not failures and all(r["passed"] for r in rows), "failures": failures,
        "checkpoint": str(checkpoint), "source_sha256": reference_digest,
        "min_agreement": {**DEFAULT_MIN_AGREEMENT, **(min_agreement or {})}, "allow_other_source": allow_other_source,
        "allow_unreproduced": allow_unreproduced, "dataset": dataset,
        "data": str(data) if data is not None else None, "split": split, "limit": limit, "seed": seed, "count": len(images),
        "image_size": list(config.image_size), "class_names": list(config.class_names), "batch": batch,
        "recorded": recorded, "reproduces_training": reproduces, "artifacts": rows, "environment": _environment(),
    }
    files = write_eval_report(report, confusion(ref, config.n_classes), out_dir or Path(checkpoint).parent)
    return report, files


def _acc_fields(pred: SplitPredictions, acc: dict[str, Any]) -> dict[str, Any]:
    return {"count": acc["count"], "correct": acc["correct"], "top1": acc["top1"], "top5": acc["top5"],
            "per_class": acc["per_class"], "images_per_s": pred.images_per_s, "seconds": pred.seconds, "batch": pred.batch,
            "nonfinite": pred.nonfinite}


def _environment() -> dict[str, Any]:
    import platform

    env: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    return env
