from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from rn_deploy.cli import main


def test_help_lists_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in ("train", "export", "build", "validate", "inspect", "models"):
        assert cmd in out


def test_models_json_counts():
    res = CliRunner().invoke(main, ["models", "--json", "--n-classes", "10"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["resnet18"]["params"] > 11_000_000 and rows["mnist_cnn"]["in_channels"] == 1



def test_console_script_error_is_one_line(tmp_path: Path):
    """Through the installed entry point: our errors print one line, no traceback, exit 1."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "rn_deploy", "export", str(bad), "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.pt" in lines[0]
