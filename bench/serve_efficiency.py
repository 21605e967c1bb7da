"""Served efficiency (issue 33): images per server CPU-second at concurrency 1/4/16 against in-process decode + predict per CPU-second.

    python bench/serve_efficiency.py --out exports/serve-efficiency                       # resnet18 28 px, 20 s per segment
    python bench/serve_efficiency.py --delays 0,500,1000,2000,4000 --duration 10         # choose --max-queue-delay-us
    python bench/serve_efficiency.py --perf-analyzer /opt/pa/bin/perf_analyzer            # + loadtest vs perf_analyzer
    python bench/serve_efficiency.py --guards on,off                                      # what the body guard costs
    python bench/serve_efficiency.py --ort-threads 0,2                                    # serve's thread rule vs 2 threads

Per CPU-second is the fair comparison on a shared machine: it does not care who else uses the cores.
The same Fashion-MNIST test images, PNG-encoded, everywhere:

- in-process: PNG decode (PIL, as the server does) + ``Engine.predict`` at batch ``--batch`` (16) on
  ONNX Runtime CPU, CPU seconds of this process (``time.process_time``: every thread) per image; the
  issue's reference is ``Engine.load``'s defaults (ORT's own thread count, spinning pool); the
  "lean" reference is the same with one intra-op thread and a sleeping pool (what the served stub
  runs on 2 cores), reported beside it because it is cheaper per image and so the harder bar;
- served: ``rn-deploy serve`` (one server per ``--delays`` value), ``rn-deploy loadtest``'s closed loop
  at concurrency 1, 4 and 16, CPU seconds of the server's whole process tree (the ``serve``
  supervisor, tritonserver, the Python-backend stubs: ``/proc/PID/stat``) per answered image; the
  load generator is this process and is not counted;
- segments alternate (in-process, served c1, in-process, served c4, ...) for ``--reps`` (2)
  repetitions, the load average recorded before each; goals: served/in-process >= 0.90 at
  concurrency 16 and >= 0.60 at 1;
- each served level's latency split (client / queue / compute), the batches Triton formed, and where the server's
  CPU went: milliseconds per image of the supervisor (with the body guard), tritonserver and the stubs;
- loadtest vs perf_analyzer at the same levels, alternated, two repetitions each (goal: within 10%),
  when perf_analyzer is found (``--perf-analyzer``, PATH, the tritonclient wheel's ``bin/``);
  otherwise the output says it is absent.

Writes ``serve_efficiency.json`` (and prints a table). Run it on a quiet machine: nothing else of yours
running, the load average recorded, the figures for docs/benchmarks.md only from such a run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The served stub's torch runs with passive OpenMP threads (rn_deploy.serve.server_env); the in-process reference gets
# the same, before torch loads, so the ratio compares like with like and does not flatter the server.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import export, find_perf_analyzer, perf_analyzer_input, run_perf_analyzer, start  # noqa: E402

from rn_deploy.engine import Engine  # noqa: E402
from rn_deploy.loadtest import dataset_images, run_level  # noqa: E402
from rn_deploy.names import DEFAULT_MAX_QUEUE_DELAY_US  # noqa: E402
from rn_deploy.serve.backend import ort_settings  # noqa: E402
from rn_deploy.serve.procfs import cpu_seconds, process_tree  # noqa: E402


def in_process(eng: Engine, encoded: list[bytes], batch: int, seconds: float, idle_s: float = 0.0) -> dict[str, Any]:
    """Decode + predict in batches of ``batch`` for ``seconds``: images per CPU-second of this process.

    ``idle_s``: sleep this long between batches, as a server at concurrency 1 idles between requests while the answer
    travels and the next request comes: the model's weights (45 MB for resnet18) leave the caches meanwhile, so a
    batch of one reads them from memory again. Batch 1 with ``idle_s`` ~3 ms is what a served request at
    concurrency 1 costs with no server around it: the ceiling of served / in-process at 1."""
    ch = eng.config.in_channels

    def decode(b: bytes) -> np.ndarray:
        a = np.asarray(Image.open(io.BytesIO(b), formats=["PNG"]).convert("L" if ch == 1 else "RGB"))
        return a[:, :, None] if a.ndim == 2 else a

    batches = [encoded[i : i + batch] for i in range(0, len(encoded) - batch + 1, batch)]
    eng.predict([decode(b) for b in batches[0]])  # warm-up
    n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if idle_s:
            time.sleep(idle_s)
        eng.predict([decode(b) for b in batches[n % len(batches)]])
        n += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"images": n * batch, "cpu_s": cpu, "wall_s": wall, "img_per_cpu_s": n * batch / cpu, "img_per_s": n * batch / wall,
            "cores": cpu / wall}


def _role(pid: int, supervisor: int) -> str:
    """Which part of the server a process is: the ``serve`` supervisor (with the body guard), tritonserver or a stub."""
    if pid == supervisor:
        return "supervisor"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "other"
    return "tritonserver" if comm == "tritonserver" else "stub" if comm.startswith("triton_python") else "other"


def served(pid: int, url: str, encoded: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """One loadtest level: images per CPU-second of the server's process tree, with the level's split and each part's
    CPU per image (where the server's CPU goes: supervisor and guard, tritonserver, the Python-backend stubs)."""
    pids = [pid, *process_tree(pid)]
    roles = {p: _role(p, pid) for p in pids}
    before = {p: cpu_seconds([p]) for p in pids}
    lv = run_level(url, "classifier", encoded, concurrency, seconds, False)
    used = {p: cpu_seconds([p]) - before[p] for p in pids}
    cpu = sum(used.values())  # includes each sender's untimed warm-up request: `concurrency` images, counted below
    images = lv.requests + concurrency
    parts = {r: sum(v for p, v in used.items() if roles[p] == r) * 1e3 / images for r in sorted(set(roles.values()))}
    return {"concurrency": concurrency, "images": images, "server_cpu_s": cpu, "img_per_server_cpu_s": images / cpu if cpu else None,
            "cpu_ms_per_image": parts,
            "requests_per_s": lv.requests_per_s, "p50_ms": lv.p50_ms, "p99_ms": lv.p99_ms, "errors": lv.errors,
            "server_cores": cpu / lv.seconds, "client_cpu": lv.client_cpu, "client_bound": lv.client_bound, "verdict": lv.verdict,
            "split": lv.split.__dict__ if lv.split else None}


def compare_generators(exe: Path | None, url: str, encoded: list[bytes], levels: list[int], seconds: float, out: Path,
                       stability: int) -> dict[str, Any]:
    """loadtest vs perf_analyzer per level, alternated, two repetitions each; absent perf_analyzer said plainly."""
    if exe is None:
        msg = ("perf_analyzer not found on this machine (not on PATH, no --perf-analyzer, not in the tritonclient wheel's bin/; "
               "docs/serving.md says how to get it): loadtest vs perf_analyzer NOT measured")
        print(msg, flush=True)
        return {"perf_analyzer": None, "note": msg}
    data = perf_analyzer_input(encoded, out / "perf_analyzer_input.json")
    rows: dict[int, dict[str, Any]] = {}
    for c in levels:
        r = rows.setdefault(c, {"perf_analyzer": [], "loadtest": []})
        for _ in range(2):
            lv = run_level(url, "classifier", encoded, c, seconds, False)
            pa = run_perf_analyzer(exe, url, data, c, out, int(seconds * 1000), stability, lv.requests_per_s)
            r["perf_analyzer"].append(pa)
            r["loadtest"].append({"requests_per_s": lv.requests_per_s, "p50_ms": lv.p50_ms, "p99_ms": lv.p99_ms,
                                  "client_cpu": lv.client_cpu, "client_bound": lv.client_bound, "verdict": lv.verdict})
        pa_rate = [p["requests_per_s"] for p in r["perf_analyzer"] if "requests_per_s" in p]
        lt_rate = [x["requests_per_s"] for x in r["loadtest"]]
        r["ratio"] = statistics.mean(lt_rate) / statistics.mean(pa_rate) if pa_rate else None
        ratio = f"{r['ratio']:.1%}" if r["ratio"] else "n/a (perf_analyzer failed)"
        print(f"concurrency {c}: loadtest / perf_analyzer = {ratio} (goal 90-110%); loadtest: {r['loadtest'][-1]['verdict']}",
              flush=True)
    return {"perf_analyzer": str(exe), "levels": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--batch", type=int, default=16, help="In-process Engine.predict batch.")
    ap.add_argument("--images", type=int, default=512, help="Test images to cycle through.")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per segment (in-process or one served level).")
    ap.add_argument("--reps", type=int, default=2, help="Alternated repetitions of every segment.")
    ap.add_argument("--delays", default=str(DEFAULT_MAX_QUEUE_DELAY_US),
                    help="--max-queue-delay-us values: one server each [default: serve's]; compare several to choose serve's default.")
    ap.add_argument("--guards", default="on", help="'on', 'off' or 'on,off': servers with and without the body guard "
                    "(serve --no-body-guard), to measure what it costs.")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--ort-threads", default="0", help="serve --ort-threads values, comma-separated: one server each "
                    "(0: serve's rule, the cores less one).")
    ap.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary [default: PATH, then the tritonclient wheel's bin/].")
    ap.add_argument("--pa-stability", type=int, default=20, help="perf_analyzer --stability-percentage (docs/serving.md's 20).")
    ap.add_argument("--out", type=Path, default=Path("exports/serve-efficiency"))
    args = ap.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    encoded = dataset_images("fashion-mnist", args.images)  # the test images, PNG-encoded as loadtest sends them
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                          "cpu": platform.processor() or platform.machine(),
                                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                              "model": f"{args.arch} 1x{args.size}x{args.size}, ORT CPU, random weights", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export(args.arch, args.size, Path(tmp))
        eng = Engine.load(onnx, provider="cpu")
        lean = Engine.load(onnx, provider="cpu", **ort_settings({}, threads=1))  # the served stub's session, one thread
        servers = [(int(d), g, int(t)) for d in args.delays.split(",") for g in args.guards.split(",")
                   for t in args.ort_threads.split(",")]
        for delay, guard, threads in servers:
            extra = ["--max-batch", str(args.max_batch), "--instances", str(args.instances), "--max-queue-delay-us", str(delay),
                     "--body-guard" if guard == "on" else "--no-body-guard", "--ort-threads", str(threads)]
            proc, url = start(onnx, args.out / f"serve-d{delay}-guard-{guard}-t{threads}.log", extra)
            run: dict[str, Any] = {"max_queue_delay_us": delay, "body_guard": guard, "ort_threads": threads,
                                   "max_batch": args.max_batch, "instances": args.instances, "segments": []}
            name = f"delay {delay} us, guard {guard}, ORT threads {threads or 'auto'}"
            try:
                run_level(url, "classifier", encoded, max(levels), 2.0, False)  # warm-up
                for rep in range(args.reps):
                    for c in levels:  # alternated: in-process, then served at c
                        seg = {"rep": rep, "load_average": os.getloadavg()}
                        seg["in_process"] = in_process(eng, encoded, args.batch, args.duration)
                        seg["in_process_lean"] = in_process(lean, encoded, args.batch, args.duration)
                        if c == 1:  # the ceiling at 1: a batch of one, idle between, no server
                            seg["in_process_batch1_idle"] = in_process(lean, encoded, 1, args.duration / 2, idle_s=0.003)
                            seg["ceiling"] = seg["in_process_batch1_idle"]["img_per_cpu_s"] / seg["in_process"]["img_per_cpu_s"]
                            print(f"  in-process batch 1 with 3 ms idle between (lean engine): "
                                  f"{seg['in_process_batch1_idle']['img_per_cpu_s']:.0f} img/CPU-s = {seg['ceiling']:.2f} of "
                                  "the batch-16 reference: the most a server can reach at concurrency 1", flush=True)
                        seg["load_average_served"] = os.getloadavg()
                        seg["served"] = served(proc.pid, url, encoded, c, args.duration)
                        seg["ratio"] = (seg["served"]["img_per_server_cpu_s"] or 0) / seg["in_process"]["img_per_cpu_s"]
                        seg["ratio_lean"] = (seg["served"]["img_per_server_cpu_s"] or 0) / seg["in_process_lean"]["img_per_cpu_s"]
                        run["segments"].append(seg)
                        s = seg["served"]
                        print(f"{name}, rep {rep}, concurrency {c:>2}: served {s['img_per_server_cpu_s']:.0f} img/server-CPU-s "
                              f"({s['server_cores']:.2f} cores, {s['requests_per_s']:.0f} req/s, batches "
                              f"{(s['split'] or {}).get('avg_batch')}) vs in-process {seg['in_process']['img_per_cpu_s']:.0f} "
                              f"img/CPU-s: {seg['ratio']:.2f}; lean in-process {seg['in_process_lean']['img_per_cpu_s']:.0f}: "
                              f"{seg['ratio_lean']:.2f} (load {seg['load_average'][0]:.2f}); CPU ms per image: "
                              + ", ".join(f"{k} {v:.3f}" for k, v in s["cpu_ms_per_image"].items()), flush=True)
                run["ratio_by_concurrency"] = {c: statistics.mean(s["ratio"] for s in run["segments"] if s["served"]["concurrency"] == c)
                                               for c in levels}
                run["ratio_lean_by_concurrency"] = {c: statistics.mean(s["ratio_lean"] for s in run["segments"]
                                                                       if s["served"]["concurrency"] == c) for c in levels}
                goals = {1: 0.60, 16: 0.90}
                for c, r in run["ratio_by_concurrency"].items():
                    goal = f" (goal >= {goals[c]:.2f})" if c in goals else ""
                    print(f"{name}: concurrency {c}: served / in-process per CPU-second = {r:.2f}{goal}; "
                          f"served / lean in-process = {run['ratio_lean_by_concurrency'][c]:.2f}", flush=True)
                if (delay, guard, threads) == servers[0]:
                    run["generators"] = compare_generators(find_perf_analyzer(args.perf_analyzer), url, encoded, levels,
                                                           min(args.duration, 20), args.out, args.pa_stability)
            finally:
                proc.send_signal(signal.SIGTERM)
                run["stop_rc"] = proc.wait(30)
            result["runs"].append(run)
        eng.close()
        lean.close()
    result["load_average_at_end"] = os.getloadavg()
    (args.out / "serve_efficiency.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out / 'serve_efficiency.json'}")


if __name__ == "__main__":
    main()
