"""`rn-deploy --help` and `rn-deploy <cmd> --help` start without torch (the CLI loads heavy code lazily)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys\nfrom rn_deploy.cli import main\n"
         "try:\n    main(sys.argv[1:], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["build", "--help"], ["validate", "--help"],
                                  ["eval", "--help"], ["quantize", "--help"], ["serve", "--help"]])
def test_help_imports_no_torch(args: list[str]):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "Usage: " in out
    heavy = out.strip().splitlines()[-1]
    assert heavy == "HEAVY=", f"rn-deploy {' '.join(args)} imported {heavy[6:]}"


def test_top_level_help_lists_the_lazy_training_commands():
    out = subprocess.run([sys.executable, "-c", PROBE, "--help"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    for name in ("train", "lr-find", "show-batch", "export", "build"):
        assert f"  {name} " in out, name
    assert "HEAVY=\n" in out + "\n"


# rn_deploy.train is this repository's train/ folder (an editable install may map it elsewhere): load it from here.
TRAIN_FROM_REPO = ("import importlib.util, sys\nimport rn_deploy\n"
                   "spec = importlib.util.spec_from_file_location('rn_deploy.train', 'train/__init__.py', "
                   "submodule_search_locations=['train'])\n"
                   "m = importlib.util.module_from_spec(spec); sys.modules['rn_deploy.train'] = m; spec.loader.exec_module(m)\n")


@pytest.mark.parametrize("cmd", ["train", "lr-find", "show-batch"])
def test_training_command_help_imports_no_torch(cmd: str):
    out = subprocess.run([sys.executable, "-c", TRAIN_FROM_REPO + PROBE, cmd, "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "--dataset" in out and "fashion-mnist" in out
    heavy = out.strip().splitlines()[-1]
    assert heavy == "HEAVY=", f"rn-deploy {cmd} --help imported {heavy[6:]}"
