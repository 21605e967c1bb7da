"""Accuracy on real data for every artifact: the checkpoint, its ONNX files and engines.

The library half of ``rn-deploy eval``:

- :func:`rn_deploy.datasets.sources.load_split` reads a dataset split as an ``ImageSet`` through the same
  readers and the same ``ImageSet.subset(limit, seed)`` as training, so ``--limit N --seed S``
  selects exactly the images ``train --limit N --seed S`` evaluated on;
- :func:`predict_split` streams that split through any runner (PyTorch, ONNX Runtime, TensorRT)
  in batches, preprocessed by :func:`rn_deploy.preprocess.eval_batch` (the function training
  evaluation uses), and keeps only top-5 indices per image;
- :func:`accuracy`, :func:`agreement` and :func:`confusion` turn predictions into numbers.

Over 400 lines: data loading, the per-artifact runners, the table and the plot of one verdict; splitting the
report writing into its own module is a follow-up (issue 16).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import ModelConfig
from .datasets import canonical_dataset
from .datasets.sources import ImageSet, default_split, load_split
from .errors import DataError, RnDeployError
from .log import Log
from .preprocess import eval_batch


@dataclass
class SplitPredictions:
    """What one runner predicted on one split.

    Attributes:
        name: the runner's name (e.g. ``ort-cpu-fp32``).
        top1: arg-max class per image, ``(N,)`` int64.
        top5: the ``min(5, n_classes)`` best classes per image, best first, ``(N, k)`` int64.
        labels: true class per image, ``(N,)`` int64.
        index: each image's position in the full split (``(N,)``), so disagreements can be found.
        seconds: wall time of the whole pass (preprocessing, transfer, inference).
        images_per_s: ``N / seconds``.
        nonfinite: images whose logits had NaN or Inf.
        batch: the batch size used (smaller than asked when an engine's profiles cap it).
    """

    name: str
    top1: np.ndarray
    top5: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    seconds: float
    images_per_s: float
    nonfinite: int = 0
    batch: int = 0

    def __len__(self) -> int:
        return len(self.labels)


def check_data_fits(images: ImageSet, config: ModelConfig, where: str = "data") -> None:
    """Raise a one-line :class:`DataError` when the images cannot be judged by this model."""
    if images.in_channels != config.in_channels:
        raise DataError(f"{where}: images have {images.in_channels} channel(s), the model takes {config.in_channels}; "
                        "evaluate on the dataset the model was trained on")
    n_data = len(images.class_names)
    if n_data != config.n_classes:
        raise DataError(f"{where}: {n_data} classes in the data, the model has {config.n_classes} outputs; "
                        "evaluate on the dataset the model was trained on")
    if not _default_names(config) and list(images.class_names) != config.class_names:
        diff = next(i for i, (a, b) in enumerate(zip(images.class_names, config.class_names, strict=True)) if a != b)
        raise DataError(f"{where}: class {diff} is {images.class_names[diff]!r} in the data but {config.class_names[diff]!r} "
                        "in the model; evaluate on the dataset the model was trained on")


def _default_names(config: ModelConfig) -> bool:
    """Class names "0", "1", ...: the model does not know its classes (an import), so any data's names fit."""
    return config.class_names == [str(i) for i in range(config.n_classes)]


def _fit_batch(runner: Any, batch: int, shape: tuple[int, int, int]) -> int:
    """The largest batch <= ``batch`` whose shape the runner covers (engines: their profiles)."""
    covers = getattr(runner, "covers", None)
    if covers is None:
        return batch
    b = batch
    while b >= 1:
        if covers((b, *shape)) is None:
            return b
        b //= 2
    raise RnDeployError(f"{getattr(runner, 'name', 'runner')}: {covers((1, *shape))}; rebuild it with a profile that "
                        f"covers {shape[1]}x{shape[2]} (the model's image size)")


class _Bar:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, desc: str, total: int):
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total, stats="")

    def update(self, n: int, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def predict_split(runner: Any, images: ImageSet, config: ModelConfig, *, batch: int = 256, log: Log | None = None,
                  progress: bool = True) -> SplitPredictions:
    """Run every image of ``images`` through ``runner`` in batches and keep the top-5 classes.

    Each batch is a slice of the uint8 images, preprocessed by :func:`rn_deploy.preprocess.eval_batch`
    at ``config.image_size`` with ``config.mean``/``config.std`` (what training evaluation does), then
    ``runner.prepare`` / ``runner.infer`` / ``runner.sync``. Only ``(N, 5)`` indices are kept, so
    memory does not grow with the number of classes.

    Args:
        runner: a :mod:`rn_deploy.runners` runner (entered or not; it is used as is).
        images: the split (see :func:`load_split`).
        config: the model's config (image size, normalisation, channels, classes).
        batch: images per batch (capped by an engine's profiles).
        log: one-line messages (the final speed).
        progress: show a progress bar on stderr.
    """
    if batch < 1:
        raise RnDeployError(f"--batch {batch}: must be at least 1")
    check_data_fits(images, config)
    n = len(images)
    name = str(getattr(runner, "name", type(runner).__name__))
    h, w = config.image_size
    b = _fit_batch(runner, batch, (config.in_channels, h, w))
    k = min(5, config.n_classes)
    top1 = np.empty(n, dtype=np.int64)
    top5 = np.empty((n, k), dtype=np.int64)
    nonfinite = 0
    bar = _Bar(progress and n > 0, f"eval {name}", n)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, b):
            x = eval_batch(images.images[start : start + b], (h, w), config.mean, config.std)
            out = runner.infer(runner.prepare(x))
            runner.sync()
            out = out.float()
            bad = ~torch.isfinite(out).all(dim=1)
            nonfinite += int(bad.sum())
            # NaN rows would otherwise arg-max to an arbitrary class: count them as wrong (-1).
            idx = out.nan_to_num(nan=-float("inf")).topk(k, dim=1).indices
            idx[bad] = -1
            idx = idx.cpu().numpy()
            top5[start : start + len(idx)] = idx
            top1[start : start + len(idx)] = idx[:, 0]
            done = start + len(idx)
            bar.update(len(idx), f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} img/s")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    pred = SplitPredictions(name=name, top1=top1, top5=top5, labels=images.labels.numpy().astype(np.int64),
                            index=(images.index.numpy() if images.index is not None else np.arange(n)).astype(np.int64),
                            seconds=seconds, images_per_s=n / seconds if seconds > 0 else 0.0, nonfinite=nonfinite, batch=b)
    if log:
        log(f"eval {name}: {n} images in {seconds:.1f}s ({pred.images_per_s:,.0f} img/s, batch {b})")
    return pred


