"""The model repository ``serve`` writes for the bundled tritonserver: ``NAME/config.pbtxt`` and ``NAME/1/model.py``.

The texts are :mod:`rn_deploy.triton`'s (``contract_config_pbtxt``, ``MODEL_PY``): export-triton's
``NAME_image`` model is the same files, with the model path relative instead of absolute.
"""

from __future__ import annotations

from pathlib import Path

from ..triton import MODEL_PY, contract_config_pbtxt
from .options import ServeOptions


def config_pbtxt(name: str, model: Path, channels: int, n_classes: int, opts: ServeOptions) -> str:
    """The Python-backend model configuration (:func:`rn_deploy.triton.contract_config_pbtxt`) for these options."""
    return contract_config_pbtxt(name, str(Path(model).absolute()), channels, n_classes, max_batch=opts.max_batch,
                                 max_queue_delay_us=opts.max_queue_delay_us, instances=opts.instances,
                                 max_pixels=opts.max_pixels, max_aspect=opts.max_aspect,
                                 max_batch_pixels=opts.max_batch_pixels, max_request_bytes=opts.max_request_bytes,
                                 ort_threads=opts.ort_threads)


def write_repository(repo: Path, opts: ServeOptions, channels: int, n_classes: int) -> Path:
    """``repo/NAME/config.pbtxt`` and ``repo/NAME/1/model.py``: what the bundled tritonserver runs; returns the model folder."""
    folder = repo / opts.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_pbtxt(opts.name, opts.model, channels, n_classes, opts))
    (folder / "1" / "model.py").write_text(MODEL_PY)
    return folder
