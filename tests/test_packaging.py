"""Packaging: `train/` installs as `rn_deploy.train`, never as a top-level `train` package (issue 18 item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):  # noqa: UP036 - the 3.10 CI leg runs this file too
    import tomllib
else:  # Python 3.10 (JetPack 6): pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_package_list_names_every_package_folder():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rn_deploy").rglob("__init__.py")}
    found |= {"rn_deploy." + ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "train").rglob("__init__.py")}
    assert sorted(_packages()) == sorted(found)
    assert not any(p == "train" or p.startswith("train.") for p in _packages())


def test_a_users_train_py_does_not_collide(tmp_path: Path):
    (tmp_path / "train.py").write_text("print('USER TRAIN'); raise SystemExit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ours = subprocess.run([sys.executable, "-m", "rn_deploy.train", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert ours.returncode == 0 and "--epochs" in ours.stdout and "USER TRAIN" not in ours.stdout
    theirs = subprocess.run([sys.executable, "-c", "import train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "USER TRAIN" in theirs.stdout  # `import train` is the user's own file, as it should be
    probe = "import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', '.')]; print(importlib.util.find_spec('train'))"
    assert subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "None"


def test_wheel_holds_rn_deploy_train_and_no_top_level_train(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("rn_deploy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rn_deploy/train/loop.py" in names and "rn_deploy/train/__main__.py" in names
    assert not [n for n in names if n.startswith("train/")]
