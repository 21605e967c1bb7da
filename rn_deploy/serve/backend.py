"""The model Triton's Python backend runs: each request read on its own, the readable ones as one batch, errors per request."""

from __future__ import annotations

import json
import os
import secrets
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RequestError
from ..preprocess import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from ..triton import IMAGE, INDEX, LABEL, PIXELS, PROBS, SCORE
from .decode import check_pixels, decode_image


class Classifier:
    """Triton requests -> each read on its own -> the readable ones as one preprocessed batch -> one answer per request."""

    def __init__(self, engine: Any, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT):
        self.engine, self.max_pixels, self.max_aspect = engine, max_pixels, max_aspect
        cfg = engine.config
        self.labels = np.array([c.encode() for c in cfg.class_names], dtype=object)
        self.sizes = ([(cfg.presize, cfg.presize)] if cfg.presize else []) + [(cfg.image_size[0], cfg.image_size[1])]

    def read(self, request: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The images of one request (a request may carry several rows); :class:`RequestError` if it cannot be read."""
        ch = self.engine.config.in_channels
        if IMAGE in request and PIXELS in request:
            raise RequestError(f"send either {IMAGE!r} or {PIXELS!r}, not both")
        images: list[np.ndarray] = []
        budget = self.max_pixels  # the images of one request share one --max-pixels budget
        if IMAGE in request:
            for b in request[IMAGE].reshape(-1):
                images.append(decode_image(bytes(b), ch, budget, self.max_aspect, self.sizes))
                budget -= images[-1].shape[0] * images[-1].shape[1]
            return images
        if PIXELS in request:
            for a in request[PIXELS]:
                images.append(check_pixels(a, ch, budget, self.max_aspect, self.sizes))
                budget -= a.shape[0] * a.shape[1]
            return images
        raise RequestError(f"no input: send {IMAGE!r} (encoded PNG/JPEG bytes) or {PIXELS!r} (uint8 H x W x {ch})")

    def answer(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """One answer per request, in order: its outputs, or the exception that failed it alone (a
        :class:`RequestError` for the client's fault; anything else while reading it is the server's)."""
        answers: list[dict[str, np.ndarray] | Exception] = []
        read: list[tuple[int, list[np.ndarray]]] = []
        for k, req in enumerate(requests):
            try:
                read.append((k, self.read(req)))
                answers.append({})
            except Exception as e:  # noqa: BLE001 - reported per request by the caller
                answers.append(e)
        images = [img for _, imgs in read for img in imgs]
        if not images:
            return answers
        outputs, start = batch_outputs(self.probabilities(images), self.labels), 0
        for k, imgs in read:
            answers[k] = {n: v[start : start + len(imgs)] for n, v in outputs.items()}  # views: no copy per request
            start += len(imgs)
        return answers

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Softmax of the engine's logits, preprocessed exactly as ``Engine.predict`` does."""
        from ..sizes import run_in_range

        cfg = self.engine.config
        return softmax(run_in_range(images, cfg, self.engine.logits, max_aspect=self.max_aspect).float().numpy())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in NumPy: torch's softmax on a batch x classes tensor woke its OpenMP pool for microseconds of work
    and cost more CPU than the model itself at batch 8 (0.64 ms vs 0.55 ms per call, profiled in the stub's path)."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32, copy=False)


def batch_outputs(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The four outputs for every row of the batch at once (one argmax and gather for the batch, not per request)."""
    idx = probs.argmax(1)
    return {LABEL: labels[idx].reshape(-1, 1), INDEX: idx.astype(np.int32).reshape(-1, 1),
            SCORE: np.take_along_axis(probs, idx[:, None], 1), PROBS: probs}


def share_torch_threads(threads: int) -> None:
    """torch (preprocessing in the stub) gets the same share of the cores as ONNX Runtime: with N instances
    each stub's default of every core would oversubscribe them N times."""
    import torch

    torch.set_num_threads(threads)


def ort_settings(model_config: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime settings for one model instance inside tritonserver (``Engine.load`` keywords).

    The instances share the cores this process may use with tritonserver's own threads: each gets its
    share for intra-op work, one inter-op thread (the graph runs sequentially), and a pool that sleeps
    between runs (``allow_spinning`` 0) instead of spinning on cores the server's HTTP/gRPC threads need.
    """
    instances = sum(int(g.get("count") or 1) for g in model_config.get("instance_group", [])) or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"threads": max(1, cores // instances),
            "session_config": {"session.intra_op.allow_spinning": "0", "inter_op_threads": "1"}}


class TritonPythonModel:
    """The model Triton's Python backend runs (``NAME/1/model.py`` imports it): :class:`Classifier` per ``execute`` call.

    Its settings come from the config's ``parameters``: ``model`` (the ONNX/engine path),
    ``max_pixels``, ``max_aspect``. Runs inside the backend's stub process, where
    ``triton_python_backend_utils`` is importable.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from ..engine import Engine

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model = Path(args["model_repository"]) / params["model"]  # a relative path is relative to this model's folder
        settings = ort_settings(config)
        share_torch_threads(settings["threads"])
        engine = Engine.load(model, **settings)
        self.classifier = Classifier(engine, int(params["max_pixels"]), float(params["max_aspect"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb

        def error(msg: str, code: Any) -> Any:
            return pb.InferenceResponse(error=pb.TritonError(msg, code))

        def fault(e: BaseException, n: int) -> list[Any]:  # ours: a 500 with an id, the detail in the server log only
            ref = secrets.token_hex(4)
            pb.Logger.log_error(f"rn-deploy serve: internal error {ref}: "
                                + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            return [error(f"internal server error (id {ref}; the server log has the detail)", pb.TritonError.INTERNAL)] * n

        inputs = [{n: t.as_numpy() for n in (IMAGE, PIXELS) if (t := pb.get_input_tensor_by_name(req, n)) is not None}
                  for req in requests]
        try:
            answers = self.classifier.answer(inputs)
        except Exception as e:  # noqa: BLE001 - the batch itself failed: every request of it gets the same id
            return fault(e, len(requests))
        return [error(str(a), pb.TritonError.INVALID_ARG) if isinstance(a, RequestError) else fault(a, 1)[0]
                if isinstance(a, Exception) else pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in a.items()])
                for a in answers]

    def finalize(self) -> None:
        self.classifier.engine.close()
