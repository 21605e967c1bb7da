"""The README's two commands are a contract (issue 24 item 15): one install path, the same test command on CI.

README command 1 runs ``tools/setup.sh``, which installs every extra the suite exercises; ``.ci/run``
runs the same script and ends with README command 2 verbatim. (That these commands really give 0
failures on a fresh clone is checked by running them; this file keeps the texts from drifting apart.)
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = {"trt", "gpu"}  # full TensorRT and onnxruntime-gpu cannot install (or must not, on CI) on a CPU machine


def _blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)]


def _setup() -> str:
    return (ROOT / "tools" / "setup.sh").read_text()


def test_setup_installs_every_extra_but_the_gpu_only_ones():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([a-z0-9-]+) = \[", section, re.M))  # (tomllib is 3.11+; the suite also runs on 3.10)
    assert "test" in extras  # other work appends the suite's own needs to it
    installs = [m.group(1) for m in re.finditer(r"-e '\.\[([a-z0-9,-]+)\]'", _setup())]
    assert len(installs) == 1, installs
    assert set(installs[0].split(",")) == extras - GPU_ONLY


def test_setup_keeps_the_no_deps_recipes_and_the_onnxruntime_guard():
    text = _setup()
    assert re.search(r'--no-deps "nvidia-modelopt==[0-9.]+"', text) and re.search(r"--no-deps tensorrt-stubs", text)
    assert text.index("nvidia-modelopt") < text.index("-e '.[")  # ModelOpt first, so the extras cannot pull its [onnx] deps
    assert '"onnxruntime-gpu" not in' in text and "dataset-fashion-mnist" in text
    assert (ROOT / "tools" / "setup.sh").stat().st_mode & 0o111


def test_readme_commands_and_ci_are_one_path():
    first, second = _blocks()[:2]
    assert "tools/setup.sh" in first and first.endswith("rn-deploy demo")
    assert second == "RN_DEPLOY_STRICT=1 python3 -m pytest -q"
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert "tools/setup.sh" in ci and ci[-1] == second
    assert not any("pip install" in ln for ln in ci), "CI installs only through tools/setup.sh"
    for check in ("ruff check .", "tools/trt_stubs.sh", "mypy", ".ci/py310"):
        assert check in ci, check
