"""The served model's request handling without a server: Classifier and TritonPythonModel over real tiny ONNX models.

Fast (no tritonserver, no tritonclient): decoding (PNG/JPEG only, 16-bit scaled, every decoder failure a 400), checks
at the size a request really runs at, a failing batch retried per request, the body and per-batch pixel limits, and a
fault of the server answered with an id. ``triton_python_backend_utils`` exists only inside Triton's stub process, so
the TritonPythonModel tests use a stand-in module (named as such) that records what ``execute`` answers and logs.
"""

from __future__ import annotations

import gc
import io
import json
import random
import re
import sys
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.engine import Engine
from rn_deploy.errors import RequestError
from rn_deploy.export import export_onnx
from rn_deploy.models import create_model
from rn_deploy.serve import Classifier, decode_image

from .conftest import randomise_batchnorm

CLASSES = [f"c{i}" for i in range(10)]


def _onnx(d: Path, channels: int, size_range: list[int] | None = None, static: bool = False) -> Path:
    torch.manual_seed(0)
    net = randomise_batchnorm(create_model("mnist_resnet", n_classes=10, in_channels=channels))
    cfg = ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=channels, image_size=[28, 28], class_names=CLASSES,
                      mean=[0.5] * channels, std=[0.25] * channels, size_range=size_range)
    save_checkpoint(d / "model.pt", net, cfg, {"note": "random test weights"})
    return Path(export_onnx(d / "model.pt", d / "model.onnx", verify=False, dynamic=not static).onnx_path)


@pytest.fixture(scope="module")
def gray(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(_onnx(tmp_path_factory.mktemp("gray"), 1), provider="cpu")


@pytest.fixture(scope="module")
def rgb_range(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """3 channels, trained at 28 px, a recorded size range of [28, 448] (a 224 px model's [168, 448], scaled down)."""
    return Engine.load(_onnx(tmp_path_factory.mktemp("rgb"), 3, [28, 448]), provider="cpu")


def encode(a: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format=fmt) if mode else Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def img(data: bytes) -> dict[str, np.ndarray]:
    return {"image": np.array([[data]], dtype=object)}


def pixels(a: np.ndarray) -> dict[str, np.ndarray]:
    return {"pixels": a[None]}


# ---------------------------------------------------------------- item 1: every check at the size a request runs at


def test_request_is_checked_at_the_size_it_runs_at_and_fails_alone(rgb_range: Engine) -> None:
    """448 x 14,336 RGB (6.4 MP, 32:1) passes the checks at the 28 px training size but runs at 448 px (its short side,
    inside [28, 448]), where the resize would take 19.3M values. Planted: checking at the training size only lets it
    into the batch, whose preprocessing then raises for every request of it."""
    c = Classifier(rgb_range)
    good = pixels(np.full((28, 28, 3), 90, np.uint8))
    answers = c.answer([good, pixels(np.zeros((448, 14336, 3), np.uint8)), good])
    assert isinstance(answers[0], dict) and isinstance(answers[2], dict), answers
    assert isinstance(answers[1], RequestError) and "would be resized to 14336x448" in str(answers[1]), answers[1]
    assert isinstance(c.answer([pixels(np.zeros((28, 896, 3), np.uint8))])[0], dict)  # the same 32:1 at 28 px runs


def test_failing_batch_is_retried_request_by_request(tmp_path: Path) -> None:
    """A static 28 px ONNX with a recorded range of [28, 56]: a 56 px image passes every check and then fails inside
    ONNX Runtime. Only that request fails; every request failing alone shares one error. Planted: no retry fails
    the good requests with it."""
    eng = Engine.load(_onnx(tmp_path, 1, [28, 56], static=True), provider="cpu")
    c = Classifier(eng)
    good, guilty = pixels(np.full((28, 28, 1), 50, np.uint8)), pixels(np.full((56, 56, 1), 50, np.uint8))
    answers = c.answer([good, guilty, pixels(np.full((20, 20, 1), 9, np.uint8))])  # 20 px runs at 28: fine
    assert isinstance(answers[0], dict) and isinstance(answers[2], dict), answers
    assert isinstance(answers[1], Exception) and not isinstance(answers[1], RequestError)
    both = c.answer([guilty, guilty])
    assert isinstance(both[0], Exception) and both[0] is both[1]  # one fault, one id in the server's answers


def test_serve_refuses_an_engine_whose_profiles_miss_the_recorded_range(rgb_range: Engine) -> None:
    """An engine built with profiles narrower than the recorded range: ``serve`` refuses it at start, and a request
    that would run outside the profiles fails alone. TensorRT does not run here: the ONNX engine's runner is given a
    TensorRT engine's profile check (rn_deploy.runtime.manifest.Profile, what TrtRunner.covers uses)."""
    from rn_deploy.runtime.manifest import Profile
    from rn_deploy.serve.server import range_uncovered

    assert range_uncovered(rgb_range) is None
    profile = Profile((1, 3, 28, 28), (8, 3, 28, 28), (32, 3, 224, 224))
    runner = rgb_range.runner
    try:
        runner.covers = lambda shape: None if profile.covers(shape) else "outside every profile"  # type: ignore[method-assign]
        assert range_uncovered(rgb_range) == ("its profiles do not take 225x225, inside the model's size range "
                                              "28-448 px short side (measured)")
        answers = Classifier(rgb_range).answer([pixels(np.zeros((300, 300, 3), np.uint8)), pixels(np.zeros((40, 40, 3), np.uint8))])
        assert isinstance(answers[0], RequestError) and "would run at 300x300" in str(answers[0])
        assert isinstance(answers[1], dict)
    finally:
        del runner.covers


# ---------------------------------------------------------------- items 2-4: decoding


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "WEBP", "EPS"])
def test_only_png_and_jpeg_are_decoded(fmt: str) -> None:
    """EPS would run Ghostscript where installed, GIF's frames and TIFF's modes are other decoders. Planted: opening
    without ``formats=`` decodes them."""
    data = encode(np.full((28, 28, 3), 120, np.uint8), fmt)
    with pytest.raises(RequestError) as ei:
        decode_image(data, 3, 1_000_000)
    shown = {"WEBP": "WebP"}.get(fmt, fmt)
    assert str(ei.value) == f"{shown} image ({len(data)} bytes): the server decodes PNG and JPEG only; convert it to PNG"
    assert decode_image(encode(np.full((28, 28, 3), 120, np.uint8), "JPEG"), 3, 1_000_000).shape == (28, 28, 3)


