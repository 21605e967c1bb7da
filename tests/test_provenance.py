"""Artifacts tied to their source (issue 24 items 1-5, 7, 8): digests, datasets, file modes, what loads a file.

Each test names the bug it catches on the code before the fix (planted back and seen failing).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from rn_deploy import names
from rn_deploy.builder import ensure_fp16_onnx, fp16_copy_path, fp16_source_digest
from rn_deploy.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from rn_deploy.cli import main
from rn_deploy.errors import BuildError
from rn_deploy.export import export_onnx
from rn_deploy.onnxfile import DATASET_KEY, SOURCE_KEY, onnx_sha256

from .conftest import FASHION_DIR, make_model, needs_fashion, needs_rtx, skip


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _sha(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    """The documented digest, written again here: sorted names; name, dtype, shape, then the raw bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].contiguous()
        h.update(f"{k}\0{str(t.dtype).split('.')[-1]}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _mnist_ckpt(path: Path, seed: int, **train: object) -> Path:
    model, cfg = make_model("mnist_cnn", 10, 1, 28, seed)
    return save_checkpoint(path, model, cfg, dict(train))


def _one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Item 8: MODEL.onnx.data gets the same mode as MODEL.onnx
# ------------------------------------------------------------------------------------------------


UMASK = 0o027  # neither 0600 (what onnx wrote) nor 0644 (the usual default): only "respect the umask" passes


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_cnn exported with its weights in MODEL.onnx.data, under umask 027."""
    out = tmp_path_factory.mktemp("ext") / "model.onnx"
    old = os.umask(UMASK)
    try:
        export_onnx(_mnist_ckpt(out.with_name("model.pt"), 0), out, external_data=True, verify=False)
    finally:
        os.umask(old)
    return out


def _copy_onnx(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    data = Path(f"{src}.data")
    if data.exists():
        Path(f"{dst}.data").write_bytes(data.read_bytes())
        if dst.name != src.name:
            raise ValueError("external data names its file: keep the name")
    return dst


def test_external_data_file_gets_the_mode_of_a_normal_file(external: Path):
    """Before the fix the ``.onnx.data`` came out 0600 while the ``.onnx`` was 0644."""
    want = 0o666 & ~UMASK
    assert (external.stat().st_mode & 0o777, Path(f"{external}.data").stat().st_mode & 0o777) == (want, want)


# ------------------------------------------------------------------------------------------------
# Item 5: digests cover the weights wherever they are
# ------------------------------------------------------------------------------------------------


def _negate_external_weights(onnx_path: Path) -> None:
    """Negate every float32 weight stored in MODEL.onnx.data, in place (same size, same offsets)."""
    data = Path(f"{onnx_path}.data")
    w = np.frombuffer(data.read_bytes(), np.float32)
    data.write_bytes((-w).astype(np.float32).tobytes())


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([names.OUTPUT], {names.INPUT: x})[0]


def test_fp16_cache_and_onnx_digest_cover_the_external_data(external: Path, two_runs: dict[str, Path], tmp_path: Path):
    """Before the fix the digest read only the ``.onnx``: negating the weights in ``.onnx.data`` reused the stale FP16 copy."""
    src = _copy_onnx(external, tmp_path / "model.onnx")
    before = onnx_sha256(src)
    half1 = ensure_fp16_onnx(src, lambda _s: None)
    assert fp16_source_digest(half1) == before
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    _negate_external_weights(src)
    assert onnx_sha256(src) != before  # the .onnx bytes did not change; its weights did
    half2 = ensure_fp16_onnx(src, lambda _s: None)
    assert fp16_source_digest(half2) == onnx_sha256(src)
    # the FP16 copy follows the negated weights: it agrees with the FP32 model as it now is
    ref, got = _logits(src, x), _logits(half2, x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
    # inline weights: the digest is the file's plain sha256 (what the manifest always said)
    assert onnx_sha256(two_runs["a32"]) == _sha(two_runs["a32"])


# ------------------------------------------------------------------------------------------------
# Item 4: build never overwrites the user's MODEL.fp16.onnx
# ------------------------------------------------------------------------------------------------


def test_build_fp16_conversion_never_overwrites_the_users_fp16_onnx(two_runs: dict[str, Path], tmp_path: Path):
    """Before the fix build wrote its conversion to ``model.fp16.onnx``, replacing the user's ``export --fp16`` file."""
    src = _copy_onnx(two_runs["a32"], tmp_path / "model.onnx")
    user = tmp_path / "model.fp16.onnx"
    p = onnx.load(str(two_runs["a16"]))
    p.metadata_props.add(key="note", value="made by the user")  # e.g. AutoCast's output, tuned by hand
    onnx.save(p, str(user))
    mine = _sha(user)
    got = ensure_fp16_onnx(src, lambda _s: None)
    assert got == fp16_copy_path(src) == tmp_path / "model.build-fp16.onnx"
    assert _sha(user) == mine
    assert ensure_fp16_onnx(src, lambda _s: None) == got  # reused by digest
    # a file build did not make, under build's own name, is refused rather than replaced
    got.write_bytes(user.read_bytes())
    with pytest.raises(BuildError, match="not made by build"):
        ensure_fp16_onnx(src, lambda _s: None)
    assert _sha(got) == mine


@needs_rtx
def test_build_keeps_the_users_fp16_onnx_and_the_manifest_digests_cover_external_data(external: Path, two_runs: dict[str, Path],
                                                                                     tmp_path: Path):
    """Items 4, 5 and 1 through ``build``: the user's file stays; ``onnx_sha256`` covers ``.onnx.data``;
    the manifest copies the ONNX's source digest."""
    from rn_deploy.builder import Profile, build_engine

    src = _copy_onnx(external, tmp_path / "model.onnx")
    user = _copy_onnx(two_runs["a16"], tmp_path / "model.fp16.onnx")
    mine = _sha(user)
    m = build_engine(src, tmp_path / "e.engine", backend="tensorrt-rtx", precision="fp16", targets=["sm89"],
                     profiles=[Profile((1, 1, 28, 28), (2, 1, 28, 28), (4, 1, 28, 28))])
    assert _sha(user) == mine and Path(m.built_from).name == "model.build-fp16.onnx"
    assert m.onnx_sha256 == onnx_sha256(src) != _sha(src)
    assert m.source_sha256 == _weights_digest(read_checkpoint(external.with_name("model.pt"))["state_dict"]) == _props(src)[SOURCE_KEY]


# ------------------------------------------------------------------------------------------------
# Item 7: what loads a file is computed from the file itself
# ------------------------------------------------------------------------------------------------


def _says_its_own_version(path: Path) -> None:
    m = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    note = next(p.value for p in m.metadata_props if p.key == "rn_deploy.runtimes")
    assert note.startswith(f"ONNX IR {m.ir_version}, opset {opset}:"), (path.name, note)


def test_every_onnx_file_states_the_ir_and_opset_it_really_has(two_runs: dict[str, Path], tmp_path: Path):
    """A quantized ONNX (IR 10 from ModelOpt) used to copy "IR 9 ... ORT >= 1.17" from its FP32 source."""
    from rn_deploy.quantize import Recipe, finish_model, quantize_file

    src = _copy_onnx(two_runs["a32"], tmp_path / "model.onnx")
    half = ensure_fp16_onnx(src, lambda _s: None)
    q = tmp_path / "model.int8.onnx"
    calib = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    quantize_file(src, q, calib, method="minmax", precision="int8", exclude_nodes=[], quantizer="ort")
    qm = onnx.load(str(q))
    qm.ir_version = 10  # what ModelOpt writes (the case the issue found: IR 10 labelled with its source's IR 9)
    onnx.save(qm, str(q))
    src_model = onnx.load(str(src), load_external_data=False)
    assert src_model.ir_version == 9
    finish_model(q, src_model, "int8", Recipe("minmax", 16, (), "ort"), [], "fashion-mnist")
    for f in (src, two_runs["a16"], half, q):
        _says_its_own_version(f)
    assert _props(q)[SOURCE_KEY] == _props(src)[SOURCE_KEY]  # provenance carries over


# ------------------------------------------------------------------------------------------------
# Item 1: artifacts carry their checkpoint's digest; eval and validate refuse another's
# ------------------------------------------------------------------------------------------------


def test_exported_onnx_records_the_checkpoints_weights_digest_and_dataset(two_runs: dict[str, Path], tmp_path: Path):
    from rn_deploy.checkpoint import weights_sha256
    from rn_deploy.export import provenance

    props = _props(two_runs["a32"])
    assert props[SOURCE_KEY] == _weights_digest(read_checkpoint(two_runs["a"])["state_dict"])
    assert props[DATASET_KEY] == "fashion-mnist"
    # re-saving the same weights with other notes keeps the digest; other weights change it
    ck = load_checkpoint(two_runs["a"])
    resaved = load_checkpoint(save_checkpoint(tmp_path / "copy.pt", ck.model, ck.config, {"note": "resaved"}))
    assert weights_sha256(resaved.model) == props[SOURCE_KEY] != _props(two_runs["b16"])[SOURCE_KEY]
    # one dataset name: a run recorded under the old name `mnist-png` gives its artifacts `mnist`
    assert provenance(ck.model, {"dataset": "mnist-png"})[DATASET_KEY] == "mnist"
    assert provenance(ck.model, {"eval": {"dataset": "imagenette"}})[DATASET_KEY] == "imagefolder"
    assert DATASET_KEY not in provenance(ck.model, {})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints A and B (same architecture, other weights), A's FP32/FP16 ONNX and B's FP16 ONNX, plus A's ONNX
    without a digest (as a foreign or older file has)."""
    d = tmp_path_factory.mktemp("two")
    a = _mnist_ckpt(d / "a" / "model.pt", 0, dataset="fashion-mnist")
    b = _mnist_ckpt(d / "b" / "model.pt", 1, dataset="fashion-mnist")
    b16 = Path(export_onnx(b, d / "b" / "model.fp16.onnx", fp16=True, verify=False).onnx_path)
    a32 = Path(export_onnx(a, d / "a" / "model.onnx", verify=False).onnx_path)
    a16 = Path(export_onnx(a, d / "a" / "model.fp16.onnx", fp16=True, verify=False).onnx_path)
    m = onnx.load(str(a32))
    keep = [p for p in m.metadata_props if p.key != SOURCE_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    onnx.save(m, str(d / "a" / "foreign.onnx"))
    return {"a": a, "b": b, "b16": b16, "a32": a32, "a16": a16, "foreign": d / "a" / "foreign.onnx", "dir": d}


@needs_fashion
def test_eval_refuses_an_artifact_of_another_checkpoint_in_one_line(two_runs: dict[str, Path], tmp_path: Path):
    """Before the fix ``eval --checkpoint A --onnx B/model.fp16.onnx`` judged B's file against A and could pass."""
    base = ["eval", "--checkpoint", str(two_runs["a"]), "--dataset", "fashion-mnist", "--data", str(FASHION_DIR), "--limit", "300",
            "--out", str(tmp_path)]
    msg = _one_line_error([*base, "--onnx", str(two_runs["b16"])])
    assert str(two_runs["b16"]) in msg and "another checkpoint" in msg and "--allow-other-source" in msg
    assert not (tmp_path / "eval.json").exists()  # refused before any work


@needs_fashion
def test_every_eval_row_gates_on_agreement_with_the_reference(two_runs: dict[str, Path], tmp_path: Path):
    """An FP16 row was judged on accuracy drop alone: B's FP16 ONNX against A passed whenever B scored as well.

    With --allow-other-source and a drop allowance nothing can fail, only the agreement gate (per precision,
    changeable with --min-agreement, stated in the report) fails it."""
    base = ["eval", "--checkpoint", str(two_runs["a"]), "--dataset", "fashion-mnist", "--data", str(FASHION_DIR), "--limit", "300",
            "--out", str(tmp_path), "--max-drop", "100", "--allow-other-source"]
    r = CliRunner().invoke(main, [*base, "--onnx", str(two_runs["b16"])])
    rep = json.loads((tmp_path / "eval.json").read_text())
    row = rep["artifacts"][1]
    assert r.exit_code == 1, r.output
    assert row["precision"] == "fp16" and row["source"] == "other" and row["agreement"] < 0.99
    assert row["limits"]["min_agreement"] == 0.99 and any("agrees with the reference" in f for f in row["failures"])
    assert "fp16 99%" in (tmp_path / "eval.md").read_text() and "another checkpoint (--allow-other-source)" in (tmp_path / "eval.md").read_text()
    # the user can change the rule, and the report says so
    r = CliRunner().invoke(main, [*base, "--onnx", str(two_runs["b16"]), "--min-agreement", "fp16=0"])
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert r.exit_code == 0, r.output
    assert rep["min_agreement"]["fp16"] == 0 and rep["artifacts"][1]["passed"]
    bad = CliRunner().invoke(main, [*base, "--onnx", str(two_runs["b16"]), "--min-agreement", "fp16=99"])
    assert bad.exit_code == 2 and "--min-agreement 'fp16=99': use" in bad.output


@needs_fashion
def test_eval_of_this_checkpoints_artifacts_and_of_unknown_sources(two_runs: dict[str, Path], tmp_path: Path):
    """An ONNX with no recorded digest (foreign, or older) is judged and reported as of unknown source, not refused."""
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(two_runs["a"]), "--dataset", "fashion-mnist", "--data", str(FASHION_DIR),
                                  "--limit", "300", "--out", str(tmp_path), "--onnx", str(two_runs["a32"]),
                                  "--onnx", str(two_runs["foreign"])])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert [a["source"] for a in rep["artifacts"]] == ["same", "same", "unknown"]
    assert rep["source_sha256"] == _weights_digest(read_checkpoint(two_runs["a"])["state_dict"])
    assert "unknown source (no digest recorded): foreign.onnx" in (tmp_path / "eval.md").read_text()


