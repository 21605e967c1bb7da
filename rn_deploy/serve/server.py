"""The server process: checks before it starts, tritonserver's launch, readiness, SIGTERM drain and stop."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RnDeployError
from .guard import BodyGuard
from .options import ServeOptions
from .procfs import alive, process_tree
from .repository import write_repository
from .tritonserver import server_env, stage_backends, tritonserver_command

START_TIMEOUT_S = 180
CHECK_TIMEOUT_S = 300  # the check imports torch and ONNX Runtime: slow on a loaded machine, still bounded

# Run in a child interpreter: loads the model as the backend stub will (Engine.load) and prints what the supervisor
# needs to know about it. The supervisor itself then never imports torch or ONNX Runtime (issue 33).
_CHECK_CODE = """import json, sys
from rn_deploy.errors import RnDeployError
try:
    from rn_deploy.engine import Engine
    from rn_deploy.serve.server import range_uncovered
    engine = Engine.load(sys.argv[1])
    try:
        cfg, why = engine.config, range_uncovered(engine)
    finally:
        engine.close()
    if why:
        raise RnDeployError(f"{sys.argv[1]}: {why}; serve resizes every image into that range: rebuild the engine with "
                            "profiles covering it (rn-deploy build --min/--max), or serve the ONNX")
except RnDeployError as e:
    print(str(e), file=sys.stderr)
    sys.exit(3)
json.dump({"arch": cfg.arch, "n_classes": cfg.n_classes, "in_channels": cfg.in_channels,
           "image_size": list(cfg.image_size), "class_names": list(cfg.class_names)}, sys.stdout)
