"""The bundled tritonserver (nvidia-pytriton): its files, command line, Python backend and environment."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import MissingDependencyError
from .options import SERVE_EXTRA, ServeOptions

# APIs a client has no business calling on a classifier service: protected by a header only the server knows.
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"


def prefer_own_libpython() -> None:
    """Put this interpreter's ``lib/`` first on LD_LIBRARY_PATH for the tritonserver started here.

    Triton's Python backend stub links ``libpython3.X``; without this it loads the system one, which
    fails under another build of the same version (pyenv, conda): ``'_thread.RLock' object has no
    attribute '_recursion_count'`` or ``No module named 'numpy'``.
    """
    lib = str(Path(sys.base_prefix) / "lib")
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != lib]
    os.environ["LD_LIBRARY_PATH"] = ":".join([lib, *parts])


def tritonserver_dist() -> tuple[Path, Path, Path]:
    """The bundled tritonserver folder, its libraries and the Python-backend stub for this interpreter (nvidia-pytriton)."""
    try:
        import pytriton
        from pytriton.utils.distribution import get_libs_path, get_stub_path
    except ImportError as e:
        raise MissingDependencyError(f"serving needs the tritonserver of nvidia-pytriton ({e}); {SERVE_EXTRA}") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root, Path(get_libs_path()), Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))


def tritonserver_command(opts: ServeOptions, repo: Path, backends: Path, token: str, upstream: tuple[int, int] | None,
                         *extra: str) -> list[str]:
    """The tritonserver command line: HTTP and gRPC on loopback ports ``upstream`` behind the body guard
    (:mod:`.guard` holds the public ones; None: the public ones, no guard), metrics on the public address,
    statistics open, admin APIs behind ``token``."""
    root, _, _ = tritonserver_dist()
    host, (http, grpc) = ("127.0.0.1", upstream) if upstream else (opts.host, (opts.http_port, opts.grpc_port))
    return [str(root / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--http-address={host}", f"--http-port={http}", f"--grpc-address={host}",
            f"--grpc-port={grpc}", f"--metrics-address={opts.host}", f"--metrics-port={opts.metrics_port}",
            "--allow-gpu-metrics=false", f"--exit-timeout-secs={opts.exit_timeout_s}",
            f"--http-restricted-api={RESTRICTED_APIS}:rn-deploy-token={token}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:rn-deploy-token={token}", *extra]


def stage_backends(dest: Path) -> Path:
    """The Python backend with this interpreter's stub beside it (as PyTriton stages it): ``dest/python/``."""
    root, _, stub = tritonserver_dist()
    shutil.copytree(root / "backends", dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stub, dest / "python" / "triton_python_backend_stub")
    return dest


MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(8 << 20)}
"""glibc settings for tritonserver and its stubs (unless already set): few arenas, and blocks of 1 MiB or more (request
bodies, decoded images) mmap'd, so their memory goes back to the system once freed instead of staying in a heap."""


def server_env() -> dict[str, str]:
    """tritonserver's environment: this interpreter's libpython first, the bundled libraries, this interpreter's import path.

    The stub's embedded interpreter reads no ``PYTHONPATH`` and finds its prefix (stdlib, site-packages) through
    ``python3`` on ``PATH``: this interpreter's folder goes first on ``PATH``, so an unactivated venv
    (``.venv/bin/rn-deploy serve``) is still the stub's, and ``RN_DEPLOY_PYTHONPATH`` (read by the generated
    ``model.py``) carries the folder this ``rn_deploy`` was imported from, then this interpreter's ``sys.path``:
    the stub runs the same rn_deploy as this process, an editable install's or a checkout's.
    """
    prefer_own_libpython()
    _, libs, _ = tritonserver_dist()
    env = {**MALLOC_ENV, **os.environ}
    env["LD_LIBRARY_PATH"] = ":".join([*env["LD_LIBRARY_PATH"].split(":"), str(libs)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding this rn_deploy package
    env["RN_DEPLOY_PYTHONPATH"] = env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([package_root, *(p for p in sys.path if p)]))
    # torch's OpenMP threads (preprocessing, softmax in the stub) spin-wait between parallel regions by default: beside
    # tritonserver's threads on a busy 2-core machine a batch of 2 cost 3-5 ms of CPU per image instead of ~0.4 (issue 33).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
