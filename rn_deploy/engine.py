"""Service API: load an engine (or ONNX) and classify images in a few lines.

    from rn_deploy import Engine
    eng = Engine.load("exports/demo/model.tensorrt.engine")   # or model.onnx
    preds = eng.predict([img1, img2])    # uint8 HxWxC arrays, any sizes inside the profiles
    preds[0].label, preds[0].probs       # class name, {class: probability} for every class, highest first

Normalisation (mean/std, channels) and the size range come from the manifest/ONNX metadata written
at export, so a service never re-implements them. Each image is resized into the model's size range
(:func:`rn_deploy.sizes.target_size`: the training size unless a range was measured and recorded);
images that share a target size are batched together, in chunks no larger than the engine's largest
profile batch.

Threads: ``Engine.load(path, contexts=N)`` keeps ONE deserialised engine (one copy of the weights
in GPU memory) and a pool of N runners, each with its own execution contexts and CUDA stream
(TensorRT), or its own stream and session (ONNX Runtime CUDA, where the stream is a session
option), or sharing one session (ONNX Runtime CPU, whose ``run`` is thread-safe). ``predict`` and
``logits`` are safe from any number of threads and run up to N calls in parallel; a call borrows a
runner from the pool for its whole batch and waits when all N are busy. Loading another ``Engine``
instead is not cheap: it deserialises the engine again and holds a second copy of its weights and
activations on the GPU.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import ModelConfig
from .errors import RnDeployError
from .filekind import expect
from .preprocess import preprocess
from .runners import BaseRunner, OrtRunner, TrtRunner
from .sizes import run_in_range


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


class Engine:
    """A loaded model for serving: TensorRT engine, or ONNX through ONNX Runtime, with a pool of runners.

    Args:
        runner: the first runner; ``contexts - 1`` more are made with its ``replica()``.
        config: the model's config (class names, normalisation, training size).
        max_batch: the largest batch one call may take (larger inputs are chunked).
        contexts: how many calls may run at once (one runner, context and stream each).
    """

    def __init__(self, runner: BaseRunner, config: ModelConfig, max_batch: int, contexts: int = 1):
        if contexts < 1:
            raise RnDeployError(f"contexts={contexts}: use 1 or more")
        self.runner, self.config, self.max_batch = runner, config, max_batch
        replica = getattr(runner, "replica", None)
        if contexts > 1 and replica is None:
            raise RnDeployError(f"{runner.name}: this runner cannot be replicated; use contexts=1")
        self.runners: list[BaseRunner] = [runner] + [replica() for _ in range(contexts - 1)] if replica else [runner]
        self._pool: queue.Queue[BaseRunner] = queue.Queue()
        for r in self.runners:
            self._pool.put(r)

    @property
    def contexts(self) -> int:
        return len(self.runners)

    @contextmanager
    def _borrow(self) -> Iterator[BaseRunner]:
        r = self._pool.get()
        try:
            yield r
        finally:
            self._pool.put(r)

    @classmethod
    def load(cls, path: str | Path, *, provider: str | None = None, cuda_graph: bool = False, contexts: int = 1,
             max_graphs: int = 8, threads: int | None = None, session_config: dict[str, str] | None = None) -> Engine:
        """Load ``*.engine`` (TensorRT, manifest checked first) or ``*.onnx`` (ONNX Runtime: CUDA if available, else CPU).

        Args:
            path: the engine or ONNX file.
            provider: ``cpu`` or ``cuda`` for ONNX (default: CUDA when available).
            cuda_graph: replay CUDA graphs, one per input shape.
            contexts: runners in the pool: calls that may run in parallel from different threads.
            max_graphs: per runner, the most CUDA-graph shapes kept (least recently used evicted).
            threads, session_config: ONNX Runtime's intra-op threads and session config entries
                (:class:`rn_deploy.runners.OrtRunner`); a TensorRT engine ignores them.
        """
        path = Path(path)
        if not path.exists():
            raise RnDeployError(f"{path}: no such file")
        kind = expect(path, "onnx", "engine").kind
        if kind == "onnx" or (kind == "unknown" and path.suffix == ".onnx"):
            from .onnxfile import read_onnx_config

            cfg = read_onnx_config(path)
            if cfg is None:
                raise RnDeployError(f"{path}: no rn-deploy metadata (class names, mean/std); export it with `rn-deploy export`, "
                                    "or bring a foreign ONNX in with `rn-deploy import MODEL.onnx -o OUT.onnx --classes ... "
                                    "--mean ... --std ...`")
            if provider is None:
                import onnxruntime as ort

                cuda_ok = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
                provider = "cuda" if cuda_ok else "cpu"
            ort_runner = OrtRunner(path, provider=provider, cuda_graph=cuda_graph, max_graphs=max_graphs, threads=threads,
                                   session_config=session_config)
            return cls(ort_runner, cfg, max_batch=1 << 30, contexts=contexts)
        trt = TrtRunner(path, cuda_graph=cuda_graph, max_graphs=max_graphs)
        if not trt.manifest.config:
            raise RnDeployError(f"{path}: manifest has no model config; build from an ONNX written by `rn-deploy export` "
                                "or `rn-deploy import`")
        return cls(trt, ModelConfig.from_dict(trt.manifest.config), max(p.max[0] for p in trt.profiles), contexts=contexts)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits for a normalised NCHW float batch (chunked to the engine's max batch); thread-safe."""
        outs = []
        with self._borrow() as runner:
            for chunk in x.split(self.max_batch):
                why = runner.covers(tuple(chunk.shape))
                if why:
                    raise RnDeployError(why)
                outs.append(runner.infer(runner.prepare(chunk)).cpu())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, *, size: tuple[int, int] | None = None,
                top_k: int | None = None) -> list[Prediction]:
        """Classify uint8 HxWxC images (a list, or an NxHxWxC array) or an already normalised NCHW tensor.

        Images go through :func:`rn_deploy.preprocess.preprocess`, the training evaluation's own
        policy: fitted (short side resized to cover, centre crop) to ``size``, or by default each to
        its own size clamped into the model's size range (:func:`rn_deploy.sizes.run_in_range`).

        Args:
            images: the inputs, in order; results come back in the same order.
            size: the (H, W) every image is fitted to; None: into the recorded size range (no range
                recorded: the training size ``config.image_size``).
            top_k: keep only the ``k`` most likely classes in each ``Prediction.probs``; None keeps every class.
        """
        cfg = self.config
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != cfg.in_channels:
                raise RnDeployError(f"input tensor of shape {tuple(images.shape)}: expected N x {cfg.in_channels} x H x W, "
                                    "normalised; pass uint8 HxWxC images to have them normalised for you")
            if not torch.isfinite(images).all():
                raise RnDeployError("input tensor has NaN or Inf values; clean the batch before inference")
            probs = self.logits(images.float()).softmax(1)
        else:
            imgs = list(images)
            if not imgs:
                return []
            if size:  # the caller's one size for every image (rn_deploy.preprocess's fit)
                probs = self.logits(preprocess(imgs, tuple(size), cfg.in_channels, cfg.mean, cfg.std, presize=cfg.presize)).softmax(1)
            else:
                probs = run_in_range(imgs, cfg, self.logits).softmax(1)
        order = list(range(len(probs)))
        result: list[Prediction | None] = [None] * len(order)
        k = min(top_k or cfg.n_classes, cfg.n_classes)
        for row, i in zip(probs, order, strict=True):
            top = row.topk(k)
            result[i] = Prediction(label=cfg.class_names[int(top.indices[0])], index=int(top.indices[0]), score=float(top.values[0]),
                                   probs={cfg.class_names[int(j)]: float(v) for v, j in zip(top.values, top.indices, strict=True)})
        return [p for p in result if p is not None]

    def close(self) -> None:
        for r in self.runners:
            r.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
