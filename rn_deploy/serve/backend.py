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
from ..triton import DEFAULT_MAX_BATCH_PIXELS, DEFAULT_MAX_REQUEST_BYTES, IMAGE, INDEX, LABEL, PIXELS, PROBS, SCORE
from .decode import check_pixels, decode_image

TRIM_AFTER_BYTES = 8 << 20
"""Bodies larger than this together give their memory back to the system (``malloc_trim``) once answered."""


class Classifier:
    """Triton requests -> each read on its own -> the readable ones as one preprocessed batch -> one answer per request.

    Args:
        engine: the :class:`rn_deploy.Engine` that runs the batches.
        max_pixels: W x H of one request's images together.
        max_aspect: long side / short side of one image.
        max_batch_pixels: decoded pixels held at once; a request past it runs in the call's next sub-batch.
        max_request_bytes: a request's bytes (encoded images or raw pixels) together.
    """

    def __init__(self, engine: Any, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT,
                 max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.engine, self.max_pixels, self.max_aspect = engine, max_pixels, max_aspect
        self.max_batch_pixels, self.max_request_bytes = max(max_batch_pixels, max_pixels), max_request_bytes
        cfg = engine.config
        self.labels = np.array([c.encode() for c in cfg.class_names], dtype=object)

    def sizes_for(self, h: int, w: int) -> list[tuple[int, int]]:
        """The sizes an image of ``h`` x ``w`` is fitted to in turn: the decode presize, then the size it really runs at
        (:func:`rn_deploy.sizes.target_size`, inside the recorded range); :class:`RequestError` if the engine cannot run it."""
        from ..sizes import target_size

        cfg = self.engine.config
        th, tw = target_size(cfg, h, w)
        if self.engine.runner.covers((1, cfg.in_channels, th, tw)):
            raise RequestError(f"image of {w}x{h} would run at {tw}x{th}, a size this engine's profiles do not take; "
                               "send it resized into the model's size range")
        return ([(cfg.presize, cfg.presize)] if cfg.presize else []) + [(th, tw)]

    def check_size(self, request: dict[str, np.ndarray]) -> int:
        """The request's bytes; :class:`RequestError` when they are over ``max_request_bytes``, before any is decoded."""
        n = request_bytes(request)
        if n > self.max_request_bytes:
            raise RequestError(f"request of {n} bytes is over the server's --max-request-bytes {self.max_request_bytes}; "
                               "send smaller images")
        return n

    def read(self, request: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The images of one request (a request may carry several rows); :class:`RequestError` if it cannot be read."""
        ch = self.engine.config.in_channels
        if IMAGE in request and PIXELS in request:
            raise RequestError(f"send either {IMAGE!r} or {PIXELS!r}, not both")
        self.check_size(request)
        images: list[np.ndarray] = []
        budget = self.max_pixels  # the images of one request share one --max-pixels budget
        if IMAGE in request:
            for b in request[IMAGE].reshape(-1):
                images.append(decode_image(bytes(b), ch, budget, self.max_aspect, self.sizes_for))
                budget -= images[-1].shape[0] * images[-1].shape[1]
            return images
        if PIXELS in request:
            for a in request[PIXELS]:
                images.append(check_pixels(a, ch, budget, self.max_aspect, self.sizes_for))
                budget -= a.shape[0] * a.shape[1]
            return images
        raise RequestError(f"no input: send {IMAGE!r} (encoded PNG/JPEG bytes) or {PIXELS!r} (uint8 H x W x {ch})")

    def answer(self, requests: list[dict[str, np.ndarray] | Exception]) -> list[dict[str, np.ndarray] | Exception]:
        """One answer per request, in order: its outputs, or the exception that failed it alone (a
        :class:`RequestError` for the client's fault; anything else while reading it is the server's). A request
        given as an exception (refused while its tensors were read) is answered with it.

        Requests run in sub-batches of at most ``max_batch_pixels`` decoded pixels, each run as soon as it is full, so
        concurrent worst-case requests hold one sub-batch of pixels, not all of theirs.
        """
        answers: list[dict[str, np.ndarray] | Exception] = [{} for _ in requests]
        batch: list[tuple[int, list[np.ndarray]]] = []
        held = 0
        for k, req in enumerate(requests):
            if isinstance(req, Exception):
                answers[k] = req
                continue
            try:
                imgs = self.read(req)
            except RequestError as e:  # its traceback would hold this frame, `answers` and the request's bytes: a cycle
                answers[k] = e.with_traceback(None)
                continue
            except Exception as e:  # noqa: BLE001 - reported per request by the caller
                answers[k] = e
                continue
            pixels = sum(a.shape[0] * a.shape[1] for a in imgs)
            if batch and held + pixels > self.max_batch_pixels:
                self.run(batch, answers)
                batch, held = [], 0
            batch.append((k, imgs))
            held += pixels
        if batch:
            self.run(batch, answers)
        return answers

    def run(self, batch: list[tuple[int, list[np.ndarray]]], answers: list[dict[str, np.ndarray] | Exception]) -> None:
        """Answer ``batch`` (request index, its images) as one engine call; if that call fails, each request alone, so
        only a request that fails by itself gets an error (every request failing alone: the call's error, one for all)."""
        try:
            probs = self.probabilities([img for _, imgs in batch for img in imgs])
        except Exception as e:  # noqa: BLE001 - retried per request below
            if len(batch) == 1:
                answers[batch[0][0]] = e
                return
            alone = [self._alone(imgs) for _, imgs in batch]
            for (k, _), a in zip(batch, alone, strict=True):
                answers[k] = e if all(isinstance(x, Exception) for x in alone) else a
            return
        outputs, start = batch_outputs(probs, self.labels), 0
        for k, imgs in batch:
            answers[k] = {n: v[start : start + len(imgs)] for n, v in outputs.items()}  # views: no copy per request
            start += len(imgs)

    def _alone(self, images: list[np.ndarray]) -> dict[str, np.ndarray] | Exception:
        try:
            return batch_outputs(self.probabilities(images), self.labels)
        except Exception as e:  # noqa: BLE001 - this request's own failure
            return e

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


def ort_settings(model_config: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    """ONNX Runtime settings for one model instance inside tritonserver (``Engine.load`` keywords).

    ``threads`` intra-op threads (``serve --ort-threads``); 0: the cores this process may use less one, shared by the
    instances (at least one each). The core left over is for what every request costs outside the model: tritonserver's
    HTTP/gRPC threads, the body guard and the backend's Python. On 2 cores that is one thread: about the same images
    per CPU-second as two and fewer requests/s (docs/benchmarks.md, issue 33); ``serve --tune`` measures both on the
    user's machine when its grid holds ``ort_threads=1,2``.
    Also: one inter-op thread (the graph runs sequentially), and a pool that sleeps between runs
    (``allow_spinning`` 0) instead of spinning on cores the server's other threads need.
    """
    if threads < 0:
        raise ValueError(f"ort_threads {threads}: must be >= 0 (0: the cores less one, shared by the instances)")
    instances = sum(int(g.get("count") or 1) for g in model_config.get("instance_group", [])) or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"threads": threads or max(1, (cores - 1) // instances),
            "session_config": {"session.intra_op.allow_spinning": "0", "inter_op_threads": "1"}}


def request_bytes(request: dict[str, np.ndarray]) -> int:
    """A request's bytes: its encoded images' lengths, or its raw pixels' size."""
    return sum(sum(len(b) for b in a.reshape(-1)) if a.dtype == object else a.nbytes for a in request.values())


def release_memory() -> None:
    """Free what only a reference cycle still holds, then give freed heap back to the system (glibc ``malloc_trim``):
    large bodies otherwise stay resident in the stub until the cyclic collector happens to run."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _params(args: dict[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}


class TritonPythonModel:
    """The model Triton's Python backend runs (``NAME/1/model.py`` imports it): :class:`Classifier` per ``execute`` call.

    Its settings come from the config's ``parameters``: ``model`` (the ONNX/engine path),
    ``max_pixels``, ``max_aspect``, ``max_batch_pixels``, ``max_request_bytes``, ``ort_threads``. Runs inside the
    backend's stub process, where ``triton_python_backend_utils`` is importable.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from ..engine import Engine

        params = _params(args)
        model = Path(args["model_repository"]) / params["model"]  # a relative path is relative to this model's folder
        settings = ort_settings(json.loads(args["model_config"]), int(params.get("ort_threads", 0)))
        share_torch_threads(settings["threads"])
        self.classifier = Classifier(Engine.load(model, **settings), int(params["max_pixels"]), float(params["max_aspect"]),
                                     int(params.get("max_batch_pixels", DEFAULT_MAX_BATCH_PIXELS)),
                                     int(params.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)))

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb

        def error(msg: str, code: Any) -> Any:
            return pb.InferenceResponse(error=pb.TritonError(msg, code))

        refs: dict[int, Any] = {}

        def fault(e: BaseException) -> Any:  # ours: a 500 with an id, the detail in the server log only, once per error
            if id(e) not in refs:
                ref = secrets.token_hex(4)
                pb.Logger.log_error(f"rn-deploy serve: internal error {ref}: "
                                    + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
                refs[id(e)] = error(f"internal server error (id {ref}; the server log has the detail)", pb.TritonError.INTERNAL)
            return refs[id(e)]

        inputs: list[dict[str, np.ndarray] | Exception] = []
        body = 0
        for req in requests:  # one request's tensors at a time: an over-limit body is dropped before the next is read
            d = {n: t.as_numpy() for n in (IMAGE, PIXELS) if (t := pb.get_input_tensor_by_name(req, n)) is not None}
            try:
                body += self.classifier.check_size(d)
                inputs.append(d)
            except RequestError as e:
                body += request_bytes(d)  # over the limit: the body that most needs its memory given back
                inputs.append(e.with_traceback(None))
            del d
        try:
            answers = self.classifier.answer(inputs)
        except Exception as e:  # noqa: BLE001 - the batch itself failed: every request of it gets the same id
            return [fault(e)] * len(requests)
        finally:
            del inputs
        out = [error(str(a), pb.TritonError.INVALID_ARG) if isinstance(a, RequestError) else fault(a)
               if isinstance(a, Exception) else pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in a.items()])
               for a in answers]
        del answers
        if body > TRIM_AFTER_BYTES:
            release_memory()
        return out

    def finalize(self) -> None:
        self.classifier.engine.close()
