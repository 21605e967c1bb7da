"""Hardening: every command refuses the bad-input corpus with one clean line.

Each case runs the real CLI in a subprocess and checks: the exit code (1, or 2 for usage
errors), no traceback, exactly one `error:` line naming the file or value, no partial artifact
left behind, and nothing executed from a malicious pickle.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rn_deploy import Engine
from rn_deploy._io import sha256_file
from rn_deploy.errors import RnDeployError

from .bad_inputs.make_corpus import ENGINE_CASES, MARKER, make_corpus
from .conftest import FASHION_DIR, HAS_TRT_RTX, needs_fashion, needs_rtx, skip

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("bad"))


def run_cli(args: list[str], cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if fsize is not None:  # a full disk, simulated: writes past fsize bytes fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "rn_deploy", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          preexec_fn=limit, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess[str], pattern: str, code: int = 1) -> None:
    import re

    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:") or ln.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert re.search(pattern, errors[0]), errors[0]


RTX_ARGS = ["--backend", "tensorrt-rtx", "--target", "sm89", "--min", "1x1x28x28", "--opt", "4x1x64x64", "--max", "8x1x128x128"]

CASES = [
    # (id, argv with {name} placeholders for corpus files and {tmp}, pattern, exit code)
    ("truncated-checkpoint", ["export", "{truncated.pt}", "-o", "{tmp}/x.onnx"], r"truncated\.pt: not a readable PyTorch checkpoint", 1),
    ("random-bytes-checkpoint", ["export", "{random.pt}", "-o", "{tmp}/x.onnx"], r"random\.pt: not a readable", 1),
    ("pickle-that-runs-code", ["export", "{evil.pt}", "-o", "{tmp}/x.onnx"], r"evil\.pt: refused.*nothing was executed", 1),
    ("raw-pickle-to-validate", ["validate", "--checkpoint", "{evil.pkl}"], r"evil\.pkl: (refused|not a readable)", 1),
    ("state-dict-of-other-arch", ["export", "{other_arch.pt}", "-o", "{tmp}/x.onnx"],
     r"other_arch\.pt: weights do not match arch 'mnist_resnet'", 1),
    ("static-onnx-dynamic-profile", ["build", "{static.onnx}", "-o", "{tmp}/x.engine", *RTX_ARGS],
     r"static\.onnx: input axis 2 \(H\) is fixed at 28", 1),
    ("onnx-missing-external-data", ["build", "{missing_data.onnx}", "-o", "{tmp}/x.engine", *RTX_ARGS],
     r"missing_data\.onnx: its external data file 'missing_data\.onnx\.data' is missing", 1),
    ("onnx-missing-data-validate", ["validate", "--checkpoint", "{good.pt}", "--onnx", "{missing_data.onnx}"], r"external data file", 1),
    ("not-an-onnx", ["build", "{not_onnx.onnx}", "-o", "{tmp}/x.engine", *RTX_ARGS], r"not_onnx\.onnx: not a readable ONNX", 1),
    ("engine-newer-library", ["validate", "--checkpoint", "{good.pt}", "--engine", "{newer.engine}"],
     r"built with tensorrt-rtx 99\.0\.0, installed is .*rebuild: rn-deploy build", 1),
    ("engine-other-backend", ["validate", "--checkpoint", "{good.pt}", "--engine", "{other_backend.engine}", "--backends", "trt"],
     r"backend trt was asked for but cannot run here: .*pip install tensorrt", 1),
    ("engine-tampered", ["validate", "--checkpoint", "{good.pt}", "--engine", "{tampered.engine}"],
     r"tampered\.engine: engine bytes do not match its manifest", 1),
    ("size-outside-every-profile", ["validate", "--checkpoint", "{good.pt}", "--engine", "{rtx.engine}", "--sizes", "512"],
     r"rtx\.engine: batch 1 at 512x512 is outside every profile", 1),
    ("export-into-a-file", ["export", "{good.pt}", "-o", "{a_file}/x.onnx"], r"a_file: cannot create the output folder", 1),
    ("train-into-a-file", ["train", "--arch", "mnist_cnn", "--out", "{a_file}/run", "--device", "cpu"],
     r"a_file/run: cannot create the output folder", 1),
    ("build-into-a-file", ["build", "{good.onnx}", "-o", "{a_file}/x.engine", *RTX_ARGS], r"a_file: cannot create the output folder", 1),
    ("validate-into-a-file", ["validate", "--checkpoint", "{good.pt}", "--onnx", "{good.onnx}", "--sizes", "28", "--batch", "1",
                              "--iters", "1", "--out", "{a_file}/rep"], r"a_file/rep: cannot create the output folder", 1),
    ("triton-into-a-file", ["export-triton", "{good.onnx}", "--repo", "{a_file}", "--name", "m"], r"a_file' is a file", 2),
    ("quantize-pickle-that-runs-code", ["quantize", "{evil.pt}", "-o", "{tmp}/q.onnx"], r"evil\.pt: refused.*nothing was executed", 1),
    ("quantize-not-an-onnx", ["quantize", "{not_onnx.onnx}", "-o", "{tmp}/q.onnx"], r"not_onnx\.onnx: not a readable ONNX", 1),
    ("quantize-into-a-file", ["quantize", "{good.onnx}", "-o", "{a_file}/q.onnx"], r"a_file: cannot create the output folder", 1),
    ("quantize-fp8-with-ort", ["quantize", "{good.onnx}", "--precision", "fp8", "--quantizer", "ort", "-o", "{tmp}/q.onnx"],
     r"FP8 needs --quantizer modelopt", 1),
    ("usage-min-without-max", ["build", "{good.onnx}", "--min", "1x1x28x28"], r"go together", 2),
    ("usage-bad-size", ["export", "{good.pt}", "--static", "axb"], r"not a size", 2),
    ("onnx-as-checkpoint", ["export", "{good.onnx}", "-o", "{tmp}/x.onnx"],
     r"good\.onnx: an ONNX model \(by its first bytes\), not a PyTorch checkpoint.*`rn-deploy build`", 1),
    ("truncated-engine-inspect", ["inspect", "{tampered.engine}"], r"tampered\.engine: engine bytes do not match its manifest", 1),
]


def _needs_rtx(case: tuple[str, list[str], str, int]) -> bool:
    """The builder is reached before the write, or the case reads an engine of the corpus."""
    return case[0] == "build-into-a-file" or any("{" + e + "}" in a for a in case[1] for e in ENGINE_CASES)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.trt_rtx] if _needs_rtx(c) else []) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(corpus: dict[str, Path], tmp_path: Path, case: tuple[str, list[str], str, int]):
    case_id, argv, pattern, code = case
    if _needs_rtx(case) and not HAS_TRT_RTX:
        skip(f"{case_id}: needs TensorRT-RTX (its engines are real builds)")
    needed = [a[1:-1] for a in argv if a.startswith("{") and a.endswith("}") and a[1:-1] != "tmp"]
    needed += [a.split("}")[0][1:] for a in argv if a.startswith("{") and "}/" in a and not a.startswith("{tmp}")]
    missing = [name for name in needed if name not in corpus]
    assert not missing, f"the corpus did not make {missing}"
    args = []
    for a in argv:
        for name, path in corpus.items():
            a = a.replace("{" + name + "}", str(path))
        args.append(a.replace("{tmp}", str(tmp_path)))
    before = set(tmp_path.rglob("*"))
    proc = run_cli(args, tmp_path)
    assert_clean_error(proc, pattern, code)
    assert set(tmp_path.rglob("*")) == before, "a partial artifact was left behind"
    assert not (corpus["good.pt"].parent / MARKER).exists(), "a pickle's payload ran"


@pytest.mark.trt_rtx
@needs_rtx
def test_corpus_engines_are_real_builds(corpus: dict[str, Path]):
    """The engine cases come from a real TensorRT-RTX build, not a placeholder."""
    assert set(ENGINE_CASES) <= set(corpus)
    eng = corpus["rtx.engine"]
    manifest = json.loads(eng.with_name(eng.name + ".json").read_text())
    assert eng.stat().st_size == manifest["engine_size"] > 10_000
    assert manifest["engine_sha256"] == sha256_file(eng) and manifest["backend"] == "tensorrt-rtx"
    assert manifest["targets"] == ["sm89"]


def test_disk_full_during_export_leaves_nothing(corpus: dict[str, Path], tmp_path: Path):
    out = tmp_path / "full"
    out.mkdir()
    proc = run_cli(["export", str(corpus["good.pt"]), "-o", str(out / "m.onnx"), "--no-verify"], tmp_path, fsize=16 * 1024)
    assert_clean_error(proc, r"(cannot write|failed).*(too large|File too large|space)", 1)
    assert list(out.iterdir()) == []


@needs_fashion
def test_disk_full_during_training_checkpoint(corpus: dict[str, Path], tmp_path: Path):
    run = tmp_path / "run"
    proc = run_cli(["train", "--arch", "mnist_cnn", "--limit", "128", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                    "--out", str(run), "--quiet", "--data", str(FASHION_DIR)], tmp_path, fsize=32 * 1024)
    assert_clean_error(proc, r"model\.pt: write failed .*check free space", 1)
    assert list(run.iterdir()) == []


def test_nan_and_channel_mismatch_inputs_to_the_engine_api(corpus: dict[str, Path], tmp_path: Path):
    with Engine.load(corpus["good.onnx"]) as eng:
        with pytest.raises(RnDeployError, match="NaN or Inf"):
            eng.predict(torch.full((2, 1, 28, 28), float("nan")))
        with pytest.raises(RnDeployError, match="NaN or Inf"):
            eng.predict(torch.tensor([[[[float("inf")] * 28] * 28]]))
        with pytest.raises(RnDeployError, match=r"has 3 channel\(s\), the model takes 1.*convert\('L'\)"):
            eng.predict([np.zeros((28, 28, 3), np.uint8)])
        with pytest.raises(RnDeployError, match="expected N x 1 x H x W"):
            eng.predict(torch.zeros(2, 3, 28, 28))
        assert len(eng.predict([np.zeros((28, 28), np.uint8)])) == 1  # a plain gray image is fine for a 1-channel model


# ---- Item "wrong file, right words": every model-reading entry point x every kind of file it does not take ----

# file in the corpus -> (its kind as sniffed, words the error must use for it)
WRONG_FILES = {
    "good.pt": ("checkpoint", r"a PyTorch checkpoint"),
    "checkpoint_named.onnx": ("checkpoint", r"a PyTorch checkpoint"),
    "checkpoint_named.engine": ("checkpoint", r"a PyTorch checkpoint"),
    "good.onnx": ("onnx", r"an ONNX model"),
    "onnx_named.pt": ("onnx", r"an ONNX model"),
    "rtx.engine": ("engine", r"a TensorRT-RTX engine"),
    "engine_named.onnx": ("engine", r"a TensorRT-RTX engine"),
    "rtx.engine.json": ("manifest", r"an rn-deploy engine manifest"),
    "photo.jpg": ("image", r"a JPEG image"),
    "digit.png": ("image", r"a PNG image"),
    "bundle.zip": ("zip", r"a zip archive"),
    "empty.pt": ("empty", r"an empty file"),
    "notes.txt": ("text", r"a text file"),
    "sizes.json": ("json", r"a JSON file"),
    "weights.gz": ("gzip", r"a gzip-compressed file"),
    "model.safetensors": ("safetensors", r"a safetensors weights file"),
}
# which command the message must point to, per kind
GOES_TO = {"checkpoint": r"`rn-deploy export`", "onnx": r"`rn-deploy build`", "engine": r"`rn-deploy inspect`",
           "manifest": r"pass the engine beside it \(.*rtx\.engine\)", "image": r"`validate --images`", "zip": "unpack it",
           "empty": "copy or write it again", "gzip": "decompress", "safetensors": "rn-deploy import", "json": "--sizes-from",
           "text": "binary model files"}
# entry point -> (argv with {f} for the file, kinds it takes, words for what it wanted)
ENTRY_POINTS = {
    "export": (["export", "{f}", "-o", "{tmp}/x.onnx"], {"checkpoint"}, r"not a PyTorch checkpoint \(model\.pt\)"),
    "build": (["build", "{f}", "-o", "{tmp}/x.engine", *RTX_ARGS], {"onnx"}, r"not an ONNX model"),
    "validate --checkpoint": (["validate", "--checkpoint", "{f}"], {"checkpoint"}, r"\(--checkpoint\): .*not a PyTorch checkpoint"),
    "validate --onnx": (["validate", "--checkpoint", "{good.pt}", "--onnx", "{f}"], {"onnx"}, r"\(--onnx\): .*not an ONNX model"),
    "validate --engine": (["validate", "--checkpoint", "{good.pt}", "--engine", "{f}"], {"engine"},
                          r"\(--engine\): .*not a TensorRT engine"),
    "inspect": (["inspect", "{f}"], {"engine", "checkpoint"}, r"not a TensorRT engine or a PyTorch checkpoint"),
    "export-triton": (["export-triton", "{f}", "--repo", "{tmp}/repo", "--name", "m"], {"onnx", "engine"},
                      r"not an ONNX model or a TensorRT engine"),
}
WRONG_CASES = [(e, f) for e, (_a, takes, _w) in ENTRY_POINTS.items() for f, (kind, _d) in WRONG_FILES.items() if kind not in takes]


def test_sniffer_names_every_kind(corpus: dict[str, Path]):
    from rn_deploy.filekind import sniff

    for name, (kind, words) in WRONG_FILES.items():
        if name not in corpus:
            continue  # engine files need TensorRT-RTX to be built
        found = sniff(corpus[name])
        assert found.kind == kind and re.match(words, found.description), (name, found)
    assert sniff(corpus["not_onnx.onnx"]).kind == "unknown"  # unplaceable bytes go on to the real loader's error
    assert sniff(corpus["truncated.pt"]).kind == "checkpoint"  # the first zip entry survives truncation
    assert sniff(corpus["evil.pkl"]).kind == "pickle"
    assert sniff(corpus["good.pt"].parent / "no_such_file").kind == "missing"


@pytest.mark.parametrize("entry,name", WRONG_CASES, ids=[f"{e}<-{f}" for e, f in WRONG_CASES])
def test_wrong_file_gets_right_words(corpus: dict[str, Path], tmp_path: Path, entry: str, name: str):
    from click.testing import CliRunner

    from rn_deploy.cli import main

    if name not in corpus:
        skip(f"{name} needs TensorRT-RTX to be generated")
    argv, _takes, wanted = ENTRY_POINTS[entry]
    kind, words = WRONG_FILES[name]
    args = [a.replace("{f}", str(corpus[name])).replace("{good.pt}", str(corpus["good.pt"])).replace("{tmp}", str(tmp_path))
            for a in argv]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, (res.exit_code, res.stderr, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # our one-line error, not an exception escaping
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {corpus[name]}"), res.stderr
    assert re.search(words, lines[0]) and re.search(wanted, lines[0]), lines[0]
    assert re.search(GOES_TO[kind], lines[0]), lines[0]
    assert "weights_only" not in res.output + res.stderr
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["good.pt", "photo.jpg", "bundle.zip", "empty.pt", "rtx.engine.json", "onnx_named.pt"])
def test_engine_load_of_a_wrong_file_is_one_line(corpus: dict[str, Path], name: str):
    if name not in corpus:
        skip(f"{name} needs TensorRT-RTX to be generated")
    kind, words = WRONG_FILES[name]
    if kind == "onnx":  # right bytes under a wrong name: loads, by content
        with Engine.load(corpus[name]) as eng:
            assert eng.config.n_classes == 10
        return
    with pytest.raises(RnDeployError) as info:
        Engine.load(corpus[name])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(corpus[name])) and re.search(words, msg) and re.search(GOES_TO[kind], msg), msg
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained traceback behind it


def test_torch_load_advice_is_never_echoed(corpus: dict[str, Path]):
    from rn_deploy.checkpoint import read_checkpoint

    for name in ("random.pt", "not_onnx.onnx"):  # bytes the sniffer cannot place reach torch.load itself
        with pytest.raises(RnDeployError) as info:
            read_checkpoint(corpus[name])
        assert "weights_only" not in str(info.value) and "not a readable PyTorch checkpoint" in str(info.value)
