"""Accuracy on real data for every artifact: the checkpoint, its ONNX files and engines.

The library half of ``rn-deploy eval``, one concern per module:

- :func:`rn_deploy.datasets.sources.load_split` reads a dataset split as an ``ImageSet`` through the same
  readers and the same ``ImageSet.subset(limit, seed)`` as training, so ``--limit N --seed S``
  selects exactly the images ``train --limit N --seed S`` evaluated on;
- :mod:`.predict`: :func:`predict_split` streams that split through any runner (PyTorch, ONNX Runtime, TensorRT)
  in batches, preprocessed by :func:`rn_deploy.preprocess.eval_batch` (the function training
  evaluation uses), and keeps only top-5 indices per image;
- :mod:`.scores`: :func:`accuracy`, :func:`agreement` and :func:`confusion` turn predictions into numbers;
- :mod:`.gates`: the pass rule of an artifact (:func:`limits_for`, :func:`judge`);
- :mod:`.artifacts`: which (artifact, backend) pairs run (:func:`plan_artifacts`) and where each came from;
- :mod:`.recorded`: the evaluation training recorded, and whether the reference reproduces it;
- :mod:`.run`: :func:`run_eval`, the whole verdict; :mod:`.report`: its table, eval.json, eval.md and plots;
- :mod:`.sizes`: the same verdict at each image size (``rn-deploy eval --sizes``).
"""

from ..datasets import canonical_dataset
from ..datasets.sources import ImageSet, default_split, load_split
from .artifacts import (
    BACKENDS,
    Artifact,
    artifact_source,
    cannot_run_here,
    onnx_precision,
    open_runner,
    plan_artifacts,
    source_status,
)
from .gates import (
    DEFAULT_MAX_DROP,
    DEFAULT_MIN_AGREEMENT,
    FP32_MIN_AGREEMENT,
    OTHER_PRECISION_MIN_AGREEMENT,
    judge,
    limits_for,
    parse_min_agreement,
)
from .predict import SplitPredictions, check_data_fits, default_names, load_judged_split, predict_split
from .recorded import checkpoint_info
from .report import format_table, markdown, summary_table, write_eval_report
from .run import FORMAT, MAX_LISTED, EvalFailed, run_eval
from .scores import accuracy, agreement, confusion, lost_images
from .sizes import at_size, run_sizes, size_markdown

__all__ = [
    "BACKENDS", "DEFAULT_MAX_DROP", "DEFAULT_MIN_AGREEMENT", "FORMAT", "FP32_MIN_AGREEMENT", "MAX_LISTED",
    "OTHER_PRECISION_MIN_AGREEMENT", "Artifact", "EvalFailed", "ImageSet", "SplitPredictions", "accuracy", "agreement",
    "artifact_source", "at_size", "canonical_dataset", "cannot_run_here", "check_data_fits", "checkpoint_info", "confusion", "default_names", "default_split",
    "format_table", "judge", "limits_for", "load_judged_split", "load_split", "lost_images", "markdown", "onnx_precision", "open_runner", "parse_min_agreement",
    "plan_artifacts", "predict_split", "run_eval", "run_sizes", "size_markdown", "source_status", "summary_table", "write_eval_report",
]
