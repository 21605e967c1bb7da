"""`rn-deploy doctor`: the environment block and "will it load here" for real engines and ONNX files."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rn_deploy.builder import Profile, build_engine
from rn_deploy.cli import main
from rn_deploy.doctor import environment, jetson_info
from rn_deploy.export import export_onnx

from .conftest import HAS_CUDA, HAS_TRT_RTX, make_checkpoint, needs_rtx


def strict_json(text: str) -> Any:
    def refuse(c: str) -> Any:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("doctor")
    ck = make_checkpoint(d / "model.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    return {"dir": d, "onnx": Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)}


def other_target() -> str:
    """A compute capability that is not this machine's GPU (any, when there is none)."""
    if HAS_CUDA:
        import torch

        return "sm120" if torch.cuda.get_device_capability() == (8, 9) else "sm89"
    return "sm89"


def test_environment_block_is_strict_json_and_describes_this_machine():
    env = environment()
    assert strict_json(json.dumps(env, allow_nan=False)) == env
    assert env["os"]["machine"] == platform.machine() and env["python"]["version"] == platform.python_version()
    assert env["torch"]["version"].startswith("2.") and "CPUExecutionProvider" in env["onnxruntime"]["providers"]
    assert bool(env["gpus"]) == HAS_CUDA
    assert (env["tensorrt_rtx"]["version"] is not None) == HAS_TRT_RTX
    if env["tensorrt"]["version"] is None:
        assert env["tensorrt"]["reason"]  # says why, never a bare null
    if not HAS_CUDA:
        assert env["driver"]["cuda"] is None or env["driver"]["cuda"][0].isdigit()


def test_onnx_loads_here_exit_0(artifacts: dict[str, Path]):
    res = CliRunner().invoke(main, ["doctor", str(artifacts["onnx"]), "--json"])
    assert res.exit_code == 0, res.output
    rep = strict_json(res.stdout)
    (a,) = rep["artifacts"]
    assert rep["ok"] and a["kind"] == "onnx" and a["loadable"] and a["fix"] is None
    assert "fp32 ONNX loads with ONNX Runtime" in a["detail"] and "CPUExecutionProvider" in a["detail"]


@needs_rtx
@pytest.mark.trt_rtx
def test_engine_for_another_gpu_cannot_load_here_exit_1(artifacts: dict[str, Path]):
    target = other_target()
    eng = artifacts["dir"] / f"model.{target}.engine"
    build_engine(artifacts["onnx"], eng, backend="tensorrt-rtx", precision="fp32", targets=[target],
                 profiles=[Profile((1, 1, 28, 28), (2, 1, 28, 28), (4, 1, 32, 32))])
    res = CliRunner().invoke(main, ["doctor", str(artifacts["onnx"]), str(eng), "--json"])
    assert res.exit_code == 1, res.output
    rep = strict_json(res.stdout)
    onnx_check, eng_check = rep["artifacts"]
    assert not rep["ok"] and onnx_check["loadable"] and eng_check["kind"] == "engine" and not eng_check["loadable"]
    if HAS_CUDA:
        assert f"engine targets {target}, this GPU is sm" in eng_check["detail"]
        assert eng_check["fix"].startswith(f"rn-deploy build {artifacts['onnx']} -o {eng} --backend tensorrt-rtx --fp32 --min ")
        assert re.search(r" --target sm\d+$", eng_check["fix"]), eng_check["fix"]
    else:
        assert eng_check["detail"].startswith(f"no CUDA GPU visible here; this tensorrt-rtx {rep['environment']['tensorrt_rtx']['version']}")
        assert f"runs on a GPU ({target})" in eng_check["detail"]
        assert eng_check["fix"].startswith(f"run it on a machine with a {target} GPU") and "--target smXX" in eng_check["fix"]
    # People get the same verdict in one screen.
    res = CliRunner().invoke(main, ["doctor", str(eng)])
    assert res.exit_code == 1 and "CANNOT LOAD" in res.output and "fix: " in res.output and "tensorrt-rtx:" in res.output

    # A changed engine is refused on its digest, before any GPU question.
    bad = artifacts["dir"] / "changed.engine"
    bad.write_bytes(eng.read_bytes()[:-10])
    (artifacts["dir"] / "changed.engine.json").write_text((artifacts["dir"] / f"{eng.name}.json").read_text())
    rep = strict_json(CliRunner().invoke(main, ["doctor", str(bad), "--json"]).stdout)
    assert "engine bytes do not match its manifest" in rep["artifacts"][0]["detail"]


def test_unloadable_files_give_reason_and_fix(artifacts: dict[str, Path]):
    d = artifacts["dir"]
    (d / "junk.onnx").write_bytes(b"\xff\xfe\x00\x13" * 40)  # binary, not protobuf: the ONNX reader says so
    (d / "lonely.engine").write_bytes(b"\x00" * 64)
    (d / "notes.txt").write_text("hello")
    res = CliRunner().invoke(main, ["doctor", str(d / "junk.onnx"), str(d / "lonely.engine"), str(d / "notes.txt"), "--json"])
    assert res.exit_code == 1
    junk, lonely, notes = strict_json(res.stdout)["artifacts"]
    assert "not a readable ONNX model" in junk["detail"] and junk["fix"].startswith("rn-deploy export")
    assert "no manifest beside the engine" in lonely["detail"] and lonely["fix"].startswith("rn-deploy build")
    assert notes["kind"] == "unknown" and "neither an ONNX model" in notes["detail"]


def test_jetson_block_from_a_prepared_tree(tmp_path: Path):
    """No Jetson here: a file tree laid out like a Jetson AGX Orin's and a stand-in for `nvpmodel -q` (fakes, named so)."""
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    gpu = tmp_path / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("612000000\n")
    (gpu / "max_freq").write_text("1300500000\n")
    cpu = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_max_freq").write_text("2201600\n")

    def fake_nvpmodel(cmd: Sequence[str]) -> str | None:
        return "NV Power Mode: MAXN\n0\n" if list(cmd) == ["nvpmodel", "-q"] else None

    info = jetson_info(tmp_path, run=fake_nvpmodel)
    assert info == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3", "power_mode": "MAXN", "power_mode_id": 0,
                    "gpu_freq_mhz": 612, "gpu_max_freq_mhz": 1300, "cpu_max_freq_mhz": 2201}
    assert jetson_info(tmp_path / "nothing", run=fake_nvpmodel) is None
    if not Path("/etc/nv_tegra_release").exists():
        assert environment()["jetson"] is None
