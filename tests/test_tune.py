"""`rn-deploy serve --tune`: the choice rule, the grid option, and a real tiny sweep whose saved setting serve and export-triton reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import tritonclient.http as thttp
from click.testing import CliRunner

from rn_deploy.cli import main
from rn_deploy.export import export_onnx
from rn_deploy.tune import TuneRow, choose, parse_grid, settings_of
from rn_deploy.tuned import load_tuned, tuned_path

from .conftest import make_checkpoint
from .test_serve import start_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tune")
    make_checkpoint(d / "model.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    return Path(export_onnx(d / "model.pt", d / "model.onnx", verify=False).onnx_path)


def test_choose_keeps_the_fastest_setting_within_the_p99_budget() -> None:
    rows = [TuneRow(32, 2000, 1, default=True, requests_per_s=300, p99_ms=20),
            TuneRow(8, 0, 1, requests_per_s=900, p99_ms=60),  # fastest, but over the budget
            TuneRow(16, 500, 2, requests_per_s=500, p99_ms=40),
            TuneRow(16, 0, 2, requests_per_s=500, p99_ms=30),  # as fast, lower p99: wins the tie
            TuneRow(4, 0, 2, requests_per_s=800, p99_ms=10, errors=3),  # errors: never chosen
            TuneRow(4, 0, 1, requests_per_s=950, failed="tritonserver exited")]
    assert choose(rows, 50).setting() == {"max_batch": 16, "max_queue_delay_us": 0, "instances": 2, "ort_threads": 0}
    assert choose(rows, 100).setting() == {"max_batch": 8, "max_queue_delay_us": 0, "instances": 1, "ort_threads": 0}
    assert choose(rows, 25) is rows[0] and choose(rows, 5) is None
    tie = [TuneRow(8, 0, 1, requests_per_s=100, p99_ms=10), TuneRow(32, 2000, 1, default=True, requests_per_s=100, p99_ms=10)]
    assert choose(tie, 50) is tie[1]  # a full tie keeps the default


def test_grid_parsing_and_the_default_setting_always_measured() -> None:
    grid = parse_grid("batch=16,8 delay_us=0;instances=2")
    assert grid == {"max_batch": [8, 16], "max_queue_delay_us": [0], "instances": [2], "ort_threads": [0]}
    assert parse_grid("instances=1")["max_batch"] == [8, 32]  # keys left out keep the default grid
    assert parse_grid("threads=2,1")["ort_threads"] == [1, 2]
    default = {"max_batch": 32, "max_queue_delay_us": 2000, "instances": 1, "ort_threads": 0}
    settings = settings_of(grid, default)
    assert settings[0] == default and len(settings) == 3


@pytest.mark.parametrize("grid", ["max_batch=0", "colour=1,2", "max_batch=a", "max_batch=", " ", "delay_us=-5", "instances",
                                  "ort_threads=-1"])
def test_a_bad_tune_grid_is_exit_2_naming_it_before_any_work(model: Path, grid: str) -> None:
    res = CliRunner().invoke(main, ["serve", str(model), "--tune", "--tune-grid", grid])
    assert res.exit_code == 2, res.output
    assert "--tune-grid" in res.output and "Traceback" not in res.output
    assert not tuned_path(model).exists() and not model.with_name(model.name + ".tune").exists()


def test_a_real_tune_saves_the_setting_that_serve_and_export_triton_reuse_until_the_model_changes(model: Path,
                                                                                                 tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "rn_deploy.cli", "serve", str(model), "--tune", "--tune-grid",
                          "max_batch=4 max_queue_delay_us=0 instances=1", "--tune-seconds", "2", "--tune-concurrency", "4",
                          "--p99-ms", "60000", "--tune-out", str(tmp_path / "tune"), "--json"],
                         capture_output=True, text=True, env=env, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout)  # --json: one document
    assert [(r["max_batch"], r["max_queue_delay_us"], r["instances"], r["default"]) for r in res["rows"]] == \
        [(32, 4000, 1, True), (4, 0, 1, False)]  # the default, measured too, then the grid
    for r in res["rows"]:
        assert r["failed"] is None and r["errors"] == 0 and r["requests_per_s"] > 0 and r["p99_ms"] > 0
        assert r["server_cpu"] > 0 and r["images_per_cpu_s"] > 0 and r["avg_batch"] >= 1
    best = max(res["rows"], key=lambda r: r["requests_per_s"])
    saved = json.loads(tuned_path(model).read_text())
    assert res["saved"] == str(tuned_path(model)) and saved["settings"] == res["chosen"]
    assert res["chosen"] == {k: best[k] for k in ("max_batch", "max_queue_delay_us", "instances", "ort_threads")}
    assert saved["model_sha256"] and load_tuned(model) == res["chosen"]
    assert "| 4 | 0 | 1 | auto |" in (tmp_path / "tune" / "tune.md").read_text()
    assert (tmp_path / "tune" / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A file written before ort_threads was a setting still loads (0: serve's rule).
    saved["settings"] = {"max_batch": 4, "max_queue_delay_us": 700, "instances": 1}
    tuned_path(model).write_text(json.dumps(saved))
    assert load_tuned(model) == {"max_batch": 4, "max_queue_delay_us": 700, "instances": 1, "ort_threads": 0}
    # Reuse: a setting unlike any default (same file, same model digest), for the options not given.
    saved["settings"] = {"max_batch": 4, "max_queue_delay_us": 700, "instances": 1, "ort_threads": 1}
    tuned_path(model).write_text(json.dumps(saved))
    out = CliRunner().invoke(main, ["export-triton", str(model), "--repo", str(tmp_path / "repo"), "--name", "fm", "--kind", "cpu"])
    assert out.exit_code == 0, out.output
    assert "using the tuned setting" in out.output
    front = (tmp_path / "repo" / "fm_image" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in front and "max_queue_delay_microseconds: 700" in front
    assert 'key: "ort_threads"\n  value: { string_value: "1" }' in front
    assert "max_batch_size: 4" in (tmp_path / "repo" / "fm" / "config.pbtxt").read_text()
    out = CliRunner().invoke(main, ["export-triton", str(model), "--repo", str(tmp_path / "repo2"), "--name", "fm", "--kind", "cpu",
                                    "--max-batch", "8"])  # given on the command line: wins over the file
    assert "max_batch_size: 8" in (tmp_path / "repo2" / "fm_image" / "config.pbtxt").read_text()
    srv = start_server(model, tmp_path / "serve.log", "--max-batch", "2")
    try:
        c = thttp.InferenceServerClient(srv.http)
        cfg = c.get_model_config("classifier")
        c.close()
        assert cfg["max_batch_size"] == 2  # given
        assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 700  # from the file
        assert cfg["parameters"]["ort_threads"]["string_value"] == "1"  # from the file
    finally:
        srv.stop()

    # A changed model (other metadata: another sha256) makes the file stale: a warning, and the defaults.
    m = onnx.load(str(model))
    m.doc_string = "changed"
    onnx.save(m, str(model))
    out = CliRunner().invoke(main, ["export-triton", str(model), "--repo", str(tmp_path / "repo3"), "--name", "fm", "--kind", "cpu"])
    assert out.exit_code == 0, out.output
    assert "is stale" in out.output and "using the tuned setting" not in out.output
    front = (tmp_path / "repo3" / "fm_image" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in front and "max_queue_delay_microseconds: 4000" in front
    assert load_tuned(model) is None


@pytest.mark.parametrize(("key", "value"), [("ort_threads", -1), ("ort_threads", 1.5), ("ort_threads", "2"), ("max_batch", 0),
                                            ("instances", True), ("max_queue_delay_us", None)])
def test_a_hand_edited_tuned_file_with_a_bad_value_is_ignored_with_a_warning_naming_it(model: Path, tmp_path: Path, key: str,
                                                                                          value: object) -> None:
    """MODEL.serving.json is a file users may edit: a value that is not a whole number at or above the setting's minimum
    is not applied (a -1 thread count once reached the stub's torch.set_num_threads and failed the model's load there);
    the warning names the file, the key and the value, and export-triton writes its defaults."""
    from rn_deploy._io import sha256_file

    m = tmp_path / "model.onnx"
    m.write_bytes(model.read_bytes())
    settings = {"max_batch": 4, "max_queue_delay_us": 700, "instances": 1, "ort_threads": 1, key: value}
    tuned_path(m).write_text(json.dumps({"format": "rn-deploy-serving/1", "model": m.name, "model_sha256": sha256_file(m),
                                         "settings": settings}))
    said: list[str] = []
    assert load_tuned(m, warn=said.append) is None
    assert len(said) == 1 and str(tuned_path(m)) in said[0] and f"{key}={value!r}" in said[0]
    out = CliRunner().invoke(main, ["export-triton", str(m), "--repo", str(tmp_path / "repo"), "--name", "fm", "--kind", "cpu"])
    assert out.exit_code == 0, out.output
    front = (tmp_path / "repo" / "fm_image" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in front and 'key: "ort_threads"\n  value: { string_value: "0" }' in front


@pytest.mark.parametrize(("field", "value", "flag"), [("ort_threads", -1, "--ort-threads -1"), ("ort_threads", 1.5, "--ort-threads 1.5"),
                                                      ("max_queue_delay_us", -5, "--max-queue-delay-us -5"),
                                                      ("instances", 0, "--instances 0")])
def test_serve_refuses_a_bad_setting_naming_it_before_any_server(model: Path, field: str, value: object, flag: str) -> None:
    from rn_deploy.errors import RnDeployError
    from rn_deploy.serve import ServeOptions, serve

    with pytest.raises(RnDeployError, match=f"^{flag}: must be a whole number >= "):
        serve(ServeOptions(model, **{field: value}), log=lambda _: None)
