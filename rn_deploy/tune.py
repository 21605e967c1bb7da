"""``rn-deploy serve --tune``: sweep max batch x queue delay x instances x ORT threads on real servers, keep the fastest under a p99 budget.

What NVIDIA Model Analyzer does for a Triton model, for this one: each setting of the grid (and the
default setting, always) gets its own tritonserver on free loopback ports, a short warm-up, then a
closed-loop load (:func:`rn_deploy.loadtest.run_level`) at one concurrency for a fixed time, with the
server's process-tree CPU read from ``/proc``. :func:`choose` keeps the setting with the highest
throughput whose p99 meets the budget and that answered every request; it is saved beside the model
(:mod:`rn_deploy.tuned`) so ``serve`` and ``export-triton`` use it for options not given on the command line.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, pyplot, save_png
from .loadtest import run_level
from .serve.options import ServeOptions
from .serve.procfs import cpu_seconds, process_tree
from .serve.server import check_model, free_ports, serve
from .strictjson import ToDict
from .tuned import MINIMUM, SETTINGS, save_tuned

DEFAULT_GRID = {"max_batch": [8, 32], "max_queue_delay_us": [0, 2000], "instances": [1, 2], "ort_threads": [0]}
ALIASES = {"max_batch": "max_batch", "batch": "max_batch", "max_queue_delay_us": "max_queue_delay_us",
           "delay_us": "max_queue_delay_us", "queue_delay_us": "max_queue_delay_us", "instances": "instances",
           "ort_threads": "ort_threads", "threads": "ort_threads"}
GRID_HELP = "max_batch=8,32 max_queue_delay_us=0,2000 instances=1,2 ort_threads=1,2"


def parse_grid(text: str) -> dict[str, list[int]]:
    """``"max_batch=8,32 delay_us=0,2000 instances=1"`` (spaces or ';' between keys) -> the grid; keys left out keep
    :data:`DEFAULT_GRID`'s values. Raises ``ValueError`` naming the bad part."""
    grid = {k: list(v) for k, v in DEFAULT_GRID.items()}
    parts = [p for p in text.replace(";", " ").split() if p]
    if not parts:
        raise ValueError(f"empty grid; give e.g. {GRID_HELP!r}")
    for part in parts:
        key, sep, values = part.partition("=")
        if not sep or key not in ALIASES:
            raise ValueError(f"{part!r}: expected KEY=V1,V2 with KEY one of {', '.join(sorted(set(ALIASES.values())))}")
        name = ALIASES[key]
        try:
            nums = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{part!r}: values must be whole numbers, comma-separated") from None
        if not nums or min(nums) < MINIMUM[name]:
            raise ValueError(f"{part!r}: give one or more values, each >= {MINIMUM[name]}")
        grid[name] = sorted(set(nums))
    return grid


def settings_of(grid: dict[str, list[int]], default: dict[str, int]) -> list[dict[str, int]]:
    """Every combination of the grid, the default setting first (measured whether or not the grid holds it)."""
    combos = [dict(zip(SETTINGS, c, strict=True)) for c in itertools.product(*(grid[k] for k in SETTINGS))]
    return [default] + [c for c in combos if c != default]


@dataclass
class TuneRow:
    max_batch: int
    max_queue_delay_us: int
    instances: int
    ort_threads: int = 0  # 0: serve's rule (rn_deploy.serve.backend.ort_settings)
    default: bool = False
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    server_cpu: float | None = None  # the server's process tree: CPU seconds per wall second (cores)
    images_per_cpu_s: float | None = None  # answered per CPU-second of the server's process tree
    avg_batch: float | None = None
    failed: str | None = None  # the server did not start or the load failed: why

    def setting(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in SETTINGS}

    def label(self) -> str:
        return f"b{self.max_batch}/d{self.max_queue_delay_us}/i{self.instances}/t{self.ort_threads or 'auto'}"


def choose(rows: Sequence[TuneRow], p99_ms: float) -> TuneRow | None:
    """The row with the highest requests/s among those with no failure, no error and p99 <= ``p99_ms``
    (ties: the lower p99, then the default); None when no row meets the budget."""
    ok = [r for r in rows if r.failed is None and r.errors == 0 and r.p99_ms is not None and r.p99_ms <= p99_ms]
    return max(ok, key=lambda r: (r.requests_per_s, -(r.p99_ms or 0.0), r.default), default=None)


