"""Golden probabilities: `rn-deploy serve` and `Engine.predict` against the documented preprocessing, written here.

Serve was once compared only with ``Engine.predict``, which shares its preprocessing, so a bug in that
preprocessing moved both and nothing failed (issue 24 item 10). Here the answer comes from code that
shares nothing with rn_deploy's: the Fashion-MNIST IDX file read with ``gzip``, the documented policy
(rn_deploy/preprocess.py, docs/formats.md) written out in a few lines with PIL and plain
``torch.nn.functional.interpolate``, the checkpoint's mean/std, and ``onnxruntime.InferenceSession``
run directly. The server is the real one, started as a user starts it (``rn-deploy serve ... --json``
on free 127.0.0.1 ports, ready when its JSON line arrives) and always stopped; only its public
contract is used: input ``image`` (BYTES), outputs ``label``/``index``/``score``/``probs``.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rn_deploy import Engine
from rn_deploy.checkpoint import load_checkpoint, save_checkpoint
from rn_deploy.export import export_onnx

from .conftest import FASHION_DIR, free_ports, make_model, needs_fashion

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# (H, W) of the images sent: at the model size (the usual serving case), smaller, larger, non-square both ways.
SIZES = [(28, 28)] * 6 + [(20, 20), (56, 40), (33, 90), (100, 31), (29, 28)]
START_TIMEOUT_S = 240


# ---------------------------------------------------------------------------------------------
# The independent answer
# ---------------------------------------------------------------------------------------------


def idx_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W) from a gzipped IDX3 file: magic, count, rows, cols (big-endian int32), then the pixels."""
    raw = gzip.open(path).read()
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def golden_input(img: np.ndarray, size: tuple[int, int], mean: float, std: float) -> np.ndarray:
    """The documented policy for one grey image: short side resized (bilinear, antialiased) to cover ``size``,
    centre crop, an image already at ``size`` untouched; then ``(x - 255 mean) / (255 std)``. Returns 1x1xHxW."""
    th, tw = size
    x = torch.tensor(img, dtype=torch.float32)[None, None]
    h, w = img.shape
    if (h, w) != (th, tw):
        s = max(th / h, tw / w)
        nh, nw = max(th, round(h * s)), max(tw, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
    return ((x - 255 * mean) / (255 * std)).numpy()


def golden_probs(onnx_path: Path, images: list[np.ndarray], size: tuple[int, int], mean: float, std: float) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": golden_input(im, size, mean, std)})[0] for im in images])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Fixtures: a model with Fashion-MNIST's own mean/std, real PNGs, a real server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("golden")
    net, cfg = make_model("mnist_resnet", n_classes=10, in_channels=1, size=28)
    cfg.class_names, cfg.mean, cfg.std = list(FASHION), [0.2860], [0.3530]  # far from 0.5/0.5: a skipped step shows
    ck = save_checkpoint(d / "model.pt", net, cfg, {"note": "random test weights"})
    return {"ck": ck, "onnx": Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path), "dir": d}


