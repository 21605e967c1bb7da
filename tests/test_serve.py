"""`rn-deploy serve` on a real Triton Inference Server (bundled tritonserver): results, bad input, soak, SIGTERM, startup errors.

Servers listen on 127.0.0.1 free ports, every request loop is bounded, and every server started here is
stopped (SIGTERM, then SIGKILL of its whole process tree) whatever the test's outcome.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as thttp
from PIL import Image
from tritonclient.utils import InferenceServerException

from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.client import classify, request, server_message
from rn_deploy.engine import Engine
from rn_deploy.export import export_onnx
from rn_deploy.loadtest import run_level
from rn_deploy.models import create_model
from rn_deploy.serve import PIXELS, prefer_own_libpython, process_tree, tree_rss_mb

from .conftest import FASHION_DIR, free_ports, needs_fashion

REPO = Path(__file__).resolve().parents[1]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
START_TIMEOUT_S = 240  # the backend stub imports torch and ONNX Runtime: slow on a loaded 2-core machine


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


@dataclass
class Server:
    proc: subprocess.Popen[str]
    http: str
    grpc: str
    log: Path

    def stop(self) -> int:
        kids = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            rc = -9
        for pid in [self.proc.pid, *kids]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return rc


def start_server(model: Path, log: Path, *extra: str) -> Server:
    h, g, m = free_ports(3)
    cmd = [sys.executable, "-m", "rn_deploy.cli", "serve", str(model), "--host", "127.0.0.1", "--http-port", str(h),
           "--grpc-port", str(g), "--metrics-port", str(m), *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, text=True)
    srv = Server(proc, f"127.0.0.1:{h}", f"127.0.0.1:{g}", log)
    client = thttp.InferenceServerClient(srv.http)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if client.is_model_ready("classifier"):
                    return srv
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.25)
        raise AssertionError(f"serve not ready in {START_TIMEOUT_S}s: {log.read_text()[-2000:]}")
    except BaseException:
        srv.stop()
        raise
    finally:
        client.close()


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def png_declaring(w: int, h: int) -> bytes:
    """A few hundred bytes of valid PNG header declaring a w x h image (its pixel data cannot fill it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    net = create_model("mnist_resnet", n_classes=10, in_channels=1)
    with torch.no_grad():
        for mod in net.modules():  # zero-init BatchNorms would flatten the outputs: make every class reachable
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    cfg = ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=1, image_size=[28, 28], class_names=FASHION,
                      mean=[0.286], std=[0.353])
    save_checkpoint(d / "model.pt", net, cfg, {"note": "random test weights"})
    return Path(export_onnx(d / "model.pt", d / "model.onnx", verify=False).onnx_path)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Server]:
    srv = start_server(model, model.with_name("serve.log"), "--max-queue-delay-us", "5000")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def fashion_test() -> np.ndarray:
    from rn_deploy.datasets.sources import load_fashion_mnist

    return load_fashion_mnist(FASHION_DIR, "test").images[:128, 0].numpy()


