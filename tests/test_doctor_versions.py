"""`rn-deploy doctor`'s package block: the versions that matter and the combinations known to be bad (issue 25 item 7)."""

from __future__ import annotations

import importlib.metadata as md
import json

import numpy as np
from click.testing import CliRunner

from rn_deploy.cli import main
from rn_deploy.doctor import PACKAGES, known_bad

# What `pip install 'rn-deploy[serve]'` does to a numpy 2 install, as measured (issue 25 item 7): PyTriton 0.7.0
# declares numpy<2, so numpy 2.4.6 installed afterwards (or kept by --no-deps) breaks its pin.
PYTRITON_REQS = {"nvidia-pytriton": ["numpy<2.0.0,>=1.21", "pyzmq~=23.0", "typing_inspect>=0.6.0"]}


def test_numpy_2_under_pytriton_is_flagged_with_both_versions_and_the_fix():
    lines = known_bad({"numpy": "2.4.6", "nvidia-pytriton": "0.7.0"}, PYTRITON_REQS)
    assert len(lines) == 1, lines
    assert "nvidia-pytriton 0.7.0 requires numpy" in lines[0] and "<2.0.0" in lines[0] and "numpy 2.4.6 is installed" in lines[0]
    assert "pip install" in lines[0]
    assert known_bad({"numpy": "1.26.4", "nvidia-pytriton": "0.7.0"}, PYTRITON_REQS) == []
    assert known_bad({"numpy": "2.4.6", "nvidia-pytriton": None}, {}) == []  # no PyTriton: numpy 2 is fine


def test_requirements_of_extras_and_of_packages_not_installed_are_not_judged():
    reqs = {"tritonclient": ["numpy>=1.19.1", "cuda-python; extra == 'all'", "numpy<1.0; extra == 'http'"],
            "torchvision": ["numpy", "torch (>=2.14.0)"]}
    assert known_bad({"numpy": "1.26.4", "tritonclient": "2.73.0", "torchvision": "0.29.1", "torch": "2.14.1"}, reqs) == []
    bad = known_bad({"numpy": "1.26.4", "tritonclient": "2.73.0", "torchvision": "0.29.1", "torch": "2.13.0"}, reqs)
    assert len(bad) == 1 and "torchvision 0.29.1 requires torch>=2.14.0, but torch 2.13.0 is installed" in bad[0], bad


def test_cpu_and_gpu_onnxruntime_together_are_flagged():
    bad = known_bad({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.23.2"}, {})
    assert len(bad) == 1 and "onnxruntime 1.32.0 and onnxruntime-gpu 1.23.2 are both installed" in bad[0] and "--no-deps" in bad[0]


def test_doctor_reports_the_installed_versions_in_json_and_text():
    res = CliRunner().invoke(main, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    block = json.loads(res.stdout)["packages"]  # the whole of stdout is the one JSON document
    assert list(block["versions"]) == list(PACKAGES)
    for name in ("numpy", "torch", "onnxruntime", "rn-deploy"):
        assert block["versions"][name] == md.version(name)
    assert block["versions"]["numpy"] == np.__version__
    # tools/setup.sh installs a consistent set: nothing known to be bad in the environment the suite runs in.
    assert block["known_bad"] == [], block["known_bad"]
    text = CliRunner().invoke(main, ["doctor"]).stdout
    assert f"numpy {np.__version__}" in text and "packages:" in text


def test_a_stubs_only_package_is_named_as_stubs_not_as_a_broken_install(tmp_path, monkeypatch):
    """README's install has tensorrt-stubs: a ``tensorrt/`` folder of ``.pyi`` files, which doctor must call stubs
    (issue 32.12); an empty folder is still a failed install. A fake module stands in for tensorrt here."""
    from rn_deploy.doctor.probes import module_version

    (tmp_path / "rnfake_rt").mkdir()
    (tmp_path / "rnfake_rt" / "__init__.pyi").write_text("def f() -> int: ...\n")
    info = tmp_path / "rnfake_rt_stubs-10.13.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rnfake-rt-stubs\nVersion: 10.13.0\n")
    (info / "RECORD").write_text("rnfake_rt/__init__.pyi,,\nrnfake_rt_stubs-10.13.0.dist-info/METADATA,,\n")
    (tmp_path / "rnfake_empty").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    version, why = module_version("rnfake_rt")
    assert version is None and why is not None
    assert "type stubs (rnfake-rt-stubs 10.13.0" in why and "no runtime" in why and "empty" not in why
    assert "empty 'rnfake_empty' folder" in (module_version("rnfake_empty")[1] or "")