@pytest.fixture(scope="module")
def pngs(model: dict[str, Any]) -> list[tuple[Path, np.ndarray]]:
    """Real Fashion-MNIST test images as PNG files at :data:`SIZES` (others resized with PIL), with their pixels."""
    test = idx_images(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    out = []
    for i, (h, w) in enumerate(SIZES):
        im = Image.fromarray(test[100 + 37 * i])
        if (h, w) != (28, 28):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
        path = model["dir"] / f"img{i}_{h}x{w}.png"
        im.save(path)
        out.append((path, np.asarray(Image.open(path))))  # the pixels the file holds, as any decoder reads them
    return out


def _rn_deploy() -> list[str]:
    """The ``rn-deploy`` console script of this interpreter's environment (``python -m rn_deploy`` where there is none)."""
    script = Path(sys.executable).with_name("rn-deploy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rn_deploy"]


@pytest.fixture(scope="module")
def server(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``rn-deploy serve MODEL --json`` in its own process group; yields its ready line; always stopped."""
    h, g, m = free_ports(3)
    cmd = [*_rn_deploy(), "serve", str(model["onnx"]), "--host", "127.0.0.1", "--http-port", str(h), "--grpc-port", str(g),
           "--metrics-port", str(m), "--json"]
    log = model["dir"] / "serve.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout or []], daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = None
        while ready is None:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready in {START_TIMEOUT_S}s: {log.read_text()[-2000:]}")
            try:
                line = lines.get(timeout=1.0).strip()
            except queue.Empty:
                continue
            # The ready line is the JSON object; whether stdout holds nothing else is the CLI's own test.
            if line.startswith("{") and line.endswith("}"):
                ready = json.loads(line)
        assert ready["http"] == f"127.0.0.1:{h}", ready
        yield ready
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the server's process group (serve and the tritonserver it started), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            os.killpg(proc.pid, 0)  # the group outlives its leader while a child is left
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        time.sleep(1)


def _served(url: str, path: Path) -> dict[str, Any]:
    import tritonclient.http as thttp

    client = thttp.InferenceServerClient(url)
    try:
        inp = thttp.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=object))
        outs = [thttp.InferRequestedOutput(n) for n in ("label", "index", "score", "probs")]
        res = client.infer("classifier", [inp], outputs=outs)
        label = res.as_numpy("label").reshape(-1)[0]
        return {"label": label.decode() if isinstance(label, bytes) else str(label), "index": int(res.as_numpy("index").reshape(-1)[0]),
                "score": float(res.as_numpy("score").reshape(-1)[0]), "probs": res.as_numpy("probs").reshape(-1)}
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@needs_fashion
def test_engine_predict_matches_the_golden_probabilities(model: dict[str, Any], pngs: list[tuple[Path, np.ndarray]]):
    """Planted: ``preprocess`` returning the stacked pixels without mean/std when every image is already at the model
    size (rn_deploy/preprocess.py, the usual serving case): the 28x28 images fail here (and in the serve test)."""
    cfg = load_checkpoint(model["ck"]).config
    expected = golden_probs(model["onnx"], [px for _p, px in pngs], tuple(cfg.image_size), cfg.mean[0], cfg.std[0])
    assert expected.max(axis=1).min() < 0.999  # the model is not saturated: probabilities can show a difference
    with Engine.load(model["onnx"]) as eng:
        for (path, px), want in zip(pngs, expected, strict=True):
            (pred,) = eng.predict([px])  # one call per image: an all-at-model-size batch is the case under test
            got = np.array([pred.probs[c] for c in FASHION])
            np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{path.name}")
            assert pred.label == FASHION[int(want.argmax())]


@needs_fashion
def test_serve_matches_the_golden_probabilities(model: dict[str, Any], pngs: list[tuple[Path, np.ndarray]],
                                                server: dict[str, Any]):
    """The served probabilities of every PNG (sent as encoded bytes, one request each) equal the golden ones.

    Planted: the same preprocess bug as above (mean/std skipped for images already at the model size): every
    28x28 request failed here while the other sizes passed."""
    cfg = load_checkpoint(model["ck"]).config
    expected = golden_probs(model["onnx"], [px for _p, px in pngs], tuple(cfg.image_size), cfg.mean[0], cfg.std[0])
    for (path, _px), want in zip(pngs, expected, strict=True):
        got = _served(server["http"], path)
        np.testing.assert_allclose(got["probs"], want, atol=2e-5, err_msg=f"{path.name}")
        assert got["index"] == int(want.argmax()) and got["label"] == FASHION[got["index"]]
        assert got["score"] == pytest.approx(float(want.max()), abs=2e-5)


def test_an_image_at_the_model_size_gets_the_same_numbers_alone_or_beside_one_that_is_resized():
    """``preprocess`` normalises a batch that is all at the model size in NumPy (a server's batch of one) and a batch
    that needs resizing with torch; the rows of the same image are bit-identical either way, and equal the documented
    ``(x - 255 mean) / (255 std)`` in float32 written here. Planted: the NumPy path computing its mean/std in float64
    (rows differ in the last bits), or leaving out the std (rows differ by far)."""
    from rn_deploy.preprocess import preprocess

    rng = np.random.default_rng(3)
    mean, std = (0.2860, 0.4, 0.5), (0.3530, 0.25, 0.28)
    at_size = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 33, 3), dtype=np.uint8)
    alone = preprocess([at_size], (28, 28), 3, mean, std).numpy()
    beside = preprocess([at_size, other], (28, 28), 3, mean, std).numpy()
    documented = ((at_size.astype(np.float32).transpose(2, 0, 1) - np.float32(255) * np.array(mean, np.float32)[:, None, None])
                  / (np.float32(255) * np.array(std, np.float32)[:, None, None]))
    assert alone.shape == (1, 3, 28, 28) and alone.dtype == np.float32 and alone.flags.c_contiguous
    assert np.array_equal(alone[0], beside[0])
    assert np.array_equal(alone[0], documented)
