"""A bad option value is a usage error everywhere: exit 2, one line on stderr naming the option, before any work.

Issue 32.12: ``build --min 0x1x28x28`` exited 1 after the builder's 4 s import, ``serve --http-port -1`` exited 1. Each
value below is judged by its click type while the command line is parsed; the light ones run in one fresh interpreter
that must not import torch, onnx or ONNX Runtime (no work, no heavy import), the rest (their check needs the library
that defines the rule) in-process. No file named here needs to exist: the value is refused first.
Planted bugs (tried): ``--http-port`` back to ``type=int`` (serve reaches Engine.load, exit 1); parse_shape without the
``< 1`` check (build --min 0x1x28x28 exits 1 after importing the builder); click's own 4-line usage print.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rn_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["--opt", "1x1x28x28", "--max", "1x1x28x28"]

# (arguments, the option the one line must name)
LIGHT = [
    (["build", "m.onnx", "--min", "0x1x28x28", *SHAPES], "--min"),
    (["build", "m.onnx", "--min", "1x1x28", *SHAPES], "--min"),
    (["build", "m.onnx", "--min", "4x1x28x28", "--opt", "1x1x28x28", "--max", "8x1x28x28"], "--min/--opt/--max"),
    (["build", "m.onnx", "--profile", "1x1x28x28:1x1x20x20:1x1x40x40"], "--profile"),
    (["build", "m.onnx", "--profile", "1x1x0x28:1x1x28x28:1x1x40x40"], "--profile"),
    (["build", "m.onnx", "--batch", "0,1,2"], "--batch"),
    (["build", "m.onnx", "--workspace", "0"], "--workspace"),
    (["build", "m.onnx", "--dla-core", "-1"], "--dla-core"),
    (["build", "m.onnx", "--min", "1x1x28x28"], "--max"),
    (["serve", "m.onnx", "--http-port", "-1"], "--http-port"),
    (["serve", "m.onnx", "--grpc-port", "70000"], "--grpc-port"),
    (["serve", "m.onnx", "--metrics-port", "x"], "--metrics-port"),
    (["serve", "m.onnx", "--name", "a/b"], "--name"),
    (["serve", "m.onnx", "--max-batch", "0"], "--max-batch"),
    (["serve", "m.onnx", "--max-request-bytes", "0"], "--max-request-bytes"),
    (["serve", "m.onnx", "--max-pixels", "1000", "--max-batch-pixels", "999"], "--max-batch-pixels"),
    (["optimize", "m.pt", "-o", "o", "--batches", "0,8"], "--batches"),
    (["optimize", "m.pt", "-o", "o", "--p99-ms", "-1"], "--p99-ms"),
    (["export", "m.pt", "--opset", "5"], "--opset"),
    (["export", "m.pt", "--static", "0"], "--static"),
    (["validate", "--checkpoint", "m.pt", "--batch", "0"], "--batch"),
    (["validate", "--checkpoint", "m.pt", "--batch", "a"], "--batch"),
    (["validate", "--checkpoint", "m.pt", "--sizes", "0"], "--sizes"),
    (["validate", "--checkpoint", "m.pt", "--backends", "trt,nope"], "--backends"),
    (["validate", "--checkpoint", "m.pt", "--iters", "0"], "--iters"),
    (["eval", "--checkpoint", "m.pt", "--sizes", "0"], "--sizes"),
    (["eval", "--checkpoint", "m.pt", "--scales", "-1"], "--scales"),
    (["eval", "--checkpoint", "m.pt", "--max-drop", "nan"], "--max-drop"),
    (["quantize", "m.pt", "--max-drop", "-1"], "--max-drop"),
    (["quantize", "m.pt", "--max-drop", "inf"], "--max-drop"),
    (["quantize", "m.pt", "--calib-size", "0"], "--calib-size"),
    (["export-triton", "m.onnx", "--repo", "r", "--name", "n", "--max-batch", "0"], "--max-batch"),
    (["export-triton", "m.onnx", "--repo", "r", "--name", ""], "--name"),
    (["import", "m.pt", "-o", "x.pt", "--mean", "a,b"], "--mean"),
    (["import", "m.pt", "-o", "x.pt", "--std", "0.2,0,0.2"], "--std"),
    (["import", "m.pt", "-o", "x.pt", "--size", "0"], "--size"),
    (["models", "--n-classes", "0"], "--n-classes"),
    (["models", "--in-channels", "0"], "--in-channels"),
    (["summary", "resnet18", "--size", "0x4"], "--size"),
    (["summary", "resnet19"], "ARCH"),
    (["demo", "--arch", "nope", "--epochs", "1"], "--arch"),
    (["loadtest", "localhost:1", "--images", "imgs", "--concurrency", "0"], "--concurrency"),
    (["loadtest", "localhost:1", "--images", "imgs", "--concurrency", "4,a"], "--concurrency"),
]
# Their rule lives beside the library code (tolerance and agreement keys, eval's backends): judged while parsing all
# the same, but importing it costs torch.
HEAVY = [
    (["validate", "--checkpoint", "m.pt", "--tol", "bogus=1"], "--tol"),
    (["eval", "--checkpoint", "m.pt", "--min-agreement", "2"], "--min-agreement"),
    (["eval", "--checkpoint", "m.pt", "--backends", "nope"], "--backends"),
]

# Runs every LIGHT case in one interpreter: exit code, stderr and the heavy modules each case loaded. (Once one case
# has loaded torch a later one cannot be caught loading it; with every case light none has.)
PROBE = """
import io, json, sys
from rn_deploy.cli import main
out = []
heavy = ("torch", "onnx", "onnxruntime")
for args in json.loads(sys.argv[1]):
    before = {m for m in heavy if m in sys.modules}
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        main(args, prog_name="rn-deploy")
        code = 0
    except SystemExit as e:
        code = e.code
    text, sys.stderr = sys.stderr.getvalue(), err
    out.append({"code": code, "stderr": text, "heavy": [m for m in heavy if m in sys.modules and m not in before]})
print(json.dumps(out))
"""


def _check(code: int, stderr: str, option: str) -> None:
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def light_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    cwd = tmp_path_factory.mktemp("values")  # an empty folder: none of the named files exists
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps([a for a, _ in LIGHT])], capture_output=True, text=True,
                         cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("i", range(len(LIGHT)), ids=[" ".join(a) for a, _ in LIGHT])
def test_a_bad_value_is_exit_2_in_one_line_before_any_heavy_import(light_results: list[dict], i: int):
    r = light_results[i]
    _check(r["code"], r["stderr"], LIGHT[i][1])
    assert r["heavy"] == [], f"{' '.join(LIGHT[i][0])} imported {r['heavy']} before refusing the value"


@pytest.mark.parametrize(("args", "option"), HEAVY, ids=[" ".join(a) for a, _ in HEAVY])
def test_a_bad_value_judged_by_a_library_rule_is_exit_2_in_one_line(args: list[str], option: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, args)
    _check(res.exit_code, res.stderr, option)


def test_the_opset_floor_is_the_exporters():
    from rn_deploy.cli.artifacts import export_cmd
    from rn_deploy.export.trace import MIN_OPSET

    opset = next(p for p in export_cmd.params if p.name == "opset")
    assert opset.type.min == MIN_OPSET  # type: ignore[attr-defined]
