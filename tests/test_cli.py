from __future__ import annotations

import json

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