sys.stdout.flush()
import os
os._exit(0)  # torch's interpreter shutdown is slow and checks nothing
"""


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
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    proc.wait()


def check_model(model: Path) -> dict[str, Any]:
    """Load ``model`` as the server will, in a short-lived child process; its config (arch, n_classes, in_channels,
    image_size, class_names). Raises :class:`RnDeployError` with the loader's one line when it is refused."""
    import json

    if not Path(model).is_file():
        raise RnDeployError(f"{model}: no such file")
    try:
        run = subprocess.run([sys.executable, "-c", _CHECK_CODE, str(model)], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, env=server_env(), timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RnDeployError(f"{model}: loading the model took over {CHECK_TIMEOUT_S} s; is the machine overloaded?") from None
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    if run.returncode == 3:
        raise RnDeployError(lines[-1] if lines else f"{model}: refused by the model loader")
    if run.returncode != 0:
        raise RnDeployError(f"{model}: loading the model failed (exit {run.returncode}): {lines[-1] if lines else 'no message'}")
    info: dict[str, Any] = json.loads(run.stdout)
    return info


def serve(opts: ServeOptions, log: Callable[[str], None] = print, stop: threading.Event | None = None,
          on_ready: Callable[[dict[str, Any]], None] | None = None, *, model_info: dict[str, Any] | None = None,
          server_log: Path | None = None) -> None:
    """Load the model, start tritonserver and serve until SIGTERM/SIGINT (or ``stop`` is set); then drain and exit.

    ``on_ready`` is called once the server answers, with its endpoints (``rn-deploy serve --json``
    prints them as one JSON object on stdout: a script can wait for that line). tritonserver's own
    log goes to stderr.

    ``model_info``: what :func:`check_model` returned for this model (the check is then not repeated);
    ``server_log``: a file for tritonserver's log instead of stderr.

    Raises :class:`RnDeployError` (before any server process starts) for a bad model or a taken port.
    """
    from ..triton import check_model_name
    from ..tuned import MINIMUM

    for key, low in {**MINIMUM, "max_pixels": 1, "max_request_bytes": 1}.items():  # the tunable ones: as tuned files
        value = getattr(opts, key)
        if type(value) is not int or value < low:
            raise RnDeployError(f"--{key.replace('_', '-')} {value!r}: must be a whole number >= {low}")
    if not opts.max_aspect >= 1:
        raise RnDeployError(f"--max-aspect {opts.max_aspect!r}: must be >= 1")
    if opts.max_bytes_in_flight < opts.max_request_bytes:
        raise RnDeployError(f"--max-bytes-in-flight {opts.max_bytes_in_flight} is below --max-request-bytes {opts.max_request_bytes}: "
                            "raise it")
    if opts.max_batch_pixels < opts.max_pixels:
        raise RnDeployError(f"--max-batch-pixels {opts.max_batch_pixels} is below --max-pixels {opts.max_pixels}: "
                            "an admitted request could never run; raise it")
    check_model_name(opts.name)
    cfg = model_info or check_model(opts.model)  # refuses a bad model here, in one line, before any server starts
    check_ports(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port, "--metrics-port": opts.metrics_port})
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="rn-deploy-serve.") as tmp:
        repo = Path(tmp) / "models"
        write_repository(repo, opts, cfg["in_channels"], cfg["n_classes"])
        upstream, guard = None, None
        if opts.body_guard:
            ports = free_ports(2)
            upstream = (ports[0], ports[1])
            guard = BodyGuard(opts.host, opts.http_port, opts.grpc_port, *upstream, opts.max_request_bytes,
                              opts.max_bytes_in_flight)
            try:
                guard.start()
            except OSError as e:
                guard.stop(0)
                raise RnDeployError(f"cannot listen on {opts.host} ports {opts.http_port}/{opts.grpc_port} ({e}); "
                                    "stop what uses them or pass other --http-port/--grpc-port") from None
        cmd = tritonserver_command(opts, repo, stage_backends(Path(tmp) / "backends"), secrets.token_hex(16), upstream)
        try:
            with open(server_log, "ab") if server_log else open(os.devnull, "rb") as f:
                out = f.fileno() if server_log else sys.stderr.fileno()
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=server_env())
        except BaseException:
            if guard is not None:
                guard.stop(0)
            raise
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
                    on_ready({"model": str(opts.model), "name": opts.name, "arch": cfg["arch"], "classes": cfg["class_names"],
                              "in_channels": cfg["in_channels"], "image_size": cfg["image_size"],
                              "http": f"{opts.host}:{opts.http_port}", "grpc": f"{opts.host}:{opts.grpc_port}",
                              "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics", "max_batch": opts.max_batch,
                              "instances": opts.instances, "ort_threads": opts.ort_threads, "max_pixels": opts.max_pixels, "max_aspect": opts.max_aspect,
                              "max_batch_pixels": opts.max_batch_pixels, "max_request_bytes": opts.max_request_bytes,
                              "max_bytes_in_flight": opts.max_bytes_in_flight, "body_guard": opts.body_guard,
                              "pid": os.getpid()})
                log(f"serving {opts.model} as model {opts.name!r} ({cfg['arch']}, {cfg['n_classes']} classes, "
                    f"{cfg['in_channels']} channel(s), {cfg['image_size'][0]}x{cfg['image_size'][1]}): http {opts.host}:{opts.http_port}, grpc {opts.host}:{opts.grpc_port}, "
                    f"metrics {opts.host}:{opts.metrics_port}/metrics; SIGTERM or Ctrl-C stops")
                while not stop.wait(0.5):
                    if proc.poll() is not None:
                        raise RnDeployError(f"tritonserver exited unexpectedly (code {proc.returncode}); see its log above")
            log("stopping: answering requests in flight")
        finally:
            if guard is not None:
                guard.drain()  # new requests and bodies waiting for room: 503 "stopping" now, not a reset at exit
            _stop_server(proc, opts.exit_timeout_s + 4)
            if guard is not None:
                guard.stop(0)
    log("stopped")


def range_uncovered(engine: Any) -> str | None:
    """Why ``engine``'s profiles cannot run every size of its model's size range at batch 1 (None when they can)."""
    from ..sizes import size_range, target_size

    cfg = engine.config
    rng = size_range(cfg)
    for side in range(rng.lo, rng.hi + 1):
        h, w = target_size(cfg, side, side * 4)  # short side `side`: the size an image of it runs at
        if engine.runner.covers((1, cfg.in_channels, h, w)):
            return (f"its profiles do not take {w}x{h}, inside the model's size range {rng.describe()}")
    return None


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


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (for servers started by ``serve --tune`` and tests)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