def test_validate_refuses_an_artifact_of_another_checkpoint_before_any_work(two_runs: dict[str, Path], tmp_path: Path):
    args = ["validate", "--checkpoint", str(two_runs["a"]), "--onnx", str(two_runs["b16"]), "--backends", "ort-cpu",
            "--sizes", "28", "--batch", "1", "--warmup", "0", "--iters", "1", "--out", str(tmp_path)]
    msg = _one_line_error(args)
    assert str(two_runs["b16"]) in msg and "another checkpoint" in msg
    assert not (tmp_path / "report.json").exists()
    r = CliRunner().invoke(main, [*args, "--allow-other-source", "--json"])
    assert r.exit_code == 1  # compared, and out of tolerance: B is not A
    rep = json.loads(r.stdout)
    assert rep["artifacts"][1]["source"] == "other" and rep["cells"][0]["compared"]
    ok = CliRunner().invoke(main, [*args[:4], str(two_runs["foreign"]), *args[5:], "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["artifacts"][1]["source"] == "unknown"


# ------------------------------------------------------------------------------------------------
# Item 2: a reference that does not reproduce training fails the verdict
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_cnn trained one epoch on 600 Fashion-MNIST images (CPU, ~50%): a checkpoint that records its evaluation."""
    from rn_deploy.train import TrainConfig, fit

    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        skip(f"Fashion-MNIST not found in {FASHION_DIR}")
    out = tmp_path_factory.mktemp("small")
    return Path(fit(TrainConfig(arch="mnist_cnn", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=1, batch_size=32,
                                lr=1e-2, size=28, device="cpu", out=str(out), limit=600), progress=False).checkpoint)


@needs_fashion
def test_eval_fails_when_the_reference_does_not_reproduce_training(small_run: Path, tmp_path: Path):
    """Before the fix eval logged "NOT reproduced" and still passed (exit 0): a preprocessing regression that moves the
    reference and the artifacts together could never fail. Planted here as a changed normalisation mean."""
    args = ["eval", "--checkpoint", "CKPT", "--limit", "600", "--out", str(tmp_path), "--json"]
    r = CliRunner().invoke(main, [a.replace("CKPT", str(small_run)) for a in args])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reproduces_training"] is True
    ck = load_checkpoint(small_run)
    ck.config.mean = [m + 0.5 for m in ck.config.mean]  # same weights, same images: only the preprocessing moved
    moved = save_checkpoint(tmp_path / "moved.pt", ck.model, ck.config, ck.train)
    r = CliRunner().invoke(main, [a.replace("CKPT", str(moved)) for a in args])
    rep = json.loads(r.stdout)
    assert abs(rep["artifacts"][0]["correct"] - rep["recorded"]["correct"]) > 1  # the plant took effect (beyond any allowance)
    assert r.exit_code == 1 and rep["reproduces_training"] is False and not rep["passed"]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--allow-unreproduced" in errors[0] and "same images" in errors[0]
    assert "does NOT reproduce it (" in (tmp_path / "eval.md").read_text()
    waived = CliRunner().invoke(main, [a.replace("CKPT", str(moved)) for a in args] + ["--allow-unreproduced"])
    assert waived.exit_code == 0 and json.loads(waived.stdout)["allow_unreproduced"] is True


def test_reproduction_rule_exact_on_the_training_device_type_else_a_few_images():
    from rn_deploy.evaluate.recorded import reproduces_training

    rec = {"correct": 700, "device": "cpu", "precision": "fp32"}
    assert reproduces_training(rec, 700, "cpu", 1000) == (True, "exact, same device type")
    assert reproduces_training(rec, 699, "cpu", 1000)[0] is False
    assert reproduces_training({**rec, "device": "cuda:0"}, 699, "cpu", 1000)[0] is True  # 0.1% of 1000: one image may flip
    assert reproduces_training({**rec, "device": "cuda:0"}, 698, "cpu", 1000)[0] is False
    assert reproduces_training({**rec, "precision": "bf16-autocast"}, 1, "cpu", 1000)[0] is None


# ------------------------------------------------------------------------------------------------
# Item 3: the recorded dataset by default, another one refused by name; one name everywhere
# ------------------------------------------------------------------------------------------------


@needs_fashion
def test_eval_and_quantize_refuse_a_dataset_other_than_the_recorded_one(small_run: Path, two_runs: dict[str, Path], tmp_path: Path):
    """Before the fix quantize used Fashion-MNIST for any checkpoint (it never read the recorded dataset), and a model
    with class names "0".."9" fitted any 10-class dataset."""
    msg = _one_line_error(["eval", "--checkpoint", str(small_run), "--dataset", "mnist", "--data", str(tmp_path),
                           "--out", str(tmp_path)])
    assert "trained on fashion-mnist, not mnist" in msg and str(small_run) in msg
    msg = _one_line_error(["quantize", str(two_runs["a32"]), "--calib", "mnist", "--data", str(tmp_path), "--quantizer", "ort",
                           "-o", str(tmp_path / "q.onnx")])
    assert "trained on fashion-mnist, not mnist" in msg and "omit --calib" in msg
    # default: the dataset the ONNX recorded (here mnist, whose folder is not given: the error names it)
    m = onnx.load(str(two_runs["a32"]))
    next(p for p in m.metadata_props if p.key == DATASET_KEY).value = "mnist"
    onnx.save(m, str(tmp_path / "model.onnx"))
    msg = _one_line_error(["quantize", str(tmp_path / "model.onnx"), "--quantizer", "ort", "-o", str(tmp_path / "q.onnx")])
    assert "'mnist' needs --data" in msg
    assert not (tmp_path / "q.onnx").exists()


def test_one_dataset_name_everywhere_and_the_old_ones_accepted():
    from rn_deploy.train import TrainConfig

    from rn_deploy.cli import DATASET_NAMES
    from rn_deploy.datasets import ALIASES, DATASETS, canonical_dataset
    from rn_deploy.quantize import calib_dataset

    assert DATASETS == ("fashion-mnist", "mnist", "imagefolder") and DATASET_NAMES == [*DATASETS, *ALIASES]
    assert TrainConfig(dataset="mnist-png").dataset == "mnist" and TrainConfig(dataset="imagenette").dataset == "imagefolder"
    assert canonical_dataset("mnist-png") == "mnist"
    assert calib_dataset(Path("m.pt"), None, "mnist-png") == "mnist" == calib_dataset(Path("m.pt"), "mnist", "mnist-png")
    for cmd in ("train", "eval", "quantize"):
        r = CliRunner().invoke(main, [cmd, "--help"])
        assert "mnist-png" in r.output and "[fashion-mnist|mnist|imagefolder|mnist-png|imagenette]" in r.output.replace("\n", "")