def test_decoder_failures_and_conversions_are_client_errors(tmp_path: Path) -> None:
    """Whatever a request's bytes make the decoder do, the answer is 400 or 200. A model that takes no decoded images
    (2 channels) raised RnDeployError from the conversion: a 500 with a traceback per request. Planted: the
    conversion outside the try. Also a LAB TIFF (a ValueError in PIL's convert) and 400 mutated PNGs/JPEGs."""
    eng = Engine.load(_onnx(tmp_path, 2), provider="cpu")
    (a,) = Classifier(eng).answer([img(encode(np.zeros((28, 28), np.uint8)))])
    assert isinstance(a, RequestError) and str(a).startswith("models with 2 input channels take no decoded images"), a
    lab = io.BytesIO()
    Image.new("LAB", (28, 28)).save(lab, format="TIFF")
    with pytest.raises(RequestError, match="PNG and JPEG only"):
        decode_image(lab.getvalue(), 1, 1_000_000)
    rng, r = np.random.default_rng(0), random.Random(0)
    sources = [encode(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), f) for f in ("PNG", "JPEG")]
    sources.append(encode(rng.integers(0, 255, (32, 32), dtype=np.uint8), "PNG"))
    outcomes = set()
    for _ in range(400):
        d = bytearray(r.choice(sources))
        for _ in range(r.randint(1, 4)):
            d[r.randrange(8, len(d))] = r.randrange(256)
        for ch in (1, 3):
            try:
                outcomes.add(decode_image(bytes(d), ch, 1_000_000).dtype.name)
            except RequestError as e:
                outcomes.add("400")
                assert "\n" not in str(e) and "/" not in str(e).split("starting")[0], e
    assert outcomes == {"uint8", "400"}


def test_16_bit_png_is_scaled_like_its_8_bit_twin(gray: Engine) -> None:
    """A 16-bit gradient decoded as [0, 255, 255, ...] (PIL clips I;16 to L) and got a confident wrong answer.
    Planted: convert_pil without to_8bit."""
    v = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint16) * 4
    eight, sixteen = encode(v.astype(np.uint8), "PNG"), encode(v * 257, "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I")  # really a 16-bit PNG
    for ch in (1, 3):
        assert np.array_equal(decode_image(sixteen, ch, 1_000_000), decode_image(eight, ch, 1_000_000))
    a, b = Classifier(gray).answer([img(eight), img(sixteen)])
    assert isinstance(a, dict) and isinstance(b, dict)
    np.testing.assert_array_equal(a["probs"], b["probs"])


# ---------------------------------------------------------------- item 5: bytes per request, pixels per batch


