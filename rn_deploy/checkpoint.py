"""Checkpoint format ``rn-deploy/1``: config + state_dict, loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts::

    {"format": "rn-deploy/1", "config": ModelConfig as dict, "state_dict": {...}, "train": {...}}

so ``torch.load(weights_only=True)`` reads it and no Python object is ever unpickled. The config is
enough to rebuild the model through the registry (nanoGPT's habit).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_path
from .errors import CheckpointError, ModelError
from .filekind import expect
from .models import create_model
from .names import LAYOUTS
from .preprocess import IMAGENET_MEAN, IMAGENET_STD
from .strictjson import ToDict

FORMAT = "rn-deploy/1"


@dataclass
class ModelConfig(ToDict):
    """Everything needed to rebuild a model and feed it correctly.

    Attributes:
        arch: registry name (see ``rn-deploy models``).
        n_classes: number of outputs.
        in_channels: image channels.
        class_names: one label per output; defaults to "0", "1", ...
        mean: per-channel normalisation mean, for pixels scaled to [0, 1].
        std: per-channel normalisation std.
        image_size: (height, width) the model was trained and is evaluated at.
        presize: the square size training decoded image folders to before taking ``image_size``
            from it (None: images were used at their stored size); see :mod:`rn_deploy.preprocess`.
        layout: the input's memory layout, ``NCHW`` (ours) or ``NHWC`` (a foreign ONNX brought in by
            ``rn-deploy import``); every runner permutes the NCHW batches it is given to it.
        size_range: ``[lo, hi]``: the short-side sizes (px) where top-1 was measured within a chosen
            drop of its best (None: not measured; the training size is all that is known); see
            :mod:`rn_deploy.sizes`.
    """

    arch: str
    n_classes: int
    in_channels: int = 3
    class_names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    presize: int | None = None
    layout: str = "NCHW"
    size_range: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.n_classes)]
        if not self.mean:
            self.mean = list(IMAGENET_MEAN) if self.in_channels == 3 else [0.5] * self.in_channels
        if not self.std:
            self.std = list(IMAGENET_STD) if self.in_channels == 3 else [0.5] * self.in_channels
        if isinstance(self.image_size, int):
            self.image_size = [self.image_size, self.image_size]
        self.image_size = [int(s) for s in self.image_size]
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_names) != self.n_classes:
            raise ModelError(f"config has {len(self.class_names)} class names for n_classes={self.n_classes}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ModelError(f"mean/std need {self.in_channels} values (in_channels), got {len(self.mean)}/{len(self.std)}")
        if len(self.image_size) != 2:
            raise ModelError(f"image_size must be (height, width), got {self.image_size!r}")
        if self.layout not in LAYOUTS:
            raise ModelError(f"layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.size_range is not None:
            try:
                self.size_range = [int(s) for s in self.size_range]
            except (TypeError, ValueError):
                raise ModelError(f"size_range must be [lo, hi] pixels, got {self.size_range!r}") from None
            if len(self.size_range) != 2 or not 1 <= self.size_range[0] <= self.size_range[1]:
                raise ModelError(f"size_range must be [lo, hi] pixels with 1 <= lo <= hi, got {self.size_range!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def build(self) -> nn.Module:
        return create_model(self.arch, n_classes=self.n_classes, in_channels=self.in_channels)


def weights_sha256(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """The digest of a model's weights: sha256 over each state_dict entry (sorted by name) as name, dtype, shape, bytes.

    It names the checkpoint an artifact came from (ONNX metadata ``rn_deploy.source_sha256``, the engine
    manifest's ``source_sha256``) and, unlike the file's sha256, stays the same when a checkpoint is re-saved
    with other training notes.
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def recorded_eval(train: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation training recorded in a checkpoint's ``train`` dict (``{}`` when none)."""
    rec = train.get("eval")
    return rec if isinstance(rec, dict) else {}


def recorded_dataset(train: Mapping[str, Any]) -> str | None:
    """The dataset name training recorded (as written then: older runs say ``mnist-png``), None when none."""
    name = recorded_eval(train).get("dataset") or train.get("dataset")
    return str(name) if name else None


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode, CPU unless asked), its config and metrics."""

    model: nn.Module
    config: ModelConfig
    train: dict[str, Any]
    path: Path


def save_checkpoint(
    path: str | Path, model: nn.Module, config: ModelConfig, train: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Write ``model``'s weights with its config, atomically (temp file + rename).

    ``extra`` entries (e.g. optimiser state for resuming) are stored beside the standard keys; they
    must be weights-only-loadable values (tensors, numbers, strings, lists, dicts).
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DDP wrapper
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": config.to_dict(), "state_dict": state, "train": dict(train or {}), **extra}
    return write_checkpoint(path, payload)


def write_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a raw checkpoint dict (as :func:`read_checkpoint` returns it) atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write (disk full) as RuntimeError
            raise CheckpointError(f"{path}: write failed ({str(e).splitlines()[0][:120]}); check free space and permissions") from None
    return path


def torch_load_reason(e: BaseException) -> str:
    """The first line of a ``torch.load`` failure that says what was wrong with the file.

    PyTorch's weights-only unpickler opens its message with advice to load with
    ``weights_only=False``, which would run whatever code the file holds: never pass that on.
    """
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(e).__name__


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read the raw checkpoint dict safely, raising :class:`CheckpointError` for any bad file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; pass the model.pt written by `rn-deploy train`")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the checkpoint file inside it (e.g. {path / 'model.pt'})")
    expect(path, "checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # the pickle names a Python callable/class: code would run on a full load
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that only a full unpickle could build "
                f"(not a weights-only checkpoint); nothing was executed. Re-save it with rn-deploy"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({torch_load_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({torch_load_reason(e)[:160]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        tag = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path}: not an rn-deploy checkpoint (format tag {tag!r}, expected {FORMAT!r}); "
            "a bare state_dict can be wrapped with rn_deploy.checkpoint.import_state_dict"
        )
    for key in ("config", "state_dict"):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} dict; the file is damaged")
    return raw


def check_state_dict(path: Path, arch: str, model: nn.Module, state: dict[str, Any]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError(
            f"{path}: weights do not match arch {arch!r}: {'; '.join(parts)}; was it saved from another architecture?"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint, rebuild its model from the config and load the weights (eval mode).

    Raises:
        CheckpointError: missing file, not a checkpoint, unsafe pickle, unknown arch, or weights
            that do not fit the architecture. The message is one line naming the file.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(raw["config"])
        model = config.build()
    except (ModelError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None
    check_state_dict(path, config.arch, model, raw["state_dict"])
    model.load_state_dict(raw["state_dict"])
    model.eval().to(map_location)
    return Checkpoint(model=model, config=config, train=dict(raw.get("train") or {}), path=path)


def import_state_dict(state_path: str | Path, out_path: str | Path, config: ModelConfig) -> Path:
    """Wrap a bare ``state_dict`` (e.g. a torchvision ResNet's) into an rn-deploy checkpoint.

    The state_dict file itself is read with ``weights_only=True`` too.
    """
    state_path = Path(state_path)
    expect(state_path, "checkpoint")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state_dict"
        raise CheckpointError(f"{state_path}: not a weights-only state_dict ({torch_load_reason(e)[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: expected a dict of tensors, found {type(state).__name__}")
    model = config.build()
    check_state_dict(state_path, config.arch, model, state)
    model.load_state_dict(state)
    return save_checkpoint(out_path, model, config, {"imported_from": str(state_path)})
