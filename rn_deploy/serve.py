"""Serve a model on a real Triton Inference Server: HTTP/gRPC KServe-v2, dynamic batching, per-request errors, metrics.

    rn-deploy serve exports/demo/model.onnx --name fashion        # or model.tensorrt.engine

``serve`` writes a Triton model repository (:func:`write_repository`: ``NAME/config.pbtxt`` for
Triton's Python backend and ``NAME/1/model.py``, which runs :class:`TritonPythonModel`) and runs the
``tritonserver`` that the ``nvidia-pytriton`` wheel bundles on it. The model contract (docs/formats.md):

- input ``image`` BYTES [1]: an encoded PNG/JPEG, decoded here, converted to the model's colour
  mode (:func:`rn_deploy.preprocess.convert_pil`) and preprocessed with
  :func:`rn_deploy.preprocess.preprocess`, the training evaluation's own function, so requests of
  any image size batch together;
- or input ``pixels`` UINT8 [-1, -1, C]: one raw HxWxC image;
- outputs ``label`` BYTES [1], ``index`` INT32 [1], ``score`` FP32 [1], ``probs`` FP32 [n_classes],
  class names from the model's metadata.

Triton's dynamic batcher gathers concurrent requests (up to ``max_batch``, waiting at most
``max_queue_delay_us``) into one ``execute`` call. Each request is read on its own: one the server
cannot read (not an image, truncated, over ``--max-pixels`` or ``--max-aspect``) gets its own
INVALID_ARG error (HTTP 400, gRPC INVALID_ARGUMENT) with one line naming the problem, and the valid
requests of the same call run as one :class:`Engine` batch. A fault of the server itself is
answered with an INTERNAL error (HTTP 500) carrying a short id; the server log has the detail
under that id. The statistics API is open (perf_analyzer, Model Analyzer); the model-repository,
shared-memory, trace and logging APIs need a header only the server knows.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError, RequestError, RnDeployError
from .preprocess import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from .triton import IMAGE, INDEX, LABEL, MODEL_PY, PIXELS, PROBS, SCORE, contract_config_pbtxt

DEFAULT_MODEL = "classifier"
SERVE_EXTRA = "pip install 'rn-deploy[serve]' (nvidia-pytriton, tritonclient[all])"
# APIs a client has no business calling on a classifier service: protected by a header only the server knows.
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
START_TIMEOUT_S = 180
IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


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
    max_aspect: float = DEFAULT_MAX_ASPECT
    exit_timeout_s: int = 4  # Triton waits this long for open HTTP connections, then in-flight requests: < 10 s in all


def _format_of(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in IMAGE_MAGIC.items() if data.startswith(magic)), None)


def _bounds(h: int, w: int, channels: int, sizes: list[tuple[int, int]], max_aspect: float) -> None:
    from .preprocess import check_bounds

    try:
        check_bounds(h, w, channels, sizes, max_aspect, who="the server", flag="--max-aspect")
    except RnDeployError as e:
        raise RequestError(str(e)) from None


def decode_image(data: bytes, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Encoded PNG/JPEG -> uint8 HxWxC in the model's colour mode; size and aspect are checked before any pixel is decoded.

    ``sizes``: the sizes preprocessing fits the image to (:func:`rn_deploy.preprocess.check_bounds`).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("empty image bytes; send an encoded PNG or JPEG")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise RequestError(f"image declares too many pixels ({e}); the server takes at most {max_pixels} (--max-pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        fmt = _format_of(data)
        if fmt:
            raise RequestError(f"truncated or corrupt {fmt} image ({len(data)} bytes): its header cannot be read; "
                               "send the whole file") from None
        raise RequestError(f"not an image ({len(data)} bytes starting {data[:8]!r}); send an encoded PNG or JPEG") from None
    w, h = img.size
    if w * h > max_pixels:
        raise RequestError(f"image of {w}x{h} = {w * h} pixels is over the server's --max-pixels {max_pixels}; resize it first")
    _bounds(h, w, channels, sizes or [], max_aspect)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(f"corrupt or truncated {img.format} image ({w}x{h}, {len(data)} bytes): {e}") from None
    from .preprocess import convert_pil

    a = np.asarray(convert_pil(img, channels))  # one copy of the pixels; preprocessing reads it without another
    del img
    return a[:, :, None] if a.ndim == 2 else a


def check_pixels(a: np.ndarray, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """One raw HxWxC uint8 image from the ``pixels`` input."""
    if a.ndim != 3 or a.shape[2] != channels:
        raise RequestError(f"pixels of shape {list(a.shape)}: the model takes H x W x {channels} uint8")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise RequestError(f"pixels of {a.shape[1]}x{a.shape[0]} are over the server's --max-pixels {max_pixels}")
    if min(a.shape[:2]) < 1:
        raise RequestError(f"pixels of shape {list(a.shape)}: empty image")
    _bounds(a.shape[0], a.shape[1], channels, sizes or [], max_aspect)
    return a


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
        probs, start = self.probabilities(images), 0
        for k, imgs in read:
            p = probs[start : start + len(imgs)]
            start += len(imgs)
            idx = p.argmax(1)
            answers[k] = {LABEL: self.labels[idx].reshape(-1, 1), INDEX: idx.astype(np.int32).reshape(-1, 1),
                          SCORE: p.max(1).astype(np.float32).reshape(-1, 1), PROBS: p}
        return answers

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Softmax of the engine's logits, preprocessed exactly as ``Engine.predict`` does."""
        from .sizes import run_in_range

        cfg = self.engine.config
        return run_in_range(images, cfg, self.engine.logits, max_aspect=self.max_aspect).softmax(1).numpy().astype(np.float32)


