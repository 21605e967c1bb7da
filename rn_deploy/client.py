"""Talk to ``rn-deploy serve`` (or any Triton serving the same contract): classify images, load-test.

    rn-deploy classify 127.0.0.1:8000 shirt.png boot.jpg            # HTTP
    rn-deploy classify 127.0.0.1:8001 shirt.png --grpc --json
    rn-deploy loadtest 127.0.0.1:8000 --dataset fashion-mnist --concurrency 1,4,16,64 --duration 20 --out exports/load

A load test runs, for each concurrency N, N closed-loop senders on one asyncio event loop
(tritonclient's ``aio`` clients, HTTP or gRPC), each sending one image per request back to back for
``duration`` seconds (after one untimed warm-up request each); latency is the client's wall time per
request. The report gives the client's own CPU use per level: near one full core (the event loop's
limit) means the client, not the server, set the pace (``client_bound``).
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import re
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
    """The useful line of a server error (the server's one-line message; an older server's ``RequestError: ...`` line)."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    text = str(text or exc)
    m = re.search(r"RequestError: (.+)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else repr(exc)


def find_model(client: Any, model: str | None, grpc: bool) -> str:
    """Check that ``model`` (default: serve's default name) is ready; the repository index is not open to clients."""
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
    client_cpu: float | None = None  # the load generator's CPU seconds per wall second (1.0 = one core)
    client_bound: bool = False  # the client used >= CLIENT_BOUND_CPU of a core: its figure is a floor, not the server's


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

    from rn_deploy.datasets.sources import load_fashion_mnist

    x = load_fashion_mnist(data, "test").images[:limit]
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img[0].numpy()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


CLIENT_BOUND_CPU = 0.9


def _aio_module(grpc: bool) -> Any:
    try:
        if grpc:
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http.aio as aio
    except ImportError as e:
        raise MissingDependencyError(f"the load test needs tritonclient's asyncio client ({e}); {SERVE_EXTRA}") from None
    return aio


async def _run_level_async(url: str, model: str, images: Sequence[bytes], concurrency: int, duration_s: float,
                           grpc: bool) -> tuple[list[float], list[str], float, float]:
    tc, aio = _module(grpc), _aio_module(grpc)
    client = aio.InferenceServerClient(_host_port(url))
    outs = [tc.InferRequestedOutput(n) for n in (LABEL, INDEX, SCORE, PROBS)]
    inputs = []
    for data in images:  # encoded once: the client's work per request is the request itself
        inp = tc.InferInput(IMAGE, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object))
        inputs.append([inp])
    lat: list[float] = []
    errs: list[str] = []
    go, warmed = asyncio.Event(), asyncio.Event()
    deadline, ready = [0.0], [0]

    async def worker(k: int) -> None:
        i = k
        try:
            await client.infer(model, inputs[i % len(inputs)], outputs=outs)  # warm-up: connection set up, not timed
        except Exception as e:  # noqa: BLE001 - counted as an error of this level
            errs.append(server_message(e))
        ready[0] += 1
        if ready[0] == concurrency:
            warmed.set()
        await go.wait()
        while (t0 := time.perf_counter()) < deadline[0]:
            i += concurrency
            try:
                await client.infer(model, inputs[i % len(inputs)], outputs=outs)
                lat.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is one error of this level
                errs.append(server_message(e))

    try:
        tasks = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
        await asyncio.wait_for(warmed.wait(), 120)
        t0, cpu0 = time.perf_counter(), time.process_time()
        deadline[0] = t0 + duration_s
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), duration_s + 120)
        return lat, errs, time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.close()


def run_level(url: str, model: str, images: Sequence[bytes], concurrency: int, duration_s: float, grpc: bool) -> LoadLevel:
    """``concurrency`` closed-loop senders for ``duration_s`` seconds, with the client's own CPU use."""
    lat, errors, seconds, cpu = asyncio.run(_run_level_async(url, model, images, concurrency, duration_s, grpc))
    client_cpu = cpu / seconds
    return LoadLevel(concurrency, len(lat), len(errors), round(seconds, 3), len(lat) / seconds, _percentile(lat, 50),
                     _percentile(lat, 90), _percentile(lat, 99), errors[0] if errors else None, round(client_cpu, 3),
                     client_cpu >= CLIENT_BOUND_CPU)


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
            f"p99 {ms(lv.p99_ms)} ms, {lv.errors} errors" + (f" (first: {lv.first_error})" if lv.first_error else "")
            + (f", client CPU {lv.client_cpu:.0%} of a core" if lv.client_cpu is not None else "")
            + (" (the client was the bottleneck: the server may do more)" if lv.client_bound else ""))


def markdown(rep: LoadReport) -> str:
    lines = [f"# Load test: `{rep.model}` at {rep.url} ({rep.protocol})", "",
             f"{rep.images} images from {rep.image_source or 'the given set'}, {rep.duration_s:g} s per level, "
             f"{rep.machine.get('host')} ({rep.machine.get('cpu')}), {rep.machine.get('date')}.", "",
             "| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | errors | client CPU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in rep.levels:
        cells = ["-" if v is None else f"{v:.2f}" for v in (lv.p50_ms, lv.p90_ms, lv.p99_ms)]
        cpu = "-" if lv.client_cpu is None else f"{lv.client_cpu:.0%}" + (" (client-bound)" if lv.client_bound else "")
        lines.append(f"| {lv.concurrency} | {lv.requests} | {lv.requests_per_s:.1f} | {' | '.join(cells)} | {lv.errors} | {cpu} |")
    if any(lv.client_bound for lv in rep.levels):
        lines += ["", f"Client-bound levels: the load generator used >= {CLIENT_BOUND_CPU:.0%} of a CPU core, so their req/s is a "
                  "floor for the server; measure them with perf_analyzer (docs/serving.md) or a client on another machine."]
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
