"""Atomic file writes: artifacts appear whole or not at all; outputs checked before the work, folders made only when used."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RnDeployError

WRITTEN: list[str] = []
"""Every file :func:`atomic_path` completed in this process, in order: what an interrupted command kept."""


def check_writable(path: str | os.PathLike[str], *, folder: bool = False, option: str = "--out") -> None:
    """Refuse an output that cannot be written, before any work; creates nothing.

    Args:
        path: the output file (its folder is checked) or, with ``folder``, the output folder.
        folder: ``path`` is a folder.
        option: the option that names it, for the fix.

    The nearest folder that exists on the way is probed by creating (and removing) a file in it: root
    ignores permission bits, but not a read-only mount, an immutable folder or a regular file in the way.
    """
    target = Path(path) if folder else Path(path).parent
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RnDeployError(f"{target}: cannot create the output folder ({probe} is a file); choose another {option}")
    try:
        fd, name = tempfile.mkstemp(prefix=".rn-deploy-probe.", dir=probe)
    except OSError as e:
        raise RnDeployError(f"{target}: cannot write here ({e.strerror or e}); choose another {option}") from None
    os.close(fd)
    os.unlink(name)


@contextlib.contextmanager
def made_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``path`` (and missing parents) for the work inside; on failure remove the ones made here if still empty."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RnDeployError(f"{path}: cannot create the output folder ({e.strerror or e}); choose another output path") from None
    try:
        yield path
    except BaseException:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the destination folder so the final ``os.replace`` is atomic
    (same file system). On any exception the temporary file is removed and nothing is left.
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise RnDeployError(f"{dest}: cannot write here ({e.strerror or e}); choose a writable output path") from e
    os.close(fd)
    tmp = Path(tmp_name)
    set_default_mode(tmp)  # mkstemp makes 0600; artifacts should get the usual mode
    try:
        yield tmp
        os.replace(tmp, dest)
        WRITTEN.append(str(dest))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RnDeployError(f"{dest}: write failed ({e.strerror or e}); check free space and permissions") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would (0666 less the umask), whatever wrote it."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use: plotting is optional work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> str:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically (temporary file, then rename), close it; the path."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return str(path)