def test_request_over_max_request_bytes_is_refused_before_decoding(gray: Engine) -> None:
    """A 3 MB body to a server taking 1 MB: refused by size, not read as a (corrupt) PNG. Planted: no check."""
    c = Classifier(gray, max_request_bytes=1 << 20)
    big = b"\x89PNG\r\n\x1a\n" + bytes(3 << 20)
    good = img(encode(np.zeros((28, 28), np.uint8)))
    answers = c.answer([good, img(big), pixels(np.zeros((1100, 1000, 1), np.uint8)), good])
    assert isinstance(answers[0], dict) and isinstance(answers[3], dict)
    assert str(answers[1]) == f"request of {len(big)} bytes is over the server's --max-request-bytes 1048576; send smaller images"
    assert str(answers[2]).startswith("request of 1100000 bytes is over")

    # A refused body is freed as soon as its answer is dropped: a traceback kept on the error held the request in a
    # reference cycle (ten 80 MB bodies stayed resident in the stub until the cyclic collector ran).
    gc.disable()
    try:
        req = img(big)
        ref = weakref.ref(req["image"])
        answers = c.answer([req])
        del req, answers
        assert ref() is None
    finally:
        gc.enable()


def test_batch_runs_in_parts_of_at_most_max_batch_pixels(gray: Engine) -> None:
    """Concurrent worst-case requests hold one part of the batch's pixels at a time, every request still answered.
    Planted: one engine call for the whole batch."""
    c = Classifier(gray, max_pixels=2000, max_batch_pixels=2000)
    calls: list[int] = []
    real = c.probabilities
    c.probabilities = lambda images: calls.append(sum(a.shape[0] * a.shape[1] for a in images)) or real(images)  # type: ignore[method-assign]
    reqs = [pixels(np.full((28, 28, 1), k * 20, np.uint8)) for k in range(5)]
    answers = c.answer(reqs)
    assert all(isinstance(a, dict) for a in answers) and calls == [1568, 1568, 784], calls
    alone = Classifier(gray).answer(reqs)
    for a, b in zip(answers, alone, strict=True):
        np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-6)


# ---------------------------------------------------------------- TritonPythonModel: errors per request, faults with an id


