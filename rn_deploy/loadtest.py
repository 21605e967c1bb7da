"""Closed-loop load test of a Triton server: requests/s, latency percentiles, where the latency went, who set the pace.

    rn-deploy loadtest 127.0.0.1:8000 --dataset fashion-mnist --concurrency 1,4,16,64 --duration 20 --out exports/load

For each concurrency N, N closed-loop senders on one asyncio event loop each send one image per request
back to back for ``duration`` seconds (after one untimed warm-up request each); latency is the client's
wall time per request. Over HTTP each sender has its own keep-alive connection and sends requests built
once per image before the window (:mod:`rn_deploy.httpload`: a raw HTTP/1.1 client, since tritonclient's
aiohttp one cost ~0.7 ms per request); over gRPC they share tritonclient's ``aio`` client. The server's
statistics are read just before and just after the window (no request is in flight at either moment),
so their difference covers exactly the window's requests: each level's mean latency is split into
client-side, queue, compute input / infer / output and the server's remainder (:mod:`rn_deploy.serverstats`).

Who set the pace, and by how much (client-bound, starved for a core, or holding the rate back by its share of
each request; otherwise the server): :mod:`rn_deploy.loadlevel`.
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_text, pyplot, save_png
from .client import find_model, host_port, make_client, protocol_module, server_message
from .errors import DataError, MissingDependencyError
from .httpload import Connection, infer_request, split_address
from .loadlevel import CLIENT_BOUND_CPU, CLIENT_SHARE, SATURATED, STARVED_SHARE, LoadLevel
from .serve import IMAGE, INDEX, LABEL, PROBS, SCORE, SERVE_EXTRA
from .serverstats import fetch_async, instances_async, split
from .strictjson import ToDict

__all__ = ["CLIENT_BOUND_CPU", "CLIENT_SHARE", "SATURATED", "STARVED_SHARE", "LoadLevel", "LoadReport", "dataset_images",
           "folder_images", "format_level", "loadtest", "markdown", "run_level", "write_report"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
LAG_TICK_S = 0.002  # the ticker's sleep; how late it wakes is the loop's lag
OUTPUTS = (LABEL, INDEX, SCORE, PROBS)


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


def _aio_module(grpc: bool) -> Any:
    try:
        if grpc:
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http.aio as aio
    except ImportError as e:
        raise MissingDependencyError(f"the load test needs tritonclient's asyncio client ({e}); {SERVE_EXTRA}") from None
    return aio


@dataclass
class _Window:
    lat: list[float]
    errors: list[str]
    seconds: float
    cpu: float
    lag: list[float]
    before: dict[str, int] | None
    after: dict[str, int] | None
    instances: int


async def _stats(client: Any, model: str, grpc: bool, at_least: int = 0) -> dict[str, int] | None:
    """The counters once they have settled: Triton counts a request when it releases it, a moment after the client
    has its answer, so a read right after the last answer can miss it. Reads until two agree 20 ms apart and
    ``success_count`` >= ``at_least`` (at most ~2 s)."""
    try:
        last = await fetch_async(client, model, grpc)
        for _ in range(100):
            await asyncio.sleep(0.02)
            now = await fetch_async(client, model, grpc)
            if now == last and now.get("success_count", 0) >= at_least:
                break
            last = now
        return last
    except Exception:  # noqa: BLE001 - a server with its statistics closed still gets a load test, without the split
        return None


def _http_senders(url: str, model: str, images: Sequence[bytes], concurrency: int) -> tuple[list[Callable[[int], Awaitable[None]]],
                                                                                             Callable[[], Awaitable[None]]]:
    """One raw keep-alive connection per sender (:mod:`rn_deploy.httpload`), each image's request prebuilt."""
    host, port = split_address(url)
    requests = [infer_request(host, port, model, IMAGE, data, OUTPUTS) for data in images]
    conns = [Connection(host, port, OUTPUTS) for _ in range(concurrency)]

    def sender(conn: Connection) -> Callable[[int], Awaitable[None]]:
        return lambda i: conn.infer(requests[i % len(requests)])

    async def close() -> None:
        for c in conns:
            await c.close()

    return [sender(c) for c in conns], close


def _grpc_senders(client: Any, model: str, images: Sequence[bytes], concurrency: int) -> list[Callable[[int], Awaitable[Any]]]:
    """tritonclient's ``aio`` gRPC client, shared by the senders; each image's input tensor built once."""
    tc = protocol_module(True)
    outs = [tc.InferRequestedOutput(n) for n in OUTPUTS]
    inputs = []
    for data in images:
        inp = tc.InferInput(IMAGE, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object))
        inputs.append([inp])
    return [lambda i: client.infer(model, inputs[i % len(inputs)], outputs=outs)] * concurrency