def test_prefer_own_libpython_puts_interpreter_lib_first(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = str(Path(sys.base_prefix) / "lib")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/x:{lib}:/opt/y")
    prefer_own_libpython()
    assert os.environ["LD_LIBRARY_PATH"].split(":") == [lib, "/opt/x", "/opt/y"]


@needs_fashion
def test_served_results_equal_engine_predict_over_http_and_grpc(model: Path, server: Server, fashion_test: np.ndarray) -> None:
    images = fashion_test[:120]
    expected = Engine.load(model).predict(list(images[:, :, :, None]), top_k=None)
    encoded = [png(a) for a in images]

    def one(args: tuple[int, bool]) -> dict:
        i, grpc = args
        return classify(server.grpc if grpc else server.http, [encoded[i]], grpc=grpc)[0]

    # 8 clients at once, so the dynamic batcher really mixes requests into batches.
    with ThreadPoolExecutor(8) as pool:
        for grpc in (False, True):
            got = list(pool.map(one, [(i, grpc) for i in range(len(encoded))]))
            for r, e in zip(got, expected, strict=True):
                assert "error" not in r, r
                assert (r["label"], r["index"]) == (e.label, e.index)
                assert r["score"] == pytest.approx(e.score, abs=1e-6)
                np.testing.assert_allclose(r["probs"], [e.probs[c] for c in FASHION], atol=1e-6, rtol=0)  # measured <= 1e-7: batch composition differs
    assert len({e.index for e in expected}) > 1  # the check could fail: outputs differ between images

    # raw pixels give the same answer as the PNG of the same pixels
    c = thttp.InferenceServerClient(server.http)
    inp = thttp.InferInput(PIXELS, [1, 28, 28, 1], "UINT8")
    inp.set_data_from_numpy(images[:1, :, :, None])
    res = c.infer("classifier", [inp])
    assert int(res.as_numpy("index")[0, 0]) == expected[0].index
    assert res.as_numpy("label")[0, 0].decode() == expected[0].label
    c.close()


@needs_fashion
@pytest.mark.parametrize("case", ["not-an-image", "truncated-png", "truncated-jpeg", "over-max-pixels", "pil-bomb", "empty",
                                  "wrong-channels"])
def test_bad_request_gets_an_error_naming_it_and_server_stays_ready(server: Server, fashion_test: np.ndarray, case: str) -> None:
    good = png(fashion_test[0])
    c = thttp.InferenceServerClient(server.http)
    try:
        if case == "wrong-channels":
            inp = thttp.InferInput(PIXELS, [1, 28, 28, 3], "UINT8")
            inp.set_data_from_numpy(np.zeros((1, 28, 28, 3), np.uint8))
            with pytest.raises(InferenceServerException) as ei:
                c.infer("classifier", [inp])
            assert "pixels" in str(ei.value) and "shape" in str(ei.value)
        else:
            data, words = {
                "not-an-image": (b"hello, I am text, not a picture", "not an image"),
                "truncated-png": (good[: len(good) // 2], "truncated"),
                "truncated-jpeg": (jpeg(fashion_test[0])[:40], "truncated or corrupt JPEG image (40 bytes)"),  # cut in its header
                "over-max-pixels": (png_declaring(5000, 5000), "5000x5000 = 25000000 pixels is over the server's --max-pixels"),
                "pil-bomb": (png_declaring(30000, 30000), "--max-pixels"),
                "empty": (b"", "empty image bytes"),
            }[case]
            with pytest.raises(InferenceServerException) as ei:
                request(c, "classifier", data)
            assert words in server_message(ei.value)
        assert c.is_server_ready() and c.is_model_ready("classifier")
        assert request(c, "classifier", good)["label"] in FASHION
    finally:
        c.close()


def test_classify_cli_prints_label_and_score_and_fails_on_bad_file(server: Server, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    img.write_bytes(png(np.arange(28 * 34, dtype=np.uint8).reshape(28, 34)))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "rn_deploy.cli", "classify", server.grpc, str(img), "--grpc", "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    (r,) = json.loads(run.stdout)
    assert r["label"] in FASHION and abs(sum(r["probs"]) - 1) < 1e-4
    run = subprocess.run([sys.executable, "-m", "rn_deploy.cli", "classify", server.http, str(img), str(bad)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1
    assert run.stdout.startswith(f"{img}: {r['label']} ")
    assert "notes.txt: error: not an image" in run.stderr


@needs_fashion
def test_loadtest_cli_writes_json_markdown_png(server: Server, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "rn_deploy.cli", "loadtest", server.http, "--dataset", "fashion-mnist", "--limit", "50",
                          "--concurrency", "1,4", "--duration", "1", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    rep = json.loads((tmp_path / "loadtest.json").read_text())
    assert [lv["concurrency"] for lv in rep["levels"]] == [1, 4]
    for lv in rep["levels"]:
        assert lv["errors"] == 0 and lv["requests"] > 0 and lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"]
        assert 0 < lv["client_cpu"] < 2 and lv["client_bound"] == (lv["client_cpu"] >= 0.9)  # the client's own CPU, reported
    assert "| 4 |" in (tmp_path / "loadtest.md").read_text() and "client CPU" in (tmp_path / "loadtest.md").read_text()
    assert (tmp_path / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Where the latency went, from the server's statistics over exactly the window's requests (issue 33).
    for lv in rep["levels"]:
        s = lv["split"]
        assert s["requests"] == lv["requests"], (s, lv)  # no warm-up request, none missing
        phases = s["queue_ms"] + s["compute_input_ms"] + s["compute_infer_ms"] + s["compute_output_ms"]
        assert 0 < phases <= s["server_ms"] + 1e-3 and s["compute_infer_ms"] > 0
        assert 0 < s["server_ms"] <= lv["mean_ms"] and s["client_ms"] >= 0  # the server's time is inside the client's
        parts = phases + s["server_other_ms"] + s["client_ms"]
        assert parts == pytest.approx(lv["mean_ms"], abs=0.01)
        assert lv["p50_ms"] * 0.5 <= lv["mean_ms"] <= lv["p99_ms"] * 1.01
        assert s["avg_batch"] >= 1 and 0 < s["busy"] <= 1.05
        starved = lv["loop_lag_ms"] > max(0.2, 0.1 * lv["mean_ms"]) and s["busy"] < 0.9
        assert lv["loop_lag_ms"] >= 0 and lv["client_starved"] == starved
        own = min(max(0.0, s["client_ms"]), lv["client_cpu_ms"])
        assert lv["own_ms"] == pytest.approx(own, abs=1e-3)
        assert lv["client_share"] == pytest.approx(own / lv["mean_ms"], abs=1e-3)
        assert lv["client_held"] == (lv["client_share"] >= 0.1 and s["busy"] < 0.9)
        assert lv["client_cpu_ms"] == pytest.approx(lv["client_cpu"] * 1e3 / lv["requests_per_s"], rel=0.01)
        bound = lv["client_bound"] or lv["client_starved"] or lv["client_held"]
        assert lv["verdict"].startswith("the client was the bottleneck" if bound else "the server set the pace")
        assert f"{own:.2f} ms of each {lv['mean_ms']:.2f} ms request" in lv["verdict"]
        assert f"outside the server's statistics {max(0.0, s['client_ms']):.2f} ms" in lv["verdict"]
    assert rep["levels"][1]["split"]["avg_batch"] > 1  # four clients, a 5 ms batching window: batches form
    md = (tmp_path / "loadtest.md").read_text()
    assert "| compute infer |" in md and f"| 4 | {rep['levels'][1]['mean_ms']:.2f} |" in md
    assert (tmp_path / "loadtest-split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean " in run.stdout and "compute infer" in run.stdout  # the table printed per level



@needs_fashion
def test_loadtest_raw_http_client_against_the_real_server(server: Server, fashion_test: np.ndarray) -> None:
    """rn_deploy.httpload on a real Triton: keep-alive across requests, a 400 carries the same line tritonclient reads."""
    import asyncio

    from rn_deploy.httpload import Connection, HttpInferError, infer_request, split_address

    host, port = split_address(server.http)
    outs = ("label", "index", "score", "probs")
    good = infer_request(host, port, "classifier", "image", png(fashion_test[0]), outs)
    bad_bytes = b"hello, I am text, not a picture"
    bad = infer_request(host, port, "classifier", "image", bad_bytes, outs)
    other = infer_request(host, port, "nosuchmodel", "image", png(fashion_test[0]), outs)

    async def go() -> tuple[int, list[str]]:
        conn, errs = Connection(host, port, outs), []
        try:
            for req in (good, good, bad, good, other, good):
                try:
                    await asyncio.wait_for(conn.infer(req), 60)
                except HttpInferError as e:
                    errs.append(server_message(e))
            return conn.connects, errs
        finally:
            await conn.close()

    connects, errs = asyncio.run(go())
    c = thttp.InferenceServerClient(server.http)
    try:
        with pytest.raises(InferenceServerException) as ei:
            request(c, "classifier", bad_bytes)
    finally:
        c.close()
    assert connects == 1  # one keep-alive connection, errors included
    assert len(errs) == 2 and errs[0] == server_message(ei.value) and "not an image" in errs[0] and "\n" not in errs[0]
    assert "nosuchmodel" in errs[1]


def test_loadtest_split_over_grpc_counts_exactly_the_window(server: Server, fashion_test: np.ndarray) -> None:
    """gRPC statistics (int64 as strings) and the settle-wait: the server counts a request when it releases it, a
    moment after the client has the answer; the window's count must still be exact, at every concurrency."""
    images = [png(a) for a in fashion_test[:32]]
    for c in (1, 4, 16):
        lv = run_level(server.grpc, "classifier", images, c, 1.0, True)
        assert lv.errors == 0 and lv.split is not None and lv.split.requests == lv.requests, (c, lv)
        assert 0 < lv.split.server_ms <= (lv.mean_ms or 0)


def test_latency_split_arithmetic_on_hand_made_statistics() -> None:
    """counters() and split() on two statistics documents written by hand (HTTP JSON form, gRPC's int64 strings)."""
    from rn_deploy.serverstats import counters, split

    def doc(n: int, ns: int, execs: int, as_str: bool = False) -> dict:
        v = str if as_str else int
        phase = {"success": 10, "queue": 2, "compute_input": 1, "compute_infer": 5, "compute_output": 1}
        return {"model_stats": [{"inference_count": v(n), "execution_count": v(execs), "inference_stats": {
            k: {"count": v(n), "ns": v(n * per * ns)} for k, per in phase.items()},
            "batch_stats": [{"batch_size": 4, **{k: {"count": v(execs), "ns": v(execs * 7 * ns)}
                                               for k in ("compute_input", "compute_infer", "compute_output")}}]}]}

    before, after = counters(doc(10, 1_000_000, 5)), counters(doc(110, 1_000_000, 30, as_str=True))
    s = split(before, after, mean_latency_ms=12.5, seconds=1.0, instances=1)
    assert s is not None and s.requests == 100
    assert (s.server_ms, s.queue_ms, s.compute_input_ms, s.compute_infer_ms, s.compute_output_ms) == (10, 2, 1, 5, 1)
    assert s.server_other_ms == 1 and s.client_ms == 2.5 and sum(s.parts().values()) == pytest.approx(12.5)
    assert s.avg_batch == 4.0 and s.busy == pytest.approx(25 * 21e6 / 1e9)  # 25 executions x 3 phases x 7 ms in 1 s
    assert split(before, before, 12.5, 1.0) is None  # nothing counted: no split, not a division by zero


@needs_fashion
def test_soak_concurrency_32_no_errors_and_steady_memory(server: Server, fashion_test: np.ndarray) -> None:
    """A short soak (bench/serve_bench.py --soak runs the 30 s version): marks at 1/3 and the end."""
    duration = 9.0
    images = [png(a) for a in fashion_test[:64]]
    result: list = []
    t = threading.Thread(target=lambda: result.append(run_level(server.http, "classifier", images, 32, duration, False)))
    t.start()
    time.sleep(1.0 + duration / 3)
    rss_early = tree_rss_mb(server.proc.pid)
    t.join(duration + 120)
    rss_late = tree_rss_mb(server.proc.pid)
    (lv,) = result
    assert lv.errors == 0, lv.first_error
    assert lv.requests > 32
    assert abs(rss_late - rss_early) <= 0.10 * rss_early, (rss_early, rss_late)


def test_sigterm_answers_requests_in_flight_and_exits_0(model: Path, tmp_path: Path) -> None:
    # A long batching delay keeps the requests queued in the server when the signal arrives.
    srv = start_server(model, tmp_path / "serve.log", "--max-queue-delay-us", "400000", "--json")
    try:
        deadline = time.monotonic() + 10  # the model answers "ready" a moment before serve prints its line
        while not (ready := [json.loads(ln) for ln in srv.log.read_text().splitlines() if ln.startswith("{")]):
            assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
            time.sleep(0.1)
        assert len(ready) == 1 and ready[0]["http"] == srv.http and ready[0]["grpc"] == srv.grpc  # serve --json
        kids = process_tree(srv.proc.pid)
        assert kids, "tritonserver should run as a child"
        data = png(np.full((28, 28), 128, np.uint8))

        def send(_: int) -> dict:
            c = thttp.InferenceServerClient(srv.http, network_timeout=30)
            try:
                return request(c, "classifier", data)
            finally:
                c.close()

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(send, i) for i in range(6)]
            time.sleep(0.15)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=30) for f in futures]
            rc = srv.proc.wait(15)
            took = time.monotonic() - t0
        assert all(a["label"] in FASHION for a in answers)
        assert rc == 0, srv.log.read_text()[-2000:]
        assert took < 10, took
        assert not [p for p in kids if alive(p)]
    finally:
        srv.stop()


def _serve_fails(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "rn_deploy.cli", "serve", *args], capture_output=True, text=True, env=env, timeout=120)


def test_bad_model_path_is_one_line_exit_1(tmp_path: Path) -> None:
    h, g, m = free_ports(3)
    run = _serve_fails([str(tmp_path / "missing.onnx"), "--host", "127.0.0.1", "--http-port", str(h), "--grpc-port", str(g),
                        "--metrics-port", str(m)])
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.onnx'}: no such file"]


def test_port_in_use_is_one_line_exit_1_and_nothing_left_running(model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        g, m = free_ports(2)
        before = set(os.listdir("/proc"))
        run = _serve_fails([str(model), "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(g), "--metrics-port", str(m)])
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1
    assert len(lines) == 1 and lines[0].startswith(f"error: --http-port {port}: cannot listen on 127.0.0.1:{port}"), run.stderr
    new = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    strays = []
    for p in new:
        try:
            if "tritonserver" in Path(f"/proc/{p}/cmdline").read_text() and str(g) in Path(f"/proc/{p}/cmdline").read_text():
                strays.append(p)
        except OSError:
            pass
    assert not strays


def test_classify_without_a_server_is_one_line_exit_1(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rn_deploy.cli import main

    img = tmp_path / "x.png"
    img.write_bytes(png(np.zeros((28, 28), np.uint8)))
    (port,) = free_ports(1)
    res = CliRunner().invoke(main, ["classify", f"127.0.0.1:{port}", str(img)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["error: cannot reach a Triton server ([Errno 111] Connection refused); "
                                               "is `rn-deploy serve` running there (HTTP port?)?"]


def _infer_json(http: str, data: bytes) -> tuple[int, str]:
    """One raw KServe-v2 JSON request (no tritonclient in the way): HTTP status and body."""
    import urllib.error
    import urllib.request

    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [data.decode("latin-1")]}]})
    req = urllib.request.Request(f"http://{http}/v2/models/classifier/infer", body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_request_is_http_400_and_grpc_invalid_argument_with_one_line_no_internals(server: Server) -> None:
    status, body = _infer_json(server.http, b"hello, I am text")
    assert status == 400, body
    msg = json.loads(body)["error"]
    assert msg == "not an image (16 bytes starting b'hello, I'); send an encoded PNG or JPEG", msg
    import tritonclient.grpc as tgrpc

    c = tgrpc.InferenceServerClient(server.grpc)
    try:
        with pytest.raises(InferenceServerException) as ei:
            request(c, "classifier", png_declaring(1, 300_000), grpc=True)
        assert ei.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert ei.value.message() == ("image of 1x300000 has aspect ratio 1:300000; the server takes at most 32:1 (--max-aspect)")
    finally:
        c.close()
    for text in (msg, ei.value.message()):
        assert "Traceback" not in text and "/" not in text and ".py" not in text and "\n" not in text


def test_statistics_api_answers_and_admin_apis_are_closed(server: Server) -> None:
    """perf_analyzer and Model Analyzer read the statistics API; PyTriton kept it behind a token."""
    import tritonclient.grpc as tgrpc

    c = thttp.InferenceServerClient(server.http)
    g = tgrpc.InferenceServerClient(server.grpc)
    try:
        request(c, "classifier", png(np.zeros((28, 28), np.uint8)))
        stats = c.get_inference_statistics("classifier")["model_stats"][0]
        assert stats["name"] == "classifier" and stats["inference_stats"]["success"]["count"] >= 1
        assert g.get_inference_statistics("classifier").model_stats[0].name == "classifier"
        assert c.get_model_config("classifier")["max_batch_size"] == 32  # perf_analyzer reads this too
        with pytest.raises(InferenceServerException, match="restricted"):
            c.unload_model("classifier")
    finally:
        c.close()
        g.close()


def test_idle_serve_parent_holds_under_300_mb_without_torch_or_onnxruntime(server: Server) -> None:
    """The `serve` process only supervises tritonserver (issue 33: it held 768 MB-1 GB with torch and ORT loaded to check
    the model): the model is checked in a short-lived child, the stub alone runs it."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    rss_mb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:"))) / 1024
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert rss_mb <= 300, rss_mb
    assert "libtorch" not in maps and "onnxruntime" not in maps, "the supervisor loaded torch or ONNX Runtime"
    assert any(alive(p) for p in process_tree(server.proc.pid)), "the check's child is gone; tritonserver is not"


def test_backend_stub_runs_with_passive_openmp_threads(server: Server) -> None:
    """torch's OpenMP threads in the stub must sleep, not spin, between parallel regions (issue 33: spinning beside
    tritonserver's threads cost 3-5 ms of CPU per image at batch 2 on 2 cores, ~0.4 ms passive)."""
    stubs = [p for p in process_tree(server.proc.pid) if Path(f"/proc/{p}/comm").read_text().startswith("triton_python")]
    assert stubs, "no Python-backend stub found"
    for p in stubs:
        env = dict(e.split("=", 1) for e in Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in e)
        assert env.get("OMP_WAIT_POLICY") == "PASSIVE", p


def test_a_model_the_loader_refuses_is_one_line_exit_1_from_the_check(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + b"not a model" * 10)
    h, g, m = free_ports(3)
    run = _serve_fails([str(bad), "--host", "127.0.0.1", "--http-port", str(h), "--grpc-port", str(g), "--metrics-port", str(m)])
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {bad}"), run.stderr
    assert "Traceback" not in run.stderr


@needs_fashion
def test_poisoned_traffic_fails_no_good_request(model: Path, tmp_path: Path, fashion_test: np.ndarray) -> None:
    """16 good clients and 1 looping on b"not an image", default batching delay (issue 22: 58.8% of the good requests
    failed with PyTriton, which answers a batch as a whole). Planted: answering every request of an execute() call with
    the first error fails this test."""
    srv = start_server(model, tmp_path / "serve.log")
    try:
        images = [png(a) for a in fashion_test[:32]]
        stop = threading.Event()
        bad = {"sent": 0, "400": 0}

        def poison() -> None:
            c = thttp.InferenceServerClient(srv.http)
            try:
                while not stop.is_set():
                    bad["sent"] += 1
                    try:
                        request(c, "classifier", b"not an image")
                    except InferenceServerException as e:
                        bad["400"] += e.status() == "400"
            finally:
                c.close()

        t = threading.Thread(target=poison)
        t.start()
        try:
            lv = run_level(srv.http, "classifier", images, 16, 4.0, False)
        finally:
            stop.set()
            t.join(30)
        assert lv.errors == 0, lv.first_error
        assert lv.requests > 16 and bad["sent"] > 10 and bad["400"] == bad["sent"], (lv, bad)
    finally:
        assert srv.stop() == 0


def test_aspect_ratio_bombs_are_refused_and_admitted_images_cost_under_100_mb(model: Path, tmp_path: Path) -> None:
    """A 1x300,000 PNG of 370 bytes took the server from 829 to 1,786 MB (fit() scaled its short side up to 28 px);
    1x2,000,000 asked for 6.3 GB. Now refused from the header; the largest images the limits admit (12 MP at
    --max-pixels, 32:1 at --max-aspect), one request each, grow the server's memory by < 100 MB (sampled every 20 ms)."""
    srv = start_server(model, tmp_path / "serve.log", "--max-queue-delay-us", "20000")
    c = thttp.InferenceServerClient(srv.http, network_timeout=120)
    try:
        request(c, "classifier", png(np.zeros((28, 28), np.uint8)))
        base = tree_rss_mb(srv.proc.pid)
        peak, growth = [base], []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], tree_rss_mb(srv.proc.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for w, h in ((1, 300_000), (1, 2_000_000), (300_000, 1), (20_000, 1)):
                with pytest.raises(InferenceServerException) as ei:
                    request(c, "classifier", png_declaring(w, h))
                assert ei.value.status() == "400"
                assert "has aspect ratio" in server_message(ei.value) and "at most 32:1 (--max-aspect)" in server_message(ei.value)
            ramp = np.add.outer(np.arange(4000), np.arange(3000)).astype(np.uint8)  # 12,000,000 pixels: --max-pixels
            admitted = [ramp, np.resize(ramp, (612, 19584)), np.resize(ramp, (19584, 612)), np.full((1, 32), 7, np.uint8)]
            for a in admitted:  # one request at a time: the bound is per request
                (r,) = classify(srv.http, [png(a)])
                assert "error" not in r, r
                growth.append((a.shape, peak[0] - base, tree_rss_mb(srv.proc.pid) - base))
                peak[0] = base = tree_rss_mb(srv.proc.pid)
        finally:
            done.set()
            sampler.join()
        assert all(p < 100 and after < 100 for _, p, after in growth), f"{growth}"
    finally:
        c.close()
        assert srv.stop() == 0


def test_preprocessing_refuses_elongated_images_before_resizing_and_crops_are_copies() -> None:
    """The one preprocessing (Engine.predict, validate --images, eval, serve). Planted: dropping check_bounds makes the
    1 x 300,000 case allocate 28 x 8.4M floats; a view instead of .clone() keeps the 28 x 56 tensor alive."""
    from rn_deploy.errors import RnDeployError
    from rn_deploy.preprocess import MAX_RESIZED_ELEMENTS, fit, fit_float, preprocess

    t0 = time.perf_counter()
    with pytest.raises(RnDeployError) as ei:
        preprocess([np.zeros((1, 300_000), np.uint8)], (28, 28), 1, [0.5], [0.5])
    assert str(ei.value) == "image 0: image of 300000x1 has aspect ratio 300000:1; preprocessing takes at most 32:1 (max_aspect)"
    with pytest.raises(RnDeployError, match=f"would be resized to 8400000x28 .* at most {MAX_RESIZED_ELEMENTS}"):
        preprocess([np.zeros((1, 300_000), np.uint8)], (28, 28), 1, [0.5], [0.5], max_aspect=1e9)
    assert time.perf_counter() - t0 < 1  # refused before any enlargement
    assert preprocess([np.zeros((1, 32), np.uint8)], (28, 28), 1, [0.5], [0.5]).shape == (1, 1, 28, 28)  # 32:1 is admitted
    crop = fit(torch.rand(1, 28, 56), (28, 28))
    assert crop.untyped_storage().nbytes() == 28 * 28 * 4  # its own storage, not a view of the 28 x 56 tensor
    big = torch.randint(0, 256, (3, 1100, 1000), dtype=torch.uint8)  # > 1M pixels: resized a channel at a time
    assert torch.equal(fit_float(big, (224, 224)), fit(big.float(), (224, 224)))


def test_export_triton_image_model_is_the_served_contract_and_runs_on_tritonserver(model: Path, tmp_path: Path) -> None:
    """export-triton writes NAME_image: the same Python-backend config `serve` runs (only the model path differs), and
    the bundled tritonserver serves it from the exported repository with the same answers and per-request 400s."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from rn_deploy.serve import ServeOptions, server_env, stage_backends, tritonserver_command, write_repository
    from rn_deploy.serve.server import _is_ready, _ready_url, _stop_server
    from rn_deploy.triton import export_triton

    export_triton(model, tmp_path / "repo", "fm", kind="cpu")
    h, g, m = free_ports(3)
    opts = ServeOptions(model, name="fm_image", host="127.0.0.1", http_port=h, grpc_port=g, metrics_port=m)
    served = write_repository(tmp_path / "served", opts, 1, 10)

    def parse(folder: Path):
        return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    exported, ours = parse(tmp_path / "repo" / "fm_image"), parse(served)
    assert exported.parameters["model"].string_value == "../fm/1/model.onnx"
    assert ours.parameters["model"].string_value == str(model)
    exported.parameters["model"].string_value = ours.parameters["model"].string_value
    assert exported == ours and ours.backend == "python" and [i.name for i in ours.input] == ["image", "pixels"]
    assert [o.name for o in ours.output] == ["label", "index", "score", "probs"] and list(ours.output[3].dims) == [10]
    assert (tmp_path / "repo" / "fm_image" / "1" / "model.py").read_text() == (served / "1" / "model.py").read_text()

    cmd = tritonserver_command(opts, tmp_path / "repo", stage_backends(tmp_path / "backends"), "t", (h, g),
                               "--model-control-mode=explicit", "--load-model=fm_image")  # fm itself needs the ORT backend
    with open(tmp_path / "triton.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _is_ready(_ready_url(opts)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "triton.log").read_text()[-2000:]
            time.sleep(0.25)
        img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
        good, bad = classify(f"127.0.0.1:{h}", [png(img), b"not an image"], model="fm_image")
        expected = Engine.load(model).predict([img[:, :, None]])[0]
        assert (good["label"], good["index"]) == (expected.label, expected.index) and good["score"] == pytest.approx(expected.score, abs=1e-6)
        assert bad["error"].startswith("not an image")
    finally:
        _stop_server(proc, 10)



EDITABLE_LAUNCH = """\
import sys
from importlib.util import spec_from_file_location
REPO = sys.argv.pop(1)
sys.path[:] = [p for p in sys.path if p not in ("", ".", REPO)]
class EditableFinder:  # what an editable install's .pth hook does: rn_deploy found off sys.path
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "rn_deploy":
            return spec_from_file_location(name, REPO + "/rn_deploy/__init__.py", submodule_search_locations=[REPO + "/rn_deploy"])
        return None
sys.meta_path.insert(0, EditableFinder)
sys.argv[0] = "rn-deploy"
from rn_deploy.cli import main
main()
"""


@pytest.fixture(scope="module")
def editable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``.venv/bin/rn-deploy serve`` from an editable install, venv not activated: rn_deploy comes from an import hook,
    not sys.path, and the environment has no VIRTUAL_ENV, PYTHONPATH or venv on PATH. The model is a static 28 px
    ONNX with a recorded range of [28, 56]: a 56 px image passes every check, then fails inside ONNX Runtime."""
    d = tmp_path_factory.mktemp("editable")
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=1, image_size=[28, 28], class_names=FASHION,
                      mean=[0.286], std=[0.353], size_range=[28, 56])
    save_checkpoint(d / "model.pt", create_model("mnist_resnet", n_classes=10, in_channels=1), cfg, {"note": "random"})
    model = Path(export_onnx(d / "model.pt", d / "model.onnx", verify=False, dynamic=False).onnx_path)
    (d / "launch.py").write_text(EDITABLE_LAUNCH)
    h, g, m = free_ports(3)
    env = {"HOME": os.environ.get("HOME", str(d)), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    cmd = [sys.executable, str(d / "launch.py"), str(REPO), "serve", str(model), "--host", "127.0.0.1", "--http-port", str(h),
           "--grpc-port", str(g), "--metrics-port", str(m), "--max-queue-delay-us", "200000"]
    with open(d / "serve.log", "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=d, text=True)
    srv = Server(proc, f"127.0.0.1:{h}", f"127.0.0.1:{g}", d / "serve.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(srv.http):
            log = srv.log.read_text()
            assert proc.poll() is None and time.monotonic() < deadline and "No module named" not in log, log[-3000:]
            time.sleep(0.5)
        yield srv
    finally:
        srv.stop()


def test_serve_from_an_editable_install_without_an_activated_venv(editable_server: Server) -> None:
    """The stub died with ModuleNotFoundError: No module named 'rn_deploy' (issue 32). Planted: the stub's PYTHONPATH
    without the folder rn_deploy was imported from fails the fixture."""
    status, label = _status(editable_server.http, png(np.full((28, 28), 200, np.uint8)))
    assert status == 200 and label in FASHION, label


def test_one_failing_request_fails_alone_in_a_batch_on_a_real_server(editable_server: Server) -> None:
    """Six good requests and one that fails inside the engine, sent together so the 200 ms batching delay puts them in
    one execute call: the good ones are answered, the guilty one alone gets a 500 with an id. Planted: no retry of a
    failed batch request by request makes all seven 500."""
    good, guilty = png(np.full((28, 28), 90, np.uint8)), png(np.full((56, 56), 90, np.uint8))
    with ThreadPoolExecutor(7) as pool:
        got = list(pool.map(lambda data: _status(editable_server.http, data), [good] * 3 + [guilty] + [good] * 3))
    assert [s for s, _ in got] == [200] * 3 + [500] + [200] * 3, got
    assert got[3][1].startswith("internal server error (id "), got
    stats = json.loads(urllib_get(f"http://{editable_server.http}/v2/models/classifier/stats"))["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"], stats  # requests really were batched together


def _answers(http: str) -> bool:
    c = thttp.InferenceServerClient(http)
    try:
        return request(c, "classifier", png(np.zeros((28, 28), np.uint8)))["label"] in FASHION
    except Exception:  # noqa: BLE001 - not listening or not ready yet
        return False
    finally:
        c.close()


def _status(http: str, data: bytes) -> tuple[int, str]:
    """HTTP status and message of one binary-encoded request (tritonclient: a PNG in a JSON string would be mangled)."""
    c = thttp.InferenceServerClient(http, network_timeout=120)
    try:
        return 200, request(c, "classifier", data)["label"]
    except InferenceServerException as e:
        return int(e.status() or 0), server_message(e)
    finally:
        c.close()


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return str(r.read().decode())


@pytest.mark.parametrize("asked", [None, 3])
def test_backend_ort_session_shares_the_cores_sleeps_between_runs_and_answers_unchanged(model: Path, asked: int | None) -> None:
    """Issue 33: ONNX Runtime inside tritonserver gets its instance's share of the cores less one (or the config's
    ``ort_threads``, serve --ort-threads, read by ``initialize``), one inter-op thread and no
    spinning (its pool spun on cores tritonserver's threads needed); the outputs, built for the batch at once, are the
    per-row argmax/max of the probabilities, row slices of one batch."""
    from rn_deploy.serve.backend import TritonPythonModel

    cores = len(os.sched_getaffinity(0))
    torch_threads = torch.get_num_threads()
    tpm = TritonPythonModel()
    config: dict[str, Any] = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}],
                              "parameters": {"model": {"string_value": str(model)}, "max_pixels": {"string_value": "1000000"},
                                             "max_aspect": {"string_value": "32"}}}
    if asked is not None:
        config["parameters"]["ort_threads"] = {"string_value": str(asked)}
    want = asked or max(1, (cores - 1) // 2)  # two instances share the cores less one
    tpm.initialize({"model_config": json.dumps(config), "model_repository": str(model.parent)})
    try:
        opts = tpm.classifier.engine.runner.opts
        assert opts.intra_op_num_threads == want and opts.inter_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert torch.get_num_threads() == want  # torch's preprocessing: the same share
        rng = np.random.default_rng(0)
        reqs = [{"pixels": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)} for n in (1, 3, 2)]
        answers = tpm.classifier.answer(reqs)
        expected = Engine.load(model).predict([a for r in reqs for a in r["pixels"]])
        rows = [row for a in answers for row in zip(a["label"][:, 0], a["index"][:, 0], a["score"][:, 0], a["probs"], strict=True)]
        assert [(lab.decode(), int(i)) for lab, i, _, _ in rows] == [(p.label, p.index) for p in expected]
        for (_, i, score, probs), p in zip(rows, expected, strict=True):
            assert score == probs.max() == probs[i] and score == pytest.approx(p.score, abs=1e-6)
        assert all(a["probs"].dtype == np.float32 and a["score"].shape == (len(r["pixels"]), 1) for a, r in zip(answers, reqs, strict=True))
    finally:
        tpm.finalize()
        torch.set_num_threads(torch_threads)


def test_backend_softmax_is_numpy_stable_and_matches_torch() -> None:
    from rn_deploy.serve.backend import softmax

    logits = np.array([[1000.0, 0.0, -1000.0], [0.1, 0.2, 0.3], [-5e4, -5e4, -5e4]], dtype=np.float32)
    p = softmax(logits)
    assert p.dtype == np.float32 and np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-6)
    assert np.allclose(p, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-7)
