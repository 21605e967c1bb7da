"""Serve a model on a real Triton Inference Server (NVIDIA PyTriton): HTTP/gRPC KServe-v2, dynamic batching, metrics.

    rn-deploy serve exports/demo/model.onnx --name fashion        # or model.tensorrt.engine

The model contract (docs/formats.md):

- input ``image`` BYTES [1]: an encoded PNG/JPEG, decoded here, converted to the model's colour
  mode (:func:`rn_deploy.preprocess.convert_pil`) and preprocessed with
  :func:`rn_deploy.preprocess.preprocess`, the training evaluation's own function, so requests of
  any image size batch together;
- or input ``pixels`` UINT8 [-1, -1, C]: one raw HxWxC image;
- outputs ``label`` BYTES [1], ``index`` INT32 [1], ``score`` FP32 [1], ``probs`` FP32 [n_classes],
  class names from the model's metadata.

Triton's dynamic batcher gathers concurrent requests (up to ``max_batch``, waiting at most
``max_queue_delay_us``) into one call of :class:`Classifier`, which runs one :class:`Engine` batch.
A request the server cannot read is answered with an error naming the problem; PyTriton answers a
batch as a whole, so requests batched in the same call as a bad one get that error too (see
docs/serving.md).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError, RequestError, RnDeployError

IMAGE, PIXELS = "image", "pixels"
LABEL, INDEX, SCORE, PROBS = "label", "index", "score", "probs"
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MODEL = "classifier"
SERVE_EXTRA = "pip install 'rn-deploy[serve]' (nvidia-pytriton, tritonclient[all])"


@dataclass
class ServeOptions:
    """What ``rn-deploy serve`` takes; ports 0 are not allowed (clients must know where to connect)."""

    model: Path
    name: str = DEFAULT_MODEL
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    exit_timeout_s: int = 4  # Triton waits this long for open HTTP connections, then in-flight requests: < 10 s in all


def decode_image(data: bytes, channels: int, max_pixels: int) -> np.ndarray:
    """Encoded PNG/JPEG -> uint8 HxWxC in the model's colour mode; the size is checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("empty image bytes; send an encoded PNG or JPEG")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise RequestError(f"image declares too many pixels ({e}); the server takes at most {max_pixels} (--max-pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(f"not an image ({len(data)} bytes starting {data[:8]!r}); send an encoded PNG or JPEG") from None
    w, h = img.size
    if w * h > max_pixels:
        raise RequestError(f"image of {w}x{h} = {w * h} pixels is over the server's --max-pixels {max_pixels}; resize it first")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(f"corrupt or truncated {img.format} image ({w}x{h}, {len(data)} bytes): {e}") from None
    from .preprocess import convert_pil

    a = np.asarray(convert_pil(img, channels))
    return a[:, :, None] if a.ndim == 2 else a


def check_pixels(a: np.ndarray, channels: int, max_pixels: int) -> np.ndarray:
    """One raw HxWxC uint8 image from the ``pixels`` input."""
    if a.ndim != 3 or a.shape[2] != channels:
        raise RequestError(f"pixels of shape {list(a.shape)}: the model takes H x W x {channels} uint8")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise RequestError(f"pixels of {a.shape[1]}x{a.shape[0]} are over the server's --max-pixels {max_pixels}")
    if min(a.shape[:2]) < 1:
        raise RequestError(f"pixels of shape {list(a.shape)}: empty image")
    return a


