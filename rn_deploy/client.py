"""Talk to ``rn-deploy serve`` (or any Triton serving the same contract): classify images, load-test.

    rn-deploy classify 127.0.0.1:8000 shirt.png boot.jpg            # HTTP
    rn-deploy classify 127.0.0.1:8001 shirt.png --grpc --json
    rn-deploy loadtest 127.0.0.1:8000 --dataset fashion-mnist --concurrency 1,4,16,64 --duration 20 --out exports/load

A load test runs, for each concurrency N, N threads that each hold their own client and send one
image per request back to back for ``duration`` seconds (after one untimed warm-up request each);
latency is the client's wall time per request.
"""

from __future__ import annotations

import io
import json
import math
import platform
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, atomic_write_text
from .errors import DataError, MissingDependencyError, RnDeployError
from .serve import DEFAULT_MODEL, IMAGE, INDEX, LABEL, PROBS, SCORE, SERVE_EXTRA
from .strictjson import ToDict

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _host_port(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


def make_client(url: str, grpc: bool = False, timeout_s: float = 60.0) -> Any:
    """A tritonclient HTTP (or gRPC) client for ``host:port`` (an ``http://`` prefix is accepted)."""
    try:
        if grpc:
            import tritonclient.grpc as tc
            return tc.InferenceServerClient(_host_port(url))
        import tritonclient.http as th
        return th.InferenceServerClient(_host_port(url), connection_timeout=timeout_s, network_timeout=timeout_s)
    except ImportError as e:
        raise MissingDependencyError(f"the client needs tritonclient ({e}); {SERVE_EXTRA}") from None


def server_message(exc: BaseException) -> str:
    """The useful line of a server error: our RequestError's message rather than PyTriton's traceback."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    text = str(text or exc)
    m = re.search(r"RequestError: (.+)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else repr(exc)


def find_model(client: Any, model: str | None, grpc: bool) -> str:
    """Check that ``model`` (default: serve's default name) is ready; PyTriton keeps the repository index private."""
    name = model or DEFAULT_MODEL
    try:
        ready = client.is_model_ready(name)
    except Exception as e:  # noqa: BLE001 - any connection failure is one user-facing line
        raise RnDeployError(f"cannot reach a Triton server ({server_message(e)}); is `rn-deploy serve` running there"
                            f"{' (gRPC port?)' if grpc else ' (HTTP port?)'}?") from None
    if not ready:
        raise RnDeployError(f"model {name!r} is not ready on the server; pass --model NAME (the name given to `serve --name`)")
    return name


def _module(grpc: bool) -> Any:
    if grpc:
        import tritonclient.grpc as tc
        return tc
    import tritonclient.http as th
    return th


def request(client: Any, model: str, data: bytes, grpc: bool = False) -> dict[str, Any]:
    """Send one encoded image; return ``{label, index, score, probs}``. Server errors raise tritonclient's exception."""
    tc = _module(grpc)
    inp = tc.InferInput(IMAGE, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    outs = [tc.InferRequestedOutput(n) for n in (LABEL, INDEX, SCORE, PROBS)]
    res = client.infer(model, [inp], outputs=outs)
    return {"label": res.as_numpy(LABEL).reshape(-1)[0].decode(), "index": int(res.as_numpy(INDEX).reshape(-1)[0]),
            "score": float(res.as_numpy(SCORE).reshape(-1)[0]), "probs": res.as_numpy(PROBS)[0].astype(float).tolist()}


def classify(url: str, images: Sequence[str | Path | bytes], *, grpc: bool = False, model: str | None = None) -> list[dict[str, Any]]:
    """Classify files (or encoded bytes), one request each; a failed image gets ``{"error": ...}`` instead of a result."""
    client = make_client(url, grpc)
    try:
        name = find_model(client, model, grpc)
        out: list[dict[str, Any]] = []
        for img in images:
            src = "<bytes>" if isinstance(img, bytes) else str(img)
            try:
                data = img if isinstance(img, bytes) else Path(img).read_bytes()
            except OSError as e:
                out.append({"image": src, "error": f"cannot read: {e.strerror}"})
                continue
            try:
                out.append({"image": src, **request(client, name, data, grpc)})
            except Exception as e:  # noqa: BLE001 - tritonclient raises its own exception types per protocol
                out.append({"image": src, "error": server_message(e)})
        return out
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Load test
# --------------------------------------------------------------------------------------------


@dataclass
class LoadLevel:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    first_error: str | None = None


@dataclass
class LoadReport(ToDict):
    url: str
    model: str
    protocol: str
    images: int
    image_source: str
    duration_s: float
    levels: list[LoadLevel] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def folder_images(folder: str | Path, limit: int = 1000) -> list[bytes]:
    """Encoded images (by suffix) under ``folder``, sorted, at most ``limit``."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [p.read_bytes() for p in files]


def dataset_images(name: str, limit: int = 1000, data: str | Path | None = None) -> list[bytes]:
    """The first ``limit`` test images of a known dataset, PNG-encoded as a client would send them."""
    if name != "fashion-mnist":
        raise DataError(f"unknown dataset {name!r}; use fashion-mnist or --images DIR")
    from PIL import Image

    from rn_deploy.train.data import load_fashion_mnist

    x = load_fashion_mnist(data, "test").images[:limit]
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img[0].numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def run_level(url: str, model: str, images: Sequence[bytes], concurrency: int, duration_s: float, grpc: bool) -> LoadLevel:
    """``concurrency`` closed-loop clients for ``duration_s`` seconds."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errs: list[list[str]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    deadline = [math.inf]

    def worker(k: int) -> None:
        client = make_client(url, grpc)
        try:
            i = k
            try:
                request(client, model, images[i % len(images)], grpc)  # warm-up: connection set up, not timed
            except Exception as e:  # noqa: BLE001 - counted below as an error
                errs[k].append(server_message(e))
            start.wait()
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline[0]:
                    break
                i += concurrency
                try:
                    request(client, model, images[i % len(images)], grpc)
                    lat[k].append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - every failure is one error of this level
                    errs[k].append(server_message(e))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + duration_s
    for t in threads:
        t.join(duration_s + 120)
    seconds = time.perf_counter() - t0
    flat = [v for vs in lat for v in vs]
    errors = [e for es in errs for e in es]
    return LoadLevel(concurrency, len(flat), len(errors), round(seconds, 3), len(flat) / seconds, _percentile(flat, 50),
                     _percentile(flat, 90), _percentile(flat, 99), errors[0] if errors else None)


def loadtest(url: str, images: Sequence[bytes], concurrency: Sequence[int], duration_s: float, *, grpc: bool = False,
             model: str | None = None, image_source: str = "", log: Callable[[str], None] | None = None) -> LoadReport:
    """Requests/s, latency percentiles and errors per concurrency level."""
    if not images:
        raise DataError("no images to send")
    client = make_client(url, grpc)
    try:
        name = find_model(client, model, grpc)
    finally:
        client.close()
    rep = LoadReport(url, name, "grpc" if grpc else "http", len(images), image_source, duration_s,
                     machine={"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    for c in concurrency:
        level = run_level(url, name, images, c, duration_s, grpc)
        rep.levels.append(level)
        if log:
            log(format_level(level))
    return rep


def format_level(lv: LoadLevel) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return (f"concurrency {lv.concurrency:>3}: {lv.requests_per_s:8.1f} req/s, p50 {ms(lv.p50_ms)} ms, p90 {ms(lv.p90_ms)} ms, "
            f"p99 {ms(lv.p99_ms)} ms, {lv.errors} errors" + (f" (first: {lv.first_error})" if lv.first_error else ""))


def markdown(rep: LoadReport) -> str:
    lines = [f"# Load test: `{rep.model}` at {rep.url} ({rep.protocol})", "",
             f"{rep.images} images from {rep.image_source or 'the given set'}, {rep.duration_s:g} s per level, "
             f"{rep.machine.get('host')} ({rep.machine.get('cpu')}), {rep.machine.get('date')}.", "",
             "| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in rep.levels:
        cells = ["-" if v is None else f"{v:.2f}" for v in (lv.p50_ms, lv.p90_ms, lv.p99_ms)]
        lines.append(f"| {lv.concurrency} | {lv.requests} | {lv.requests_per_s:.1f} | {' | '.join(cells)} | {lv.errors} |")
    return "\n".join(lines) + "\n"


def plot(rep: LoadReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [lv.concurrency for lv in rep.levels]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(c, [lv.requests_per_s for lv in rep.levels], "o-", color="tab:blue", label="requests/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(c, [str(v) for v in c])
    ax.set_xlabel("concurrency (clients)")
    ax.set_ylabel("requests/s", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    for q, style in (("p50_ms", "s--"), ("p90_ms", "^--"), ("p99_ms", "v--")):
        ax2.plot(c, [getattr(lv, q) or float("nan") for lv in rep.levels], style, label=q.replace("_ms", ""), alpha=0.8)
    ax2.set_ylabel("latency (ms)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(h.get_label()) for h in lines], loc="upper left")
    ax.set_title(f"{rep.model}: throughput and latency ({rep.protocol})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(rep: LoadReport, out: str | Path) -> dict[str, str]:
    """loadtest.json (strict JSON), loadtest.md and loadtest.png in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "loadtest.json", "markdown": out / "loadtest.md", "png": out / "loadtest.png"}
    atomic_write_text(files["json"], json.dumps(rep.to_dict(), indent=2, allow_nan=False) + "\n")
    atomic_write_text(files["markdown"], markdown(rep))
    plot(rep, files["png"])
    return {k: str(v) for k, v in files.items()}
