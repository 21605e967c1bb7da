"""Commands of the service: serve a model on Triton, classify images with it, load-test it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RnDeployError
from .group import echo_json, main, stderr_log
from .params import split_ints


@main.command("serve")
@click.argument("model", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default="classifier", show_default=True, help="Model name clients address.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--http-port", type=int, default=8000, show_default=True, help="KServe-v2 HTTP port.")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="KServe-v2 gRPC port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics at /metrics.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Dynamic batching: largest batch.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Dynamic batching: longest wait for a batch to fill.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (parallel batches).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=12_000_000, show_default=True,
              help="Largest image (W x H; a request's images together) accepted, checked from the header before decoding.")
@click.option("--max-aspect", type=click.FloatRange(min=1), default=32.0, show_default=True,
              help="Largest long/short side ratio accepted (the centre crop of a wider image keeps a sliver of it).")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON object on stdout once the server is ready.")
def serve_cmd(model: Path, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int,
              max_queue_delay_us: int, instances: int, max_pixels: int, max_aspect: float, as_json: bool) -> None:
    """Serve MODEL (.onnx or .engine) on Triton Inference Server (bundled tritonserver, Python backend): HTTP/gRPC, dynamic batching, metrics.

    Input `image` (encoded PNG/JPEG bytes) or `pixels` (uint8 HxWxC); outputs label, index, score,
    probs (docs/formats.md). A bad request gets its own HTTP 400 / gRPC INVALID_ARGUMENT; the others
    batched with it are answered. The statistics API is open (perf_analyzer). Stops on
    SIGTERM/Ctrl-C after answering the requests in flight.
    """
    import os
    import sys

    from ..serve import ServeOptions, serve
    from ..strictjson import print_json

    serve(ServeOptions(model, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances, max_pixels=max_pixels,
                       max_aspect=max_aspect),
          log=stderr_log, on_ready=(lambda info: print_json(info, indent=None)) if as_json else None)
    # Drained, children stopped, temporary repository removed: exit now; nothing is left for the interpreter's shutdown
    # to do, and a SIGTERM drain must end within 10 s.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
@click.option("--concurrency", default="1,4,16,64", show_default=True, help="Comma list of concurrent clients.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds per level.")
@click.option("--grpc", is_flag=True, help="URL is the gRPC port (default: HTTP).")
@click.option("--model", default=None, help="Model name [default: classifier, serve's default].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write loadtest.json, loadtest.md, loadtest.png and loadtest-split.png (latency split) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
def loadtest_cmd(url: str, images: Path | None, dataset: str | None, limit: int, concurrency: str, duration: float, grpc: bool,
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
    rep = loadtest(url, data, split_ints(concurrency, "--concurrency"), duration, grpc=grpc, model=model,
                   image_source=str(images or dataset), log=None if as_json else click.echo)
    if out is not None:
        files = write_report(rep, out)
        if not as_json:
            click.echo(f"report: {', '.join(files.values())}")
    if as_json:
        echo_json(rep.to_dict())