@pytest.fixture
def pb(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in ``triton_python_backend_utils`` (the real one lives in Triton's stub only): records what is logged."""
    standin = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, msg: str, code: str) -> None:
            self.msg, self.code = msg, code

    class Tensor:
        def __init__(self, name: str, data: np.ndarray) -> None:
            self.name, self.data = name, data

        def as_numpy(self) -> np.ndarray:
            return self.data

    logged: list[str] = []
    standin.TritonError = TritonError  # type: ignore[attr-defined]
    standin.Tensor = Tensor  # type: ignore[attr-defined]
    standin.InferenceResponse = lambda output_tensors=None, error=None: {"outputs": output_tensors, "error": error}  # type: ignore[attr-defined]
    standin.get_input_tensor_by_name = lambda req, name: req.get(name)  # type: ignore[attr-defined]
    standin.Logger = types.SimpleNamespace(log_error=logged.append)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", standin)
    return types.SimpleNamespace(Tensor=Tensor, logged=logged)


def _model(path: Path, **params: str) -> Any:
    from rn_deploy.serve import TritonPythonModel

    tpm = TritonPythonModel()
    config = {"parameters": {k: {"string_value": v} for k, v in
                             {"model": str(path), "max_pixels": "1000000", "max_aspect": "32", **params}.items()}}
    tpm.initialize({"model_config": json.dumps(config), "model_repository": str(path.parent)})
    return tpm


def test_server_fault_is_internal_with_an_id_that_the_log_carries(tmp_path: Path, pb: types.SimpleNamespace,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """TritonPythonModel.execute when the engine itself fails (a planted fault): one 500 with an id for the batch, the
    traceback in the log under it; a fault while reading one request fails that request only."""
    tpm = _model(_onnx(tmp_path, 1), max_request_bytes="100000")
    good = {"image": pb.Tensor("image", np.array([[encode(np.zeros((28, 28), np.uint8))]], dtype=object))}
    bad = {"image": pb.Tensor("image", np.array([[b"nope"]], dtype=object))}
    huge = {"image": pb.Tensor("image", np.array([[bytes(200_000)]], dtype=object))}
    ok = tpm.execute([good, bad, huge])
    assert ok[0]["error"] is None and [t.name for t in ok[0]["outputs"]] == ["label", "index", "score", "probs"]
    assert ok[1]["error"].code == "INVALID_ARG" and ok[1]["error"].msg.startswith("not an image")
    assert ok[2]["error"].code == "INVALID_ARG" and "--max-request-bytes 100000" in ok[2]["error"].msg

    weird = {"image": pb.Tensor("image", np.array([[b"weird"]], dtype=object))}
    real_read = tpm.classifier.read
    monkeypatch.setattr(tpm.classifier, "read", lambda req: (_ for _ in ()).throw(MemoryError("in /opt/x.py"))
                        if req["image"].reshape(-1)[0] == b"weird" else real_read(req))
    mixed = tpm.execute([good, weird, good])
    assert mixed[0]["error"] is None and mixed[2]["error"] is None and mixed[1]["error"].code == "INTERNAL"
    assert len(pb.logged) == 1 and "MemoryError" in pb.logged[0]
    pb.logged.clear()
    monkeypatch.setattr(tpm.classifier, "read", real_read)

    def broken(images: list) -> np.ndarray:
        raise RuntimeError("engine exploded in /opt/secret/path.py")

    monkeypatch.setattr(tpm.classifier, "probabilities", broken)
    answers = tpm.execute([good, good])
    msgs = {a["error"].msg for a in answers}
    assert len(msgs) == 1 and all(a["error"].code == "INTERNAL" for a in answers)
    (msg,) = msgs
    m = re.fullmatch(r"internal server error \(id ([0-9a-f]{8}); the server log has the detail\)", msg)
    assert m, msg
    assert len(pb.logged) == 1 and m.group(1) in pb.logged[0] and "Traceback" in pb.logged[0] and "/opt/secret/path.py" in pb.logged[0]
    tpm.finalize()


# ---------------------------------------------------------------- item 7: the documented perf_analyzer command


def test_documented_perf_analyzer_command_uses_count_windows_and_a_concurrency_range_it_parses() -> None:
    """The documented `--percentile 99` with 5 s time windows failed to stabilise in 4 of 6 runs at concurrency 4: p99
    of a few hundred requests per window decided stability. perf_analyzer (2.50.0, run against `serve`) refuses
    `--concurrency-range 1:16:x4`: its grammar is start[:end[:step]] of integers (a linear step). Planted: the old
    command, and `1:16:x4`, in docs/serving.md fail this."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    (cmd,) = re.findall(r"^perf_analyzer .*?(?<!\\)$", text.replace("\\\n", "\\ "), flags=re.M | re.S)
    flags = cmd.split()
    assert "--percentile" not in cmd and "--measurement-interval" not in cmd, cmd
    assert flags[flags.index("--measurement-mode") + 1] == "count_windows", cmd
    assert int(flags[flags.index("--measurement-request-count") + 1]) >= 100, cmd
    levels = flags[flags.index("--concurrency-range") + 1]
    if levels == "$c":  # one run per level from the loop around it
        (levels,) = re.findall(r"^for c in ([0-9 ]+); do$", text, flags=re.M)
        assert [int(c) for c in levels.split()] == [1, 4, 16], levels
    else:
        assert re.fullmatch(r"[0-9]+(:[0-9]+(:[0-9]+)?)?", levels), f"perf_analyzer refuses --concurrency-range {levels}"


def test_serve_refuses_a_batch_pixel_budget_below_max_pixels_as_a_bad_option(tmp_path: Path) -> None:
    """An admitted image could never run: exit 2, one line, before anything starts."""
    from click.testing import CliRunner

    from rn_deploy.cli import main

    res = CliRunner().invoke(main, ["serve", str(tmp_path / "m.onnx"), "--max-pixels", "1000", "--max-batch-pixels", "999"])
    assert res.exit_code == 2, res.output
    assert "--max-batch-pixels" in res.output and "999 is below --max-pixels 1000" in res.output


@pytest.mark.parametrize(("cores", "instances", "asked", "threads"),
                         [(2, 1, 0, 1), (16, 1, 0, 15), (16, 2, 0, 7), (16, 3, 0, 5), (1, 1, 0, 1), (2, 4, 0, 1), (16, 2, 3, 3)])
def test_ort_threads_leave_a_core_for_the_server_unless_asked(monkeypatch: pytest.MonkeyPatch, cores: int, instances: int,
                                                              asked: int, threads: int) -> None:
    """serve --ort-threads 0: the cores less one (tritonserver's HTTP/gRPC, the guard, the backend's Python), split between
    the instances, at least one each; a number asked for is used as it is. Hand-computed answers."""
    from rn_deploy.serve.backend import ort_settings

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cores)))
    cfg = {"instance_group": [{"count": instances, "kind": "KIND_CPU"}]}
    got = ort_settings(cfg, asked)
    assert got["threads"] == threads
    assert got["session_config"] == {"session.intra_op.allow_spinning": "0", "inter_op_threads": "1"}
