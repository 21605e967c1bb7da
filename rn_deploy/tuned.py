"""The serving setting ``serve --tune`` chose for a model, saved beside it as ``MODEL.serving.json`` for serve and export-triton.

The file names the model's sha256: a model changed since (re-exported, rebuilt) makes it stale, and
the readers then warn and keep their own defaults instead of applying a setting measured on other weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, sha256_file

FORMAT = "rn-deploy-serving/1"
SETTINGS = ("max_batch", "max_queue_delay_us", "instances", "ort_threads")  # what a tune chooses; each a serve option
OPTIONAL = {"ort_threads": 0}  # settings a file written before they existed may lack: their default then
MINIMUM = {"max_batch": 1, "max_queue_delay_us": 0, "instances": 1, "ort_threads": 0}  # each setting's smallest value


def tuned_path(model: str | Path) -> Path:
    """``MODEL.serving.json`` beside ``model`` (``model.onnx`` -> ``model.onnx.serving.json``)."""
    m = Path(model)
    return m.with_name(m.name + ".serving.json")


def save_tuned(model: str | Path, settings: dict[str, int], record: dict[str, Any]) -> Path:
    """Write the chosen ``settings`` (and what was measured) beside ``model``, atomically; returns the file."""
    path = tuned_path(model)
    doc = {"format": FORMAT, "model": Path(model).name, "model_sha256": sha256_file(model),
           "settings": {k: int(settings[k]) for k in SETTINGS}, **record}
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def load_tuned(model: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, int] | None:
    """The saved settings for ``model``; None (with a warning) when the file is stale or unreadable, None when absent."""
    path = tuned_path(model)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        saved = doc["settings"]
        settings = {k: saved[k] if k in saved or k not in OPTIONAL else OPTIONAL[k] for k in SETTINGS}
        bad = [f"{k}={v!r}" for k, v in settings.items() if type(v) is not int or v < MINIMUM[k]]
        if bad:
            raise ValueError(f"{', '.join(bad)}: each must be a whole number >= "
                             + ", ".join(f"{MINIMUM[k]} ({k})" for k in SETTINGS))
        digest = doc["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        if warn:
            warn(f"warning: {path}: unreadable tuned setting ({type(e).__name__}: {e}); ignoring it; "
                 "rerun `rn-deploy serve MODEL --tune`")
        return None
    if digest != sha256_file(model):
        if warn:
            warn(f"warning: {path} is stale: it was tuned for another version of {Path(model).name} (sha256 differs); "
                 "ignoring it; rerun `rn-deploy serve MODEL --tune`")
        return None
    return settings
