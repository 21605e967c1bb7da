"""Commands of the service: serve a model on Triton, classify images with it, load-test it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RnDeployError
from ..names import DEFAULT_MAX_QUEUE_DELAY_US
from .group import echo_json, main, stderr_log
from .params import MODEL_NAME, PORT, POSITIVE_INTS, apply_tuned


@main.command("serve")
@click.argument("model", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", type=MODEL_NAME, default="classifier", show_default=True, help="Model name clients address.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--http-port", type=PORT, default=8000, show_default=True, help="KServe-v2 HTTP port.")
@click.option("--grpc-port", type=PORT, default=8001, show_default=True, help="KServe-v2 gRPC port.")
@click.option("--metrics-port", type=PORT, default=8002, show_default=True, help="Prometheus metrics at /metrics.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Dynamic batching: largest batch.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=DEFAULT_MAX_QUEUE_DELAY_US, show_default=True,
              help="Dynamic batching: longest wait for a batch to fill (a lone request waits it all; lower it for latency "
                   "at low load, raise it for fuller batches: serve --tune measures both).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (parallel batches).")
@click.option("--ort-threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads per instance; 0: the CPU cores less one (left to tritonserver's HTTP/gRPC "
                   "and the backend's Python), shared by the instances, at least one each.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=12_000_000, show_default=True,
              help="Largest image (W x H; a request's images together) accepted, checked from the header before decoding.")
@click.option("--max-aspect", type=click.FloatRange(min=1), default=32.0, show_default=True,
              help="Largest long/short side ratio accepted (the centre crop of a wider image keeps a sliver of it).")
@click.option("--max-batch-pixels", type=click.IntRange(min=1), default=24_000_000, show_default=True,
              help="Decoded pixels one model instance holds at once (>= --max-pixels); later requests of a batch wait for the next part.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=64 << 20, show_default=True,
              help="Largest request body; refused at the socket (HTTP 413, gRPC RESOURCE_EXHAUSTED) before it is read.")
@click.option("--max-bytes-in-flight", type=click.IntRange(min=1), default=256 << 20, show_default=True,
              help="Request bodies passed to tritonserver and not yet answered, together (>= --max-request-bytes); "
                   "later ones wait. Bounds the backend's shared memory, which never shrinks.")
@click.option("--body-guard/--no-body-guard", default=True, show_default=True,
              help="Hold the public HTTP/gRPC ports in front of tritonserver to enforce the two byte limits above. "
                   "--no-body-guard: tritonserver takes them itself and reads any body whole (the backend then refuses "
                   "one over --max-request-bytes with a 400): only behind a proxy that limits bodies.")
@click.option("--tune", is_flag=True,
              help="Instead of serving: sweep --tune-grid on real servers, report the fastest setting whose p99 meets --p99-ms "
                   "and save it as MODEL.serving.json, which later serve/export-triton runs use for options not given.")
@click.option("--tune-grid", default=None, metavar="GRID", callback=lambda ctx, param, value: parse_tune_grid(value),
              help="With --tune: the settings to try, e.g. 'max_batch=8,32 max_queue_delay_us=0,2000 instances=1,2 ort_threads=1,2' "
                   "[default: that grid with ort_threads=0, serve's rule; the default setting is always measured too].")
@click.option("--p99-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="With --tune: the latency budget a setting's p99 must meet.")
@click.option("--tune-seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="With --tune: seconds of load per setting (after a warm-up).")
@click.option("--tune-concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="With --tune: concurrent clients (closed loop) during each measurement.")
@click.option("--tune-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --tune: a folder of images to send [default: synthetic PNGs at the model's size].")
@click.option("--tune-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --tune: where tune.json, tune.md, tune.png and the servers' logs go [default: MODEL.tune/ beside MODEL].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the endpoints as one JSON object on stdout once the server is ready (with --tune: the tune result).")
def serve_cmd(model: Path, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int,
              max_queue_delay_us: int, instances: int, ort_threads: int, max_pixels: int, max_aspect: float, max_batch_pixels: int,
              max_request_bytes: int, max_bytes_in_flight: int, body_guard: bool, tune: bool, tune_grid: dict[str, list[int]] | None,
              p99_ms: float, tune_seconds: float, tune_concurrency: int, tune_images: Path | None, tune_out: Path | None,
              as_json: bool) -> None:
    """Serve MODEL (.onnx or .engine) on Triton Inference Server (bundled tritonserver, Python backend): HTTP/gRPC, dynamic batching, metrics.

    Input `image` (encoded PNG/JPEG bytes) or `pixels` (uint8 HxWxC); outputs label, index, score,
    probs (docs/formats.md). A bad request gets its own HTTP 400 / gRPC INVALID_ARGUMENT; the others
    batched with it are answered. The statistics API is open (perf_analyzer). Stops on
    SIGTERM/Ctrl-C after answering the requests in flight.

    --max-batch, --max-queue-delay-us, --instances and --ort-threads not given come from MODEL.serving.json when
    `serve --tune` saved one for this very file (a stale one, for other weights, is ignored with a warning).
    """
    import os
    import sys

    from ..serve import ServeOptions, serve
    from ..strictjson import print_json

    if max_bytes_in_flight < max_request_bytes:
        raise click.BadParameter(f"{max_bytes_in_flight} is below --max-request-bytes {max_request_bytes}: an admitted "
                                 "request could never go", param_hint="--max-bytes-in-flight")
    if max_batch_pixels < max_pixels:
        raise click.BadParameter(f"{max_batch_pixels} is below --max-pixels {max_pixels}: an admitted image could never run",
                                 param_hint="--max-batch-pixels")
    opts = ServeOptions(model, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                        max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances, ort_threads=ort_threads,
                        max_pixels=max_pixels,
                        max_aspect=max_aspect, max_batch_pixels=max_batch_pixels, max_request_bytes=max_request_bytes,
                        max_bytes_in_flight=max_bytes_in_flight, body_guard=body_guard)
    if tune:
        from ..tune import DEFAULT_GRID
        from ..tune import tune as run_tune

        grid = tune_grid or {k: list(v) for k, v in DEFAULT_GRID.items()}
        imgs = None
        if tune_images is not None:
            from ..loadtest import folder_images

            imgs = folder_images(tune_images)
        res = run_tune(model, opts, p99_ms, grid, seconds=tune_seconds, concurrency=tune_concurrency, images=imgs,
                       image_source=str(tune_images or ""), out=tune_out, log=stderr_log)
        if as_json:
            echo_json(res.to_dict())
        if res.chosen is None:
            raise RnDeployError(f"no setting met the p99 budget of {p99_ms:g} ms; nothing saved (see the table above)")
        if not as_json:
            click.echo(f"chosen: {res.chosen}; saved {res.saved} (serve and export-triton use it for options not given)")
        return
    if tune_grid is not None:
        raise click.UsageError("--tune-grid is for --tune")
    from ..tuned import SETTINGS

    for key, value in apply_tuned(model, SETTINGS).items():
        setattr(opts, key, value)
    serve(opts, log=stderr_log, on_ready=(lambda info: print_json(info, indent=None)) if as_json else None)
    # Drained, children stopped, temporary repository removed: exit now; nothing is left for the interpreter's shutdown
    # to do, and a SIGTERM drain must end within 10 s.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse_tune_grid(value: str | None) -> dict[str, list[int]] | None:
    """--tune-grid's text as a grid; a bad one is a usage error (exit 2) naming the bad part, before any work."""
    if value is None:
        return None
    from ..tune import parse_grid

    try:
        return parse_grid(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--tune-grid") from None


@main.command("classify")
@click.argument("url")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grpc", is_flag=True, help="URL is the gRPC port (default: HTTP).")
@click.option("--model", default=None, help="Model name [default: classifier, serve's default].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (with all class probabilities).")
def classify_cmd(url: str, images: tuple[Path, ...], grpc: bool, model: str | None, as_json: bool) -> None:
    """Classify IMAGES with a server started by `rn-deploy serve` at URL (host:port); exit 1 if any image failed."""
    from ..client import classify

    results = classify(url, list(images), grpc=grpc, model=model)
    if as_json:
        echo_json(results)
    else:
        for r in results:
            if "error" in r:
                click.echo(f"{r['image']}: error: {r['error']}", err=True)
            else:
                click.echo(f"{r['image']}: {r['label']} {r['score']:.4f}")
    failed = sum("error" in r for r in results)
    if failed:
        raise RnDeployError(f"{failed} of {len(results)} image(s) failed")


@main.command("loadtest")
@click.argument("url")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of images to send.")
@click.option("--dataset", type=click.Choice(["fashion-mnist"]), default=None, help="Send a dataset's test images instead.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="Images to cycle through.")
@click.option("--concurrency", type=POSITIVE_INTS, default="1,4,16,64", show_default=True, help="Comma list of concurrent clients.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds per level.")
@click.option("--grpc", is_flag=True, help="URL is the gRPC port (default: HTTP).")
@click.option("--model", default=None, help="Model name [default: classifier, serve's default].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write loadtest.json, loadtest.md, loadtest.png and loadtest-split.png (latency split) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def loadtest_cmd(url: str, images: Path | None, dataset: str | None, limit: int, concurrency: list[int], duration: float, grpc: bool,
                 model: str | None, out: Path | None, as_json: bool) -> None:
    """Closed-loop load test of a server at URL: requests/s, p50/p90/p99 latency and errors per concurrency.

    Each level's mean latency is split into client-side, queue and compute (input, infer, output) from
    the server's statistics before and after the window, and the report says when the load generator
    itself (>= 90% of a CPU core) was the bottleneck, and how far the server could go.
    """
    from ..loadtest import dataset_images, folder_images, loadtest, write_report

    if (images is None) == (dataset is None):
        raise click.UsageError("give one of --images DIR or --dataset fashion-mnist")
    data = folder_images(images, limit) if images else dataset_images(str(dataset), limit)
    rep = loadtest(url, data, concurrency, duration, grpc=grpc, model=model,
                   image_source=str(images or dataset), log=None if as_json else click.echo)
    if out is not None:
        files = write_report(rep, out)
        if not as_json:
            click.echo(f"report: {', '.join(files.values())}")
    if as_json:
        echo_json(rep.to_dict())