@dataclass
class TuneResult(ToDict):
    model: str
    p99_budget_ms: float
    concurrency: int
    seconds: float
    images: str
    rows: list[TuneRow] = field(default_factory=list)
    chosen: dict[str, int] | None = None
    saved: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)


def synthetic_images(info: dict[str, Any], n: int = 64) -> list[bytes]:
    """``n`` PNGs at the model's training size and channels: smooth gradients with noise (as compressible as photos)."""
    import numpy as np
    from PIL import Image

    h, w = info["image_size"][:2]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(n):
        base = (xx * (k + 1) * 3 + yy * (n - k)) % 256
        a = np.clip(base[..., None] + rng.normal(0, 12, (h, w, info["in_channels"])), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def measure(base: ServeOptions, info: dict[str, Any], setting: dict[str, int], images: Sequence[bytes], concurrency: int,
            seconds: float, server_log: Path) -> TuneRow:
    """One setting on its own server: warm-up, then ``concurrency`` closed-loop clients for ``seconds``."""
    h, g, m = free_ports(3)
    opts = ServeOptions(**{**base.__dict__, **setting, "host": "127.0.0.1", "http_port": h, "grpc_port": g, "metrics_port": m})
    row = TuneRow(setting["max_batch"], setting["max_queue_delay_us"], setting["instances"], setting["ort_threads"])
    stop, ready, failure = threading.Event(), threading.Event(), []

    def run() -> None:
        try:
            serve(opts, log=lambda _: None, stop=stop, on_ready=lambda _: ready.set(), model_info=info, server_log=server_log)
        except Exception as e:  # noqa: BLE001 - this setting failed; the sweep goes on
            failure.append(str(e))
        ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        ready.wait()
        if failure:
            row.failed = failure[0]
            return row
        url = f"127.0.0.1:{h}"
        run_level(url, opts.name, images, concurrency, min(2.0, seconds), False)  # warm-up: ORT shapes, batches, connections
        pids = process_tree(os.getpid())  # tritonserver and its stubs (the load generator is this process: not counted)
        cpu0, t0 = cpu_seconds(pids), time.perf_counter()
        lv = run_level(url, opts.name, images, concurrency, seconds, False)
        cpu, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - t0
        row.requests_per_s, row.p50_ms, row.p99_ms, row.errors = lv.requests_per_s, lv.p50_ms, lv.p99_ms, lv.errors
        row.server_cpu = round(cpu / wall, 3)
        row.images_per_cpu_s = round(lv.requests / cpu, 1) if cpu > 0 else None
        row.avg_batch = lv.split.avg_batch if lv.split else None
    except Exception as e:  # noqa: BLE001 - one bad setting does not end the sweep
        row.failed = str(e).splitlines()[0] if str(e) else type(e).__name__
    finally:
        stop.set()
        t.join(60)
    return row


def tune(model: Path, base: ServeOptions, p99_ms: float, grid: dict[str, list[int]], *, seconds: float = 10.0,
         concurrency: int = 16, images: Sequence[bytes] | None = None, image_source: str = "", out: Path | None = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Measure every setting of ``grid`` (and the default) and save the one :func:`choose` picks beside ``model``.

    Writes ``tune.json``, ``tune.md`` and ``tune.png`` (and each server's log) into ``out``
    (default: ``MODEL.tune/`` beside the model). Raises :class:`RnDeployError` for a bad model, before any server starts.
    """
    info = check_model(model)
    out = out or model.with_name(model.name + ".tune")
    out.mkdir(parents=True, exist_ok=True)
    default = {k: getattr(ServeOptions(model), k) for k in SETTINGS}
    settings = settings_of(grid, default)
    imgs = list(images) if images else synthetic_images(info)
    res = TuneResult(str(model), p99_ms, concurrency, seconds, image_source or f"{len(imgs)} synthetic PNGs at the model's size",
                     machine={"host": platform.node(), "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log(f"tuning {model}: {len(settings)} settings x {seconds:g} s at concurrency {concurrency}, p99 budget {p99_ms:g} ms")
    for k, s in enumerate(settings):
        row = measure(base, info, s, imgs, concurrency, seconds, out / f"server-{k}.log")
        row.default = s == default
        res.rows.append(row)
        log(format_row(row, p99_ms))
    res.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    best = choose(res.rows, p99_ms)
    if best is not None:
        res.chosen = best.setting()
        res.saved = str(save_tuned(model, res.chosen, {"p99_budget_ms": p99_ms, "concurrency": concurrency, "measured": best.__dict__,
                                                       "date": res.machine["date"], "host": res.machine["host"]}))
    atomic_write_text(out / "tune.json", json.dumps(res.to_dict(), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "tune.md", markdown(res))
    plot(res, out / "tune.png")
    return res


def format_row(r: TuneRow, p99_ms: float) -> str:
    if r.failed:
        return f"  {r.label():<16} failed: {r.failed}"
    meets = "meets" if r.errors == 0 and r.p99_ms is not None and r.p99_ms <= p99_ms else "MISSES"
    return (f"  {r.label():<16} {r.requests_per_s:8.1f} req/s  p99 {r.p99_ms or 0:7.2f} ms ({meets} the budget)  "
            f"server CPU {r.server_cpu or 0:.2f} cores  {r.images_per_cpu_s or 0:.0f} img/CPU-s  "
            f"batch {r.avg_batch or 0:.1f}  {r.errors} errors" + ("  [default]" if r.default else ""))


def markdown(res: TuneResult) -> str:
    lines = [f"# serve --tune: `{Path(res.model).name}`", "",
             f"p99 budget {res.p99_budget_ms:g} ms, concurrency {res.concurrency}, {res.seconds:g} s per setting, {res.images}; "
             f"{res.machine.get('host')}, {res.machine.get('cpus')} CPUs, load average {res.machine.get('load_average_at_start')}, "
             f"{res.machine.get('date')}.", "",
             "| max batch | queue delay us | instances | ORT threads | req/s | p50 ms | p99 ms | errors | server CPU (cores) "
             "| img per server CPU-s | avg batch | meets budget |", "|---:" * 11 + "|:--|"]
    for r in res.rows:
        ok = "failed: " + r.failed if r.failed else ("yes" if r is choose([r], res.p99_budget_ms) else "no")
        mark = (" (default)" if r.default else "") + (" **chosen**" if res.chosen == r.setting() else "")
        cells = [f"{r.requests_per_s:.1f}", *("-" if v is None else f"{v:.2f}" for v in (r.p50_ms, r.p99_ms)), str(r.errors),
                 "-" if r.server_cpu is None else f"{r.server_cpu:.2f}", "-" if r.images_per_cpu_s is None else f"{r.images_per_cpu_s:.0f}",
                 "-" if r.avg_batch is None else f"{r.avg_batch:.1f}"]
        lines.append(f"| {r.max_batch} | {r.max_queue_delay_us} | {r.instances} | {r.ort_threads or 'auto'} | {' | '.join(cells)} "
                     f"| {ok}{mark} |")
    lines += ["", f"Chosen: {res.chosen}, saved to `{res.saved}`." if res.chosen else
              "No setting met the budget: nothing saved; raise --p99-ms or lower the concurrency."]
    return "\n".join(lines) + "\n"


def plot(res: TuneResult, path: Path) -> None:
    """Throughput against p99 per setting, the budget as a line, the chosen setting ringed."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in [r for r in res.rows if not r.failed and r.p99_ms is not None]:
        p99 = r.p99_ms or 0.0
        meets = r.errors == 0 and p99 <= res.p99_budget_ms
        ax.scatter([p99], [r.requests_per_s], color="tab:green" if meets else "tab:red", zorder=3)
        ax.annotate(r.label() + (" (default)" if r.default else ""), (p99, r.requests_per_s), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
        if res.chosen == r.setting():
            ax.scatter([p99], [r.requests_per_s], s=200, facecolors="none", edgecolors="black", zorder=4)
    ax.axvline(res.p99_budget_ms, color="gray", linestyle="--", label=f"p99 budget {res.p99_budget_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"serve --tune: {Path(res.model).name}, concurrency {res.concurrency}")
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path)

