"""Service API: load an engine (or ONNX) and classify images in a few lines.

    from rn_deploy import Engine
    eng = Engine.load("exports/demo/model.tensorrt.engine")   # or model.onnx
    preds = eng.predict([img1, img2])    # uint8 HxWxC arrays, any sizes inside the profiles
    preds[0].label, preds[0].probs       # class name, {class: probability} for every class, highest first

Normalisation (mean/std, channels) comes from the manifest/ONNX metadata written at export, so a
service never re-implements it. Images of equal size are batched together, in chunks no larger
than the engine's largest profile batch.

Threads: an ``Engine`` owns one execution context (TensorRT) or session binding (ONNX Runtime CUDA)
and serialises calls with a lock, so sharing one across threads is safe but not parallel. For
parallel inference give each thread (each CUDA stream) its own ``Engine.load(...)``: engines are
cheap to load again and each has its own context and stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import ModelConfig
from .errors import RnDeployError
from .filekind import expect
from .runners import BaseRunner, OrtRunner, TrtRunner


@dataclass
class Prediction:
    """One image's classification.

    Attributes:
        label: the most likely class name.
        index: its output index.
        score: its probability.
        probs: class name -> probability, highest first: every class, unless ``predict(top_k=k)``
            asked for the ``k`` most likely only.
    """

    label: str
    index: int
    score: float
    probs: dict[str, float]


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int] | None, channels: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWxC (or HxW) images -> normalised float32 NCHW, resized to ``size`` if given (bilinear, antialiased)."""
    batch = []
    for i, img in enumerate(images):
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise RnDeployError(f"image {i}: expected HxWxC uint8, got shape {a.shape}")
        if a.shape[2] != channels:
            how = "PIL: image.convert('RGB')" if channels == 3 else "PIL: image.convert('L')"
            raise RnDeployError(f"image {i}: has {a.shape[2]} channel(s), the model takes {channels}; convert it first ({how})")
        if a.dtype != np.uint8:
            raise RnDeployError(f"image {i}: dtype {a.dtype}, expected uint8 pixels 0-255; pass a normalised tensor instead")
        t = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float()
        if size is not None and tuple(t.shape[1:]) != tuple(size):
            t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        batch.append(t)
    shapes = {tuple(t.shape) for t in batch}
    if len(shapes) != 1:
        raise RnDeployError(f"images of different sizes {sorted(shapes)} in one batch; pass size= or use Engine.predict")
    x = torch.stack(batch) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - m) / s
    if not torch.isfinite(x).all():
        raise RnDeployError("input has NaN or Inf values after normalisation")
    return x


class Engine:
    """A loaded model for serving: TensorRT engine, or ONNX through ONNX Runtime."""

    def __init__(self, runner: BaseRunner, config: ModelConfig, max_batch: int):
        self.runner, self.config, self.max_batch = runner, config, max_batch
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, *, provider: str | None = None, cuda_graph: bool = False) -> Engine:
        """Load ``*.engine`` (TensorRT, manifest checked first) or ``*.onnx`` (ONNX Runtime: CUDA if available, else CPU)."""
        path = Path(path)
        if not path.exists():
            raise RnDeployError(f"{path}: no such file")
        kind = expect(path, "onnx", "engine").kind
        if kind == "onnx" or (kind == "unknown" and path.suffix == ".onnx"):
            from .export import read_onnx_config

            cfg = read_onnx_config(path)
            if cfg is None:
                raise RnDeployError(f"{path}: no rn-deploy metadata (class names, mean/std); export it with `rn-deploy export`")
            if provider is None:
                import onnxruntime as ort

                cuda_ok = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
                provider = "cuda" if cuda_ok else "cpu"
            return cls(OrtRunner(path, provider=provider, cuda_graph=cuda_graph), cfg, max_batch=1 << 30)
        trt = TrtRunner(path, cuda_graph=cuda_graph)
        if not trt.manifest.config:
            raise RnDeployError(f"{path}: manifest has no model config; build from an ONNX written by `rn-deploy export`")
        return cls(trt, ModelConfig.from_dict(trt.manifest.config), max(p.max[0] for p in trt.profiles))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits for a normalised NCHW float batch (chunked to the engine's max batch)."""
        outs = []
        with self._lock:
            for chunk in x.split(self.max_batch):
                why = self.runner.covers(tuple(chunk.shape))
                if why:
                    raise RnDeployError(why)
                outs.append(self.runner.infer(self.runner.prepare(chunk)).cpu())
        return torch.cat(outs)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, *, size: tuple[int, int] | None = None,
                top_k: int | None = None) -> list[Prediction]:
        """Classify uint8 HxWxC images (a list, or an NxHxWxC array) or an already normalised NCHW tensor.

        Args:
            images: the inputs, in order; results come back in the same order.
            size: resize every image to (H, W) first (bilinear, antialiased); None keeps each image's size.
            top_k: keep only the ``k`` most likely classes in each ``Prediction.probs``; None keeps every class.
        """
        cfg = self.config
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != cfg.in_channels:
                raise RnDeployError(f"input tensor of shape {tuple(images.shape)}: expected N x {cfg.in_channels} x H x W, "
                                    "normalised; pass uint8 HxWxC images to have them normalised for you")
            if not torch.isfinite(images).all():
                raise RnDeployError("input tensor has NaN or Inf values; clean the batch before inference")
            order, batches = list(range(len(images))), [images.float()]
        else:
            imgs = list(images)
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, im in enumerate(imgs):
                key = tuple(size) if size else tuple(np.asarray(im).shape[:2])
                groups.setdefault(key, []).append(i)
            order = [i for idx in groups.values() for i in idx]
            batches = [preprocess([imgs[i] for i in idx], size, cfg.in_channels, cfg.mean, cfg.std) for idx in groups.values()]
        probs = torch.cat([self.logits(b).softmax(1) for b in batches])
        result: list[Prediction | None] = [None] * len(order)
        k = min(top_k or cfg.n_classes, cfg.n_classes)
        for row, i in zip(probs, order, strict=True):
            top = row.topk(k)
            result[i] = Prediction(label=cfg.class_names[int(top.indices[0])], index=int(top.indices[0]), score=float(top.values[0]),
                                   probs={cfg.class_names[int(j)]: float(v) for v, j in zip(top.values, top.indices, strict=True)})
        return [p for p in result if p is not None]

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