async def _run_level_async(url: str, model: str, images: Sequence[bytes], concurrency: int, duration_s: float,
                           grpc: bool) -> _Window:
    aio = _aio_module(grpc)
    client = aio.InferenceServerClient(host_port(url))  # statistics and the model's config, outside the window
    close_senders: Callable[[], Awaitable[None]] | None = None
    if grpc:
        senders: Sequence[Callable[[int], Awaitable[Any]]] = _grpc_senders(client, model, images, concurrency)
    else:
        senders, close_senders = _http_senders(url, model, images, concurrency)
    lat: list[float] = []
    errs: list[str] = []
    go, warmed = asyncio.Event(), asyncio.Event()
    deadline, ready = [0.0], [0]

    async def worker(k: int) -> None:
        i, send = k, senders[k]
        try:
            await send(i)  # warm-up: connection set up, not timed
        except Exception as e:  # noqa: BLE001 - counted as an error of this level
            errs.append(server_message(e))
        ready[0] += 1
        if ready[0] == concurrency:
            warmed.set()
        await go.wait()
        while (t0 := time.perf_counter()) < deadline[0]:
            i += concurrency
            try:
                await send(i)
                lat.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is one error of this level
                errs.append(server_message(e))

    lags: list[float] = []

    async def ticker() -> None:
        while (t := time.perf_counter()) < deadline[0]:
            await asyncio.sleep(LAG_TICK_S)
            lags.append(max(0.0, time.perf_counter() - t - LAG_TICK_S))

    try:
        instances = await instances_async(client, model, grpc)
        tasks = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
        await asyncio.wait_for(warmed.wait(), 120)
        before = await _stats(client, model, grpc)  # every sender waits on `go`: nothing in flight
        t0, cpu0 = time.perf_counter(), time.process_time()
        deadline[0] = t0 + duration_s
        go.set()
        tick = asyncio.ensure_future(ticker())
        await asyncio.wait_for(asyncio.gather(*tasks), duration_s + 120)
        tick.cancel()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        expected = (before or {}).get("success_count", 0) + len(lat)
        after = await _stats(client, model, grpc, at_least=expected)  # every sender has its answer
        return _Window(lat, errs, seconds, cpu, lags, before, after, instances)
    finally:
        if close_senders is not None:
            await close_senders()
        await client.close()


def run_level(url: str, model: str, images: Sequence[bytes], concurrency: int, duration_s: float, grpc: bool) -> LoadLevel:
    """``concurrency`` closed-loop senders for ``duration_s`` seconds, with the client's own CPU use and the server's split."""
    w = asyncio.run(_run_level_async(url, model, images, concurrency, duration_s, grpc))
    client_cpu = w.cpu / w.seconds
    mean = float(np.mean(w.lat)) * 1e3 if w.lat else None
    parts = split(w.before, w.after, mean, w.seconds, w.instances) if w.before and w.after and mean is not None else None
    lv = LoadLevel(concurrency, len(w.lat), len(w.errors), round(w.seconds, 3), len(w.lat) / w.seconds, _percentile(w.lat, 50),
                   _percentile(w.lat, 90), _percentile(w.lat, 99), w.errors[0] if w.errors else None, round(client_cpu, 3),
                   client_cpu >= CLIENT_BOUND_CPU, None if mean is None else round(mean, 4), parts)
    if w.lag:
        lv.loop_lag_ms = round(float(np.mean(w.lag)) * 1e3, 4)
        busy = parts.busy if parts else None  # a model busy nearly all the window set the pace whatever the client did
        lv.client_starved = mean is not None and lv.loop_lag_ms > max(0.2, STARVED_SHARE * mean) and (busy or 0) < SATURATED
    lv.assess()
    return lv


def loadtest(url: str, images: Sequence[bytes], concurrency: Sequence[int], duration_s: float, *, grpc: bool = False,
             model: str | None = None, image_source: str = "", log: Callable[[str], None] | None = None) -> LoadReport:
    """Requests/s, latency percentiles, the latency split and errors per concurrency level."""
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


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_level(lv: LoadLevel) -> str:
    """Two lines: throughput, percentiles and errors; then where the mean latency went and who set the pace."""
    line = (f"concurrency {lv.concurrency:>3}: {lv.requests_per_s:8.1f} req/s, p50 {_ms(lv.p50_ms)} ms, p90 {_ms(lv.p90_ms)} ms, "
            f"p99 {_ms(lv.p99_ms)} ms, {lv.errors} errors" + (f" (first: {lv.first_error})" if lv.first_error else ""))
    s = lv.split
    where = (f"mean {_ms(lv.mean_ms)} ms = " + " + ".join(f"{k} {v:.2f}" for k, v in s.parts().items())
             + (f"; batches of {s.avg_batch:.1f} on average" if s.avg_batch else "")) if s else "server statistics unavailable"
    return f"{line}\n                 {where}; {lv.verdict}"


