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


# Modules `python -m rn_deploy models` finishes importing, in this order, before the command runs: a SIGINT sent as
# one of them is reported lands while Python imports the package and the CLI (or just after, in the command).
START_MARKERS = ["rn_deploy.version", "rn_deploy", "click", "rn_deploy.cli.group", "rn_deploy.cli.params",
                 "rn_deploy.cli.artifacts", "rn_deploy.cli.verdicts", "rn_deploy.cli"]


@pytest.mark.parametrize("marker", START_MARKERS)
def test_ctrl_c_while_the_cli_starts_is_130_without_a_traceback(marker: str, tmp_path: Path):
    """Issue 32.12: Ctrl-C in the first 0.05 s exited -2 with a KeyboardInterrupt traceback from an import.

    ``-X importtime`` reports each import as it completes, so the signal is sent at a known point of the start-up
    rather than after a guessed delay (Python's own start-up, before rn_deploy runs a line, cannot be handled by it).
    Planted (tried): without the start-up handler in rn_deploy/__init__.py every marker up to rn_deploy.cli fails.
    """
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "rn_deploy", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job ignores it
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.split("|")[-1].strip() == marker:
                proc.send_signal(signal.SIGINT)
                break
        _out, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = [ln for ln in "".join(seen).splitlines() + rest.splitlines() if not ln.startswith("import time:")]
    assert proc.returncode == 130, "\n".join(err)[-2000:]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, "\n".join(err)[-2000:]
    assert [ln for ln in err if ln.strip()] == [next(ln for ln in err if ln.startswith("interrupted: "))]
