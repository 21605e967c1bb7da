from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from rn_deploy.cli import main

from .conftest import HAS_TRT_RTX, needs_fashion

COMMANDS = {"build", "classify", "demo", "doctor", "eval", "export", "export-triton", "import", "inspect", "loadtest", "lr-find", "models", "optimize", "quantize",
            "serve", "show-batch", "summary", "train", "validate"}


def test_help_lists_commands():
    """The Commands section lists exactly these commands, and each answers its own --help.

    (Asserting names against the whole help text could not fail: its description already says
    "Train, export, build, validate and inspect".)
    """
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    section = res.output.split("\nCommands:\n", 1)[1]
    listed = {ln.split()[0] for ln in section.splitlines() if ln.startswith("  ") and ln.strip()}
    assert listed == COMMANDS
    for cmd in sorted(COMMANDS):
        sub = CliRunner().invoke(main, [cmd, "--help"])
        assert sub.exit_code == 0, (cmd, sub.output)
        assert re.search(rf"^Usage: \S+ {re.escape(cmd)} ", sub.output, re.M), (cmd, sub.output[:200])


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


@needs_fashion
def test_readme_demo_runs_the_whole_pipeline(tmp_path: Path):
    """The README's main job (`rn-deploy demo`), smaller: train, export, build, validate, report."""
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--limit", "1024", "--epochs", "2", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # the whole stdout is the one document
    assert summary["passed"] and summary["accuracy"] > 0.2
    # every backend that runs judges every artifact it can: both ONNX files, in their own reports
    assert re.search(r"judged: .*model\.onnx \(ort-cpu-fp32.*model\.fp16\.onnx \(ort-cpu-fp16", summary["verdict"]), summary["verdict"]
    assert json.loads((out / "fp16" / "report.json").read_text())["passed"] is True
    for f in ("model.pt", "model.onnx", "model.fp16.onnx", "report.json", "report.md", "latency.png", "parity.png"):
        assert (out / f).stat().st_size > 0, f
    if HAS_TRT_RTX:
        assert (out / "model.tensorrt-rtx.engine").stat().st_size > 100_000
        assert json.loads((out / "model.tensorrt-rtx.engine.json").read_text())["precision"] == "fp16"
    assert len(list((out / "samples").glob("*.png"))) == 16
    # the accuracy table: reference, ONNX FP32, ONNX FP16 on the test images training evaluated on
    table = summary["accuracy_table"].splitlines()
    assert table[0].startswith("artifact") and table[1].startswith("reference")
    assert table[2].startswith("model.onnx") and table[3].startswith("model.fp16.onnx")
    ev = json.loads((out / "eval.json").read_text())
    assert ev["count"] == 1024 and ev["reproduces_training"] is True and (out / "confusion.png").exists()
    assert f"{100 * summary['accuracy']:.2f}" in table[1]


def test_readme_test_command_is_what_ci_runs():
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert blocks[1].strip() == "RN_DEPLOY_STRICT=1 python3 -m pytest -q"
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == blocks[1].strip() and "tools/setup.sh" in ci  # CI: the same install path, the same test command
    assert blocks[0].strip().endswith("tools/setup.sh && rn-deploy demo")