def _n_and_names(n_classes: int | Sequence[str]) -> tuple[int, list[str]]:
    if isinstance(n_classes, int):
        return n_classes, [str(i) for i in range(n_classes)]
    names = [str(c) for c in n_classes]
    return len(names), names


def accuracy(pred: SplitPredictions, n_classes: int | Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5 (None with <= 5 classes) and per-class top-1 of ``pred``, as fractions in [0, 1].

    Returns:
        ``{"count", "correct", "top1", "top5", "per_class": [{"class", "count", "correct", "top1"}]}``;
        a class with no images has ``top1`` None. ``correct`` is exact, for comparisons that must be.
    """
    n, names = _n_and_names(n_classes)
    count = len(pred)
    hit = pred.top1 == pred.labels
    correct = int(hit.sum())
    top5 = None
    if n > 5:
        top5 = float((pred.top5 == pred.labels[:, None]).any(axis=1).mean()) if count else 0.0
    per_class = []
    for c in range(n):
        sel = pred.labels == c
        cnt, cor = int(sel.sum()), int(hit[sel].sum())
        per_class.append({"class": names[c], "count": cnt, "correct": cor, "top1": cor / cnt if cnt else None})
    return {"count": count, "correct": correct, "top1": correct / count if count else 0.0, "top5": top5, "per_class": per_class}


def agreement(pred: SplitPredictions, ref: SplitPredictions) -> tuple[float, np.ndarray]:
    """Fraction of images where ``pred`` and ``ref`` have the same top-1, and the split indices where they differ."""
    if len(pred) != len(ref) or not np.array_equal(pred.index, ref.index):
        raise RnDeployError(f"{pred.name} and {ref.name} were run on different images; cannot compare them")
    differ = pred.top1 != ref.top1
    frac = 1.0 - float(differ.mean()) if len(pred) else 1.0
    return frac, pred.index[differ]


def confusion(pred: SplitPredictions, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted (NaN predictions are dropped)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = pred.top1 >= 0
    np.add.at(m, (pred.labels[ok], pred.top1[ok]), 1)
    return m


# --------------------------------------------------------------------------------------------
# Judging artifacts against the reference
# --------------------------------------------------------------------------------------------

FORMAT = "rn-deploy-eval/1"
DEFAULT_MAX_DROP = {"fp16": 0.3, "int8": 1.0}  # top-1 points below the reference
# Every artifact must also pick the reference's class on at least this fraction of images: accuracy alone can pass an
# artifact of another model that happens to score as well (issue 24: 72.5% agreement, higher top-1, passed).
DEFAULT_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.95, "fp8": 0.95}
FP32_MIN_AGREEMENT = DEFAULT_MIN_AGREEMENT["fp32"]
OTHER_PRECISION_MIN_AGREEMENT = 0.95  # a precision not listed above
MAX_LISTED = 1000  # disagreeing indices listed per artifact in eval.json
BACKENDS = ("torch", "torch-fp16", "ort-cpu", "ort-cuda", "trt")


class EvalFailed(RnDeployError):
    """Evaluation ran, and an artifact lost too much accuracy (or could not run)."""


def onnx_precision(path: str | Path) -> str:
    """``fp32``, ``fp16`` or ``int8`` of an ONNX file: its ``rn_deploy.precision`` metadata, else its weights and Q/DQ nodes."""
    from .onnxfile import check_onnx_file, weights_fp16

    m = check_onnx_file(path)
    if any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul") for n in m.graph.node):
        return "int8"
    props = {p.key: p.value for p in m.metadata_props}
    if props.get("rn_deploy.precision") in ("fp32", "fp16", "int8"):
        return props["rn_deploy.precision"]
    return "fp16" if weights_fp16(m) else "fp32"


def limits_for(precision: str, max_drop: float | None, min_agreement: dict[str, float] | None = None) -> dict[str, float | None]:
    """The pass rule of an artifact: ``max_drop`` points of top-1 (explicit, or the precision's default) and the
    minimum top-1 agreement with the reference (``min_agreement[precision]``, else :data:`DEFAULT_MIN_AGREEMENT`)."""
    drop = max_drop if max_drop is not None else DEFAULT_MAX_DROP.get(precision)
    agree = {**DEFAULT_MIN_AGREEMENT, **(min_agreement or {})}.get(precision, OTHER_PRECISION_MIN_AGREEMENT)
    return {"max_drop_points": drop, "min_agreement": agree}


def parse_min_agreement(items: Sequence[str]) -> dict[str, float]:
    """``["0.98"]`` (every precision) or ``["fp16=0.995", "int8=0.9"]`` -> fractions per precision."""
    out: dict[str, float] = {}
    for item in items:
        prec, _, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            v = -1.0
        if not 0.0 <= v <= 1.0 or (prec and prec not in DEFAULT_MIN_AGREEMENT):
            raise RnDeployError(f"--min-agreement {item!r}: use [fp32=|fp16=|int8=|fp8=]FRACTION with a fraction in 0..1 "
                                "(e.g. fp16=0.995)")
        for p in [prec] if prec else list(DEFAULT_MIN_AGREEMENT):
            out[p] = v
    return out


def artifact_source(kind: str, path: Path) -> str | None:
    """The weights digest of the checkpoint an ONNX (metadata) or engine (manifest) was made from; None if not recorded."""
    if kind == "onnx":
        from .onnxfile import SOURCE_KEY, check_onnx_file, metadata_value

        return metadata_value(check_onnx_file(path), SOURCE_KEY)
    if kind == "engine":
        from .runtime import EngineManifest

        return EngineManifest.load(path).source_sha256
    return None


def source_status(path: Path, source: str | None, reference: str | None, checkpoint: str | Path, allow_other_source: bool) -> str:
    """``same``, ``unknown`` (nothing recorded: a foreign or older file) or ``other`` (allowed) for one artifact.

    Raises:
        RnDeployError: the artifact records another checkpoint's digest and ``allow_other_source`` is off. Only a
            known digest that differs is refused: a missing one is reported as ``unknown``, not guessed at.
    """
    if source is None or reference is None:
        return "unknown"
    if source == reference:
        return "same"
    if not allow_other_source:
        raise RnDeployError(f"{path}: made from another checkpoint (weights sha256 {source[:12]}), not {checkpoint} "
                            f"({reference[:12]}); judge the artifacts exported from this checkpoint, or pass "
                            "--allow-other-source to compare them anyway")
    return "other"


@dataclass
class Artifact:
    """One thing to evaluate: an ONNX file or an engine, on one backend."""

    kind: str  # "onnx" | "engine" | "checkpoint"
    path: Path
    backend: str  # ort-cpu | ort-cuda | trt | torch-fp16
    precision: str
    config: ModelConfig
    source: str | None = None  # weights digest of the checkpoint it came from, None when not recorded

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.backend})"


def _make_runner(a: Artifact) -> Any:
    from .runners import OrtRunner, TorchRunner, TrtRunner

    if a.backend in ("ort-cpu", "ort-cuda"):
        return OrtRunner(a.path, provider=a.backend.removeprefix("ort-"))
    if a.backend == "trt":
        return TrtRunner(a.path)
    if a.backend == "torch-fp16":
        return TorchRunner(a.path, device="cuda", precision="fp16")
    raise RnDeployError(f"unknown backend {a.backend!r}; choose from {', '.join(BACKENDS)}")


def _gpu_ort() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def cannot_run_here(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, known without loading anything (no GPU); None when it may."""
    if backend in ("trt", "ort-cuda", "torch-fp16") and not torch.cuda.is_available():
        return f"{backend}: no CUDA GPU visible"
    return None


def plan_artifacts(checkpoint: str | Path, config: ModelConfig, onnx: Sequence[str | Path] = (), engines: Sequence[str | Path] = (),
                   backends: Sequence[str] | None = None) -> list[Artifact]:
    """Which (artifact, backend) pairs to run: ONNX on ort-cuda where it runs, else ort-cpu; engines on trt.

    ``backends`` (any of :data:`BACKENDS`) picks explicitly: each ONNX runs on every listed ``ort-*``
    backend, engines only when ``trt`` is listed, and ``torch-fp16`` adds the checkpoint in FP16 (CUDA).
    """
    from .onnxfile import read_onnx_config
    from .runtime import EngineManifest

    for b in backends or ():
        if b not in BACKENDS:
            raise RnDeployError(f"--backends: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    ort_backends = [b for b in (backends or ()) if b.startswith("ort-")] if backends else (["ort-cuda"] if _gpu_ort() else ["ort-cpu"])
    out: list[Artifact] = []
    for p in map(Path, onnx):
        prec = onnx_precision(p)
        cfg = read_onnx_config(p)
        if cfg is None:  # a foreign ONNX: fed as the reference is, if it takes the same channels and gives as many classes
            from .reference import check_onnx_fits

            check_onnx_fits(p, config)
            cfg = config
        src = artifact_source("onnx", p)
        out += [Artifact("onnx", p, b, prec, cfg, src) for b in ort_backends]
    if backends is None or "trt" in backends:
        for p in map(Path, engines):
            if not p.exists():
                raise RnDeployError(f"{p}: no such engine file; build one with `rn-deploy build`")
            m = EngineManifest.load(p)
            cfg = ModelConfig.from_dict(m.config) if m.config else config
            out.append(Artifact("engine", p, "trt", m.precision, cfg, m.source_sha256))
    if backends and "torch-fp16" in backends:
        out.append(Artifact("checkpoint", Path(checkpoint), "torch-fp16", "fp16", config, None))
    return out


def _judge(acc: dict[str, Any], ref_acc: dict[str, Any], agree: float, nonfinite: int,
           limits: dict[str, float | None]) -> tuple[float, list[str]]:
    drop = 100.0 * (ref_acc["top1"] - acc["top1"])
    fails = []
    if limits["max_drop_points"] is not None and drop > limits["max_drop_points"] + 1e-9:
        fails.append(f"top-1 {100 * acc['top1']:.2f}% is {drop:.2f} points below the reference "
                     f"(allowed {limits['max_drop_points']:g})")
    if limits["min_agreement"] is not None and agree < limits["min_agreement"]:
        fails.append(f"agrees with the reference on {100 * agree:.2f}% of images (needs >= {100 * limits['min_agreement']:.1f}%)")
    if nonfinite:
        fails.append(f"{nonfinite} image(s) gave NaN/Inf logits")
    return drop, fails


# Public for rn_deploy.evaluate_sizes, which runs the same judgement at every image size.
def judge(acc: dict[str, Any], ref_acc: dict[str, Any], agree: float, nonfinite: int,
          limits: dict[str, float | None]) -> tuple[float, list[str]]:
    """An artifact's top-1 drop (points) below the reference and why it fails (empty: it passes)."""
    return _judge(acc, ref_acc, agree, nonfinite, limits)


def open_runner(a: Artifact) -> Any:
    """The runner of one planned artifact (not yet entered)."""
    return _make_runner(a)


def default_names(config: ModelConfig) -> bool:
    """Whether the model's class names are the placeholders "0", "1", ... (any data's names fit)."""
    return _default_names(config)


def _recorded(train: dict[str, Any], dataset: str, split: str, limit: int | None, seed: int, images: ImageSet) -> dict[str, Any] | None:
    """Training's own evaluation from the checkpoint, with ``same_images``: whether it judged exactly these images."""
    rec = train.get("eval")
    if not isinstance(rec, dict):
        return None
    try:
        rec_limit = rec.get("limit")
        count = len(images)
        whole = images.index is None and (rec_limit is None or int(rec_limit) >= count)
        same_subset = rec_limit is not None and limit == int(rec_limit) and int(rec.get("seed", 0)) == seed
        same = (canonical_dataset(str(rec.get("dataset"))) == dataset and rec.get("split") == split
                and int(rec.get("count", -1)) == count and (whole or same_subset))
    except (DataError, TypeError, ValueError):
        same = False
    return {**rec, "same_images": bool(same)}


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
    from .checkpoint import load_checkpoint, weights_sha256
    from .runners import RunnerUnavailable, TorchRunner

    say = log or (lambda _s: None)
    if checkpoint is None:
        if not onnx:
            raise RnDeployError("nothing to evaluate against: pass --checkpoint (the FP32 reference), or --onnx (the first is then the reference)")
        from .reference import onnx_reference

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
    dataset, data = _recorded_dataset(checkpoint, train, dataset, data)
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
    images = load_split(dataset, data, split, limit=limit, seed=seed,
                        presize=config.presize or max(config.image_size), channels=config.in_channels,
                        class_names=config.class_names if dataset == "imagefolder" and not _default_names(config) else None)
    check_data_fits(images, config, str(data or dataset))
    say(f"data: {dataset} {split}, {len(images)} images" + (f" (--limit {limit} --seed {seed})" if limit else ""))

    with ref_runner:
        ref = predict_split(ref_runner, images, config, batch=batch, log=say, progress=progress)
    ref_acc = accuracy(ref, config.class_names)
    recorded = _recorded(train, dataset, split, limit, seed, images)
    reproduces = None
    failures: list[str] = []
    if recorded and recorded["same_images"]:
        reproduces, rule = _reproduces(recorded, ref_acc["correct"], ref_device, len(images))
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
            with _make_runner(a) as runner:
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
        drop, fails = _judge(acc, ref_acc, agree, pred.nonfinite, limits)
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


def _recorded_dataset(checkpoint: str | Path, train: dict[str, Any], dataset: str | None, data: str | Path | None
                      ) -> tuple[str, str | Path | None]:
    """The dataset (and folder) to judge on: the one training recorded by default; another one is refused by name."""
    from .checkpoint import recorded_dataset, recorded_eval

    rec = recorded_eval(train)
    recorded = recorded_dataset(train)
    if dataset is None:
        if not recorded:
            raise DataError(f"{checkpoint}: records no training dataset; pass --dataset fashion-mnist|mnist|imagefolder")
        dataset = recorded
    dataset = canonical_dataset(dataset)
    if recorded and canonical_dataset(recorded) != dataset:
        raise DataError(f"{checkpoint}: trained on {canonical_dataset(recorded)}, not {dataset}: its accuracy on another "
                        f"dataset says nothing; omit --dataset (or pass --dataset {canonical_dataset(recorded)})")
    if data is None and rec.get("data"):
        data = str(rec["data"])
    return dataset, data


def _reproduces(recorded: dict[str, Any], correct: int, device: str, count: int) -> tuple[bool | None, str]:
    """Whether the reference's ``correct`` count reproduces training's on the same images, and the rule applied.

    Exact on the device type training evaluated on; on another (CPU vs CUDA kernels) up to 0.1% of the images (at least
    one) may flip; not comparable (None) when training recorded a reduced-precision evaluation.
    """
    if recorded.get("precision", "fp32") != "fp32":
        return None, f"training recorded a {recorded.get('precision')} evaluation"
    same_device = str(recorded.get("device", "")).split(":")[0] == device
    allowed = 0 if same_device else max(1, round(0.001 * count))
    rule = "exact, same device type" if same_device else f"within {allowed} image(s): training ran on {recorded.get('device')}"
    return abs(int(recorded.get("correct", -1)) - correct) <= allowed, rule


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


# --------------------------------------------------------------------------------------------
# Report: eval.json, eval.md, confusion.png, delta-*.png
# --------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def summary_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows (header first) of the per-artifact accuracy table, for Markdown and the terminal."""
    head = ["artifact", "backend", "precision", "top-1 %", "top-5 %", "Δ pts", "agree %", "img/s", "result"]
    rows = [head]
    for r in report["artifacts"]:
        if not r["ran"]:
            rows.append([r["name"], r["backend"], r["precision"], "-", "-", "-", "-", "-",
                         ("skipped: " if r["passed"] else "FAIL: ") + str(r["reason"])])
            continue
        rows.append([r["name"], r["backend"], r["precision"], _pct(r["top1"]), _pct(r["top5"]),
                     "ref" if r["kind"] in ("checkpoint", "onnx") and r["name"] == "reference" else f"{-r['drop_points'] or 0.0:+.2f}",
                     _pct(r["agreement"]), f"{r['images_per_s']:,.0f}",
                     "ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])])
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The accuracy table as aligned plain text (the terminal's and the demo's)."""
    rows = summary_table(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r[:-1], widths, strict=True)))
                     + "  " + r[-1] for r in rows)


def markdown(report: dict[str, Any]) -> str:
    rows = summary_table(report)
    sel = f"--limit {report['limit']} --seed {report['seed']}" if report["limit"] else "all images"
    lines = [f"# Accuracy: {'PASS' if report['passed'] else 'FAIL'}", "",
             f"{report['dataset']} `{report['split']}` split, {report['count']} images ({sel}), "
             f"{report['image_size'][0]}x{report['image_size'][1]} px; reference `{report['checkpoint']}`.", ""]
    rec = report.get("recorded")
    if rec and rec.get("same_images"):
        verdict = {True: "reproduces it exactly" if rec.get("rule", "").startswith("exact") else "reproduces it",
                   False: "does NOT reproduce it", None: "cannot be compared with it"}[report["reproduces_training"]]
        lines += [f"Training recorded top-1 {_pct(rec.get('top1'))}% on these images; the reference {verdict} "
                  f"({rec.get('rule')}).", ""]
    for f in report.get("failures", []):
        lines += [f"FAIL: {f}", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    ran = [r for r in report["artifacts"] if r["ran"]]
    lines += ["", "## Per-class top-1 %", "", "| class | " + " | ".join(r["name"] for r in ran) + " |", "|---|" + "---|" * len(ran)]
    for c, name in enumerate(report["class_names"]):
        lines.append(f"| {name} | " + " | ".join(_pct(r["per_class"][c]["top1"]) for r in ran) + " |")
    for r in ran[1:]:
        if r["disagree_count"]:
            shown = ", ".join(map(str, r["disagree"][:20]))
            lines += ["", f"{r['name']}: top-1 differs from the reference on {r['disagree_count']} image(s) "
                          f"(split indices {shown}{', ...' if r['disagree_count'] > 20 else ''})."]
    limits = ", ".join(f"{k} {v:g} pts" for k, v in DEFAULT_MAX_DROP.items())
    agree = ", ".join(f"{k} {100 * v:g}%" for k, v in report.get("min_agreement", DEFAULT_MIN_AGREEMENT).items())
    unknown = [r["name"] for r in report["artifacts"] if r.get("source") == "unknown"]
    other = [r["name"] for r in report["artifacts"] if r.get("source") == "other"]
    lines += ["", f"Rules: every artifact picks the reference's top-1 class on at least {agree} of images (--min-agreement); "
                  f"top-1 may drop at most {limits} (or --max-drop); the reference must reproduce the accuracy training "
                  f"recorded on the same images{' (waived: --allow-unreproduced)' if report.get('allow_unreproduced') else ''}.",
              f"Sources: artifacts must come from this checkpoint (weights sha256 {str(report.get('source_sha256'))[:12]})"
              + (f"; unknown source (no digest recorded): {', '.join(unknown)}" if unknown else "")
              + (f"; from another checkpoint (--allow-other-source): {', '.join(other)}" if other else "") + ".", ""]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in name).strip("-").replace("--", "-")


def _plots(report: dict[str, Any], conf: np.ndarray, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_path

    def save(fig: Any, path: Path) -> str:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return str(path)

    files: dict[str, str] = {}
    names = report["class_names"]
    n = len(names)
    big = n > 30
    fig, ax = plt.subplots(figsize=(min(4 + 0.5 * n, 16), min(3.5 + 0.5 * n, 15)))
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, np.maximum(rows, 1))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if not big:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ref = report["artifacts"][0]
    ax.set_title(f"Reference confusion matrix: top-1 {_pct(ref['top1'])}% on {report['count']} {report['split']} images")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    files["confusion"] = save(fig, out / "confusion.png")

    ref_pc = [c["top1"] for c in ref["per_class"]]
    for r in report["artifacts"][1:]:
        if not r["ran"]:
            continue
        delta = [100 * (c["top1"] - rc) if c["top1"] is not None and rc is not None else 0.0 for c, rc in zip(r["per_class"], ref_pc, strict=True)]
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 2), 4.5))
        ax.bar(range(n), delta, color=["tab:red" if d < 0 else "tab:green" for d in delta])
        ax.axhline(0, color="black", lw=0.8)
        if not big:
            ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("top-1 points vs reference")
        lim = max(1.0, *(abs(d) for d in delta)) * 1.15
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{r['name']} ({r['precision']}): per-class top-1 change vs reference\n"
                     f"{-r['drop_points'] or 0.0:+.2f} pts overall; top-1 differs on {r['disagree_count']} of {r['count']} images",
                     fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        files[f"delta-{_slug(r['name'])}"] = save(fig, out / f"delta-{_slug(r['name'])}.png")
    return files


def write_eval_report(report: dict[str, Any], conf: np.ndarray, out_dir: str | Path) -> dict[str, str]:
    """Write eval.json (strict JSON), eval.md, confusion.png and one delta-*.png per artifact that ran."""
    import json

    from ._io import atomic_write_text

    out = Path(out_dir)
    files = {"json": str(out / "eval.json"), "markdown": str(out / "eval.md")}
    files.update(_plots(report, conf, out))
    report["files"] = files
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2, allow_nan=False))
    atomic_write_text(out / "eval.md", markdown(report))
    return files


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What ``rn-deploy inspect model.pt`` shows: the config and the evaluation training recorded."""
    from .checkpoint import read_checkpoint
    from .sizes import size_range

    raw = read_checkpoint(path)
    cfg, train = raw["config"], raw.get("train") or {}
    rec = train.get("eval") if isinstance(train.get("eval"), dict) else None
    info: dict[str, Any] = {"checkpoint": str(path), "format": raw.get("format"), "arch": cfg.get("arch"),
                            "n_classes": cfg.get("n_classes"), "in_channels": cfg.get("in_channels"),
                            "image_size": cfg.get("image_size"), "presize": cfg.get("presize"), "epochs": train.get("epochs")}
    info["size_range"] = size_range(cfg).describe()
    if rec:
        sel = f"--limit {rec['limit']} --seed {rec.get('seed', 0)}" if rec.get("limit") else "all images"
        info["evaluation"] = (f"top-1 {100 * float(rec['top1']):.2f}% ({rec.get('correct')}/{rec.get('count')}) on "
                              f"{rec.get('dataset')} {rec.get('split')} ({sel}), {rec.get('precision', 'fp32')} on {rec.get('device')}")
        info["eval"] = rec
    else:
        info["evaluation"] = "not recorded (trained before rn-deploy recorded it, or imported)"
    return info