SPLIT_HEAD = "| concurrency | mean ms | client | queue | compute input | compute infer | compute output | server other | avg batch | model busy |"


def markdown(rep: LoadReport) -> str:
    lines = [f"# Load test: `{rep.model}` at {rep.url} ({rep.protocol})", "",
             f"{rep.images} images from {rep.image_source or 'the given set'}, {rep.duration_s:g} s per level, "
             f"{rep.machine.get('host')} ({rep.machine.get('cpu')}), {rep.machine.get('date')}.", "",
             "| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | errors | client CPU | client loop lag ms | client share |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in rep.levels:
        cells = ["-" if v is None else f"{v:.2f}" for v in (lv.p50_ms, lv.p90_ms, lv.p99_ms)]
        cpu = "-" if lv.client_cpu is None else f"{lv.client_cpu:.0%}" + (" (client-bound)" if lv.client_bound else "")
        lag = _ms(lv.loop_lag_ms) + (" (starved)" if lv.client_starved else "")
        share = "-" if lv.client_share is None else f"{lv.client_share:.0%}" + (" (held the rate back)" if lv.client_held else "")
        lines.append(f"| {lv.concurrency} | {lv.requests} | {lv.requests_per_s:.1f} | {' | '.join(cells)} | {lv.errors} | {cpu} | {lag} "
                     f"| {share} |")
    lines += ["", "Where the mean latency went (ms per request; queue and compute from the server's statistics over the "
              "window, client = the client's mean minus the server's own time):", "", SPLIT_HEAD, "|---:" * 10 + "|"]
    for lv in rep.levels:
        s = lv.split
        cells = [f"{v:.2f}" for v in s.parts().values()] + [_ms(s.avg_batch), "-" if s.busy is None else f"{s.busy:.0%}"] \
            if s else ["-"] * 8
        lines.append(f"| {lv.concurrency} | {_ms(lv.mean_ms)} | {' | '.join(cells)} |")
    lines += ["", *[f"- concurrency {lv.concurrency}: {lv.verdict}." for lv in rep.levels]]
    if any(lv.client_bound or lv.client_starved or lv.client_held for lv in rep.levels):
        lines += ["", f"Client-bound levels: the load generator used >= {CLIENT_BOUND_CPU:.0%} of a CPU core, its event loop "
                  f"waited for a core the server was using, or the client's own time was >= {CLIENT_SHARE:.0%} of each request "
                  f"while the model was busy < {SATURATED:.0%} of the window, so their req/s is a floor for the server (the "
                  "verdict says by how much); measure them with perf_analyzer (docs/serving.md) or a client on another machine."]
    return "\n".join(lines) + "\n"


def plot(rep: LoadReport, path: Path) -> None:
    plt = pyplot()
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
    save_png(fig, path)


def plot_split(rep: LoadReport, path: Path) -> None:
    """Stacked bars per concurrency: the mean latency's client, queue, compute and remaining server parts."""
    plt = pyplot()
    levels = [lv for lv in rep.levels if lv.split]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = [str(lv.concurrency) for lv in levels]
    bottom = [0.0] * len(levels)
    names = list(levels[0].split.parts()) if levels and levels[0].split else []
    for k in names:
        vals = [max(0.0, lv.split.parts()[k]) if lv.split else 0.0 for lv in levels]
        ax.bar(x, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xlabel("concurrency (clients)")
    ax.set_ylabel("mean latency per request (ms)")
    ax.set_title(f"{rep.model}: where the latency went ({rep.protocol})" if levels else "no server statistics")
    if names:
        ax.legend(loc="upper left", fontsize=8)
    save_png(fig, path)


def write_report(rep: LoadReport, out: str | Path) -> dict[str, str]:
    """loadtest.json (strict JSON), loadtest.md, loadtest.png and loadtest-split.png (stacked latency) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "loadtest.json", "markdown": out / "loadtest.md", "png": out / "loadtest.png",
             "split_png": out / "loadtest-split.png"}
    atomic_write_text(files["json"], json.dumps(rep.to_dict(), indent=2, allow_nan=False) + "\n")
    atomic_write_text(files["markdown"], markdown(rep))
    plot(rep, files["png"])
    plot_split(rep, files["split_png"])
    return {k: str(v) for k, v in files.items()}