class Classifier:
    """The inference callable: a list of Triton requests -> one preprocessed batch -> one response per request."""

    def __init__(self, engine: Any, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.engine, self.max_pixels = engine, max_pixels
        cfg = engine.config
        self.labels = np.array([c.encode() for c in cfg.class_names], dtype=object)

    def read(self, request: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The images of one request (a request may carry several rows)."""
        ch = self.engine.config.in_channels
        if IMAGE in request and PIXELS in request:
            raise RequestError(f"send either {IMAGE!r} or {PIXELS!r}, not both")
        if IMAGE in request:
            return [decode_image(bytes(b), ch, self.max_pixels) for b in request[IMAGE].reshape(-1)]
        if PIXELS in request:
            return [check_pixels(a, ch, self.max_pixels) for a in request[PIXELS]]
        raise RequestError(f"no input: send {IMAGE!r} (encoded PNG/JPEG bytes) or {PIXELS!r} (uint8 H x W x {ch})")

    def __call__(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        per_request, problems = [], []
        for i, req in enumerate(requests):
            try:
                per_request.append(self.read(req))
            except RequestError as e:
                problems.append(f"request {i + 1} of {len(requests)} in this batch: {e}" if len(requests) > 1 else str(e))
        if problems:
            rest = len(requests) - len(problems)
            raise RequestError("; ".join(problems) + (f" ({rest} other request(s) batched with it were not run: resend them)"
                                                      if rest else ""))
        probs = self.probabilities([img for imgs in per_request for img in imgs])
        out, start = [], 0
        for imgs in per_request:
            p = probs[start : start + len(imgs)]
            start += len(imgs)
            idx = p.argmax(1)
            out.append({LABEL: self.labels[idx].reshape(-1, 1), INDEX: idx.astype(np.int32).reshape(-1, 1),
                        SCORE: p.max(1).astype(np.float32).reshape(-1, 1), PROBS: p})
        return out

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Softmax of the engine's logits, preprocessed exactly as ``Engine.predict`` does."""
        from .sizes import run_in_range

        cfg = self.engine.config
        return run_in_range(images, cfg, self.engine.logits).softmax(1).numpy().astype(np.float32)


def prefer_own_libpython() -> None:
    """Put this interpreter's ``lib/`` first on LD_LIBRARY_PATH for the tritonserver that PyTriton starts.

    Triton's Python backend stub links ``libpython3.X``; without this it loads the system one, which
    fails under another build of the same version (pyenv, conda): ``'_thread.RLock' object has no
    attribute '_recursion_count'`` or ``No module named 'numpy'``. PyTriton copies ``os.environ``
    when it starts the server, so setting it here, before ``Triton.run``, is enough.
    """
    lib = str(Path(sys.base_prefix) / "lib")
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != lib]
    os.environ["LD_LIBRARY_PATH"] = ":".join([lib, *parts])


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Fail early, in one line, when a port is taken (tritonserver would die after a slow start)."""
    if len(set(ports.values())) != len(ports):
        raise RnDeployError(f"ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise RnDeployError(f"{flag} {port}: not a TCP port (1-65535)")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
            try:
                s.bind((host, port))
            except OSError as e:
                raise RnDeployError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror}); "
                                    f"stop what uses it or pass another {flag}") from None


def _tensors(channels: int, n_classes: int) -> tuple[list[Any], list[Any]]:
    from pytriton.model_config import Tensor

    inputs = [Tensor(name=IMAGE, dtype=bytes, shape=(1,), optional=True),
              Tensor(name=PIXELS, dtype=np.uint8, shape=(-1, -1, channels), optional=True)]
    outputs = [Tensor(name=LABEL, dtype=bytes, shape=(1,)), Tensor(name=INDEX, dtype=np.int32, shape=(1,)),
               Tensor(name=SCORE, dtype=np.float32, shape=(1,)), Tensor(name=PROBS, dtype=np.float32, shape=(n_classes,))]
    return inputs, outputs


def serve(opts: ServeOptions, log: Callable[[str], None] = print, stop: threading.Event | None = None,
          on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Load the model, start tritonserver and serve until SIGTERM/SIGINT (or ``stop`` is set); then drain and exit.

    ``on_ready`` is called once the server answers, with its endpoints (``rn-deploy serve --json``
    prints them as one JSON object on stdout: a script can wait for that line).

    Raises :class:`RnDeployError` (before any server process starts) for a bad model or a taken port.
    """
    from .engine import Engine

    if opts.max_batch < 1 or opts.instances < 1 or opts.max_pixels < 1 or opts.max_queue_delay_us < 0:
        raise RnDeployError("--max-batch, --instances and --max-pixels must be >= 1, --max-queue-delay-us >= 0")
    engine = Engine.load(opts.model)
    check_ports(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port, "--metrics-port": opts.metrics_port})
    prefer_own_libpython()
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import Triton, TritonConfig
    except ImportError as e:
        raise MissingDependencyError(f"serving needs PyTriton ({e}); {SERVE_EXTRA}") from None

    cfg = engine.config
    classifier = Classifier(engine, opts.max_pixels)
    inputs, outputs = _tensors(cfg.in_channels, cfg.n_classes)
    config = TritonConfig(http_address=opts.host, grpc_address=opts.host, metrics_address=opts.host, http_port=opts.http_port,
                          grpc_port=opts.grpc_port, metrics_port=opts.metrics_port, exit_timeout_secs=opts.exit_timeout_s,
                          allow_gpu_metrics=False)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with Triton(config=config) as triton:
        triton.bind(model_name=opts.name, infer_func=[classifier] * opts.instances, inputs=inputs, outputs=outputs,
                    config=ModelConfig(max_batch_size=opts.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us)),
                    strict=False)
        triton.run()
        if on_ready is not None:
            on_ready({"model": str(opts.model), "name": opts.name, "arch": cfg.arch, "classes": cfg.class_names,
                      "in_channels": cfg.in_channels, "image_size": cfg.image_size, "http": f"{opts.host}:{opts.http_port}",
                      "grpc": f"{opts.host}:{opts.grpc_port}", "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics",
                      "max_batch": opts.max_batch, "instances": opts.instances, "pid": os.getpid()})
        log(f"serving {opts.model} as model {opts.name!r} ({cfg.arch}, {cfg.n_classes} classes, {cfg.in_channels} channel(s), "
            f"{cfg.image_size[0]}x{cfg.image_size[1]}): http {opts.host}:{opts.http_port}, grpc {opts.host}:{opts.grpc_port}, "
            f"metrics {opts.host}:{opts.metrics_port}/metrics; SIGTERM or Ctrl-C stops")
        while not stop.wait(0.5):
            if not triton.is_alive():
                raise RnDeployError("tritonserver exited unexpectedly; see its log above")
        log("stopping: answering requests in flight")
    log("stopped")


def process_tree(pid: int) -> list[int]:
    """``pid``'s descendants (Linux ``/proc``): ``serve``'s tritonserver and its Python-backend stubs."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB: what a server replica really holds."""
    kb = 0
    for p in [pid, *process_tree(pid)]:
        try:
            kb += next(int(x.split()[1]) for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return kb / 1024