class TritonPythonModel:
    """The model Triton's Python backend runs (``NAME/1/model.py`` imports it): :class:`Classifier` per ``execute`` call.

    Its settings come from the config's ``parameters``: ``model`` (the ONNX/engine path),
    ``max_pixels``, ``max_aspect``. Runs inside the backend's stub process, where
    ``triton_python_backend_utils`` is importable.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from .engine import Engine

        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        model = Path(args["model_repository"]) / params["model"]  # a relative path is relative to this model's folder
        self.classifier = Classifier(Engine.load(model), int(params["max_pixels"]), float(params["max_aspect"]))

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


def config_pbtxt(name: str, model: Path, channels: int, n_classes: int, opts: ServeOptions) -> str:
    """The Python-backend model configuration (:func:`rn_deploy.triton.contract_config_pbtxt`) for these options."""
    return contract_config_pbtxt(name, str(Path(model).absolute()), channels, n_classes, max_batch=opts.max_batch,
                                 max_queue_delay_us=opts.max_queue_delay_us, instances=opts.instances,
                                 max_pixels=opts.max_pixels, max_aspect=opts.max_aspect)


def write_repository(repo: Path, opts: ServeOptions, channels: int, n_classes: int) -> Path:
    """``repo/NAME/config.pbtxt`` and ``repo/NAME/1/model.py``: what the bundled tritonserver runs; returns the model folder."""
    folder = repo / opts.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_pbtxt(opts.name, opts.model, channels, n_classes, opts))
    (folder / "1" / "model.py").write_text(MODEL_PY)
    return folder


def prefer_own_libpython() -> None:
    """Put this interpreter's ``lib/`` first on LD_LIBRARY_PATH for the tritonserver started here.

    Triton's Python backend stub links ``libpython3.X``; without this it loads the system one, which
    fails under another build of the same version (pyenv, conda): ``'_thread.RLock' object has no
    attribute '_recursion_count'`` or ``No module named 'numpy'``.
    """
    lib = str(Path(sys.base_prefix) / "lib")
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != lib]
    os.environ["LD_LIBRARY_PATH"] = ":".join([lib, *parts])


def tritonserver_dist() -> tuple[Path, Path, Path]:
    """The bundled tritonserver folder, its libraries and the Python-backend stub for this interpreter (nvidia-pytriton)."""
    try:
        import pytriton
        from pytriton.utils.distribution import get_libs_path, get_stub_path
    except ImportError as e:
        raise MissingDependencyError(f"serving needs the tritonserver of nvidia-pytriton ({e}); {SERVE_EXTRA}") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root, Path(get_libs_path()), Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))


def tritonserver_command(opts: ServeOptions, repo: Path, backends: Path, token: str, *extra: str) -> list[str]:
    """The tritonserver command line: our addresses and ports, statistics open, admin APIs behind ``token``."""
    root, _, _ = tritonserver_dist()
    return [str(root / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--http-address={opts.host}", f"--http-port={opts.http_port}", f"--grpc-address={opts.host}",
            f"--grpc-port={opts.grpc_port}", f"--metrics-address={opts.host}", f"--metrics-port={opts.metrics_port}",
            "--allow-gpu-metrics=false", f"--exit-timeout-secs={opts.exit_timeout_s}",
            f"--http-restricted-api={RESTRICTED_APIS}:rn-deploy-token={token}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:rn-deploy-token={token}", *extra]


def stage_backends(dest: Path) -> Path:
    """The Python backend with this interpreter's stub beside it (as PyTriton stages it): ``dest/python/``."""
    root, _, stub = tritonserver_dist()
    shutil.copytree(root / "backends", dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stub, dest / "python" / "triton_python_backend_stub")
    return dest


