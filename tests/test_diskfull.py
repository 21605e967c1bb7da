"""A full disk stops the suite at the first test that meets it (tests/diskfull.py).

A real pytest subprocess runs generated tests; the full disk is the kernel's own /dev/full, whose
writes fail with ENOSPC, so no error is faked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GENERATED = '''
import pytest

def test_a_first():
    pass

def test_b_other_os_errors_do_not_stop():
    open("/nonexistent-dir/x", "rb")

@pytest.fixture
def scratch():
    with open("/dev/full", "wb") as f:  # closing flushes: ENOSPC, as a tmp_path on a full disk
        f.write(b"x" * 10)

def test_c_setup_on_a_full_disk(scratch):
    pass

def test_d_after():
    pass
'''


def test_enospc_stops_the_run_in_one_line_and_other_errors_do_not(tmp_path: Path):
    (tmp_path / "test_generated.py").write_text(GENERATED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.diskfull", "-p", "no:cacheprovider", "-q", "-rA",
                           "--rootdir", str(tmp_path), "-c", os.devnull, "test_generated.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # pytest's 'interrupted'
    assert "PASSED test_generated.py::test_a_first" in out
    assert "FAILED test_generated.py::test_b_other_os_errors_do_not_stop" in out  # the run went on after it
    assert "ERROR test_generated.py::test_c_setup_on_a_full_disk" in out
    assert "test_d_after" not in out, out  # stopped at the full disk
    assert "the disk is full (No space left on device, in test_generated.py::test_c_setup_on_a_full_disk)" in out, out