def server_env() -> dict[str, str]:
    """tritonserver's environment: this interpreter's libpython first, the bundled libraries, this interpreter's import path."""
    prefer_own_libpython()
    _, libs, _ = tritonserver_dist()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*env["LD_LIBRARY_PATH"].split(":"), str(libs)])
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the stub imports rn_deploy and its dependencies
    return env


def _ready_url(opts: ServeOptions) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(opts.host, opts.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{opts.http_port}/v2/models/{opts.name}/ready"


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _stop_server(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM (tritonserver answers what it holds, then exits); SIGKILL of its whole tree if it is still there after ``wait_s``."""
    if proc.poll() is not None:
        return
    stubs = process_tree(proc.pid)  # the backend stubs: once tritonserver is gone they are no longer its children
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass
    # A stub still unloading (torch's shutdown is slow on a loaded machine) holds nothing a client needs any more.
    deadline = time.monotonic() + 1
    for pid in [*stubs, proc.pid]:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    proc.wait()


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def serve(opts: ServeOptions, log: Callable[[str], None] = print, stop: threading.Event | None = None,
          on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Load the model, start tritonserver and serve until SIGTERM/SIGINT (or ``stop`` is set); then drain and exit.

    ``on_ready`` is called once the server answers, with its endpoints (``rn-deploy serve --json``
    prints them as one JSON object on stdout: a script can wait for that line). tritonserver's own
    log goes to stderr.

    Raises :class:`RnDeployError` (before any server process starts) for a bad model or a taken port.
    """
    from .engine import Engine
    from .triton import check_model_name

    if opts.max_batch < 1 or opts.instances < 1 or opts.max_pixels < 1 or opts.max_queue_delay_us < 0 or opts.max_aspect < 1:
        raise RnDeployError("--max-batch, --instances, --max-pixels and --max-aspect must be >= 1, --max-queue-delay-us >= 0")
    check_model_name(opts.name)
    engine = Engine.load(opts.model)  # refuses a bad model here, in one line, before any server starts
    cfg = engine.config
    engine.close()
    check_ports(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port, "--metrics-port": opts.metrics_port})
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="rn-deploy-serve.") as tmp:
        repo = Path(tmp) / "models"
        write_repository(repo, opts, cfg.in_channels, cfg.n_classes)
        cmd = tritonserver_command(opts, repo, stage_backends(Path(tmp) / "backends"), secrets.token_hex(16))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
                                env=server_env())
        try:
            url, deadline = _ready_url(opts), time.monotonic() + START_TIMEOUT_S
            while not _is_ready(url):
                if proc.poll() is not None:
                    raise RnDeployError(f"tritonserver exited with code {proc.returncode} before model {opts.name!r} was ready; "
                                        "see its log above")
                if time.monotonic() > deadline:
                    raise RnDeployError(f"model {opts.name!r} not ready after {START_TIMEOUT_S} s; see tritonserver's log above")
                if stop.wait(0.2):
                    break
            else:
                if on_ready is not None:
                    on_ready({"model": str(opts.model), "name": opts.name, "arch": cfg.arch, "classes": cfg.class_names,
                              "in_channels": cfg.in_channels, "image_size": cfg.image_size,
                              "http": f"{opts.host}:{opts.http_port}", "grpc": f"{opts.host}:{opts.grpc_port}",
                              "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics", "max_batch": opts.max_batch,
                              "instances": opts.instances, "max_pixels": opts.max_pixels, "max_aspect": opts.max_aspect,
                              "pid": os.getpid()})
                log(f"serving {opts.model} as model {opts.name!r} ({cfg.arch}, {cfg.n_classes} classes, {cfg.in_channels} channel(s), "
                    f"{cfg.image_size[0]}x{cfg.image_size[1]}): http {opts.host}:{opts.http_port}, grpc {opts.host}:{opts.grpc_port}, "
                    f"metrics {opts.host}:{opts.metrics_port}/metrics; SIGTERM or Ctrl-C stops")
                while not stop.wait(0.5):
                    if proc.poll() is not None:
                        raise RnDeployError(f"tritonserver exited unexpectedly (code {proc.returncode}); see its log above")
            log("stopping: answering requests in flight")
        finally:
            _stop_server(proc, opts.exit_timeout_s + 4)
    log("stopped")


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
