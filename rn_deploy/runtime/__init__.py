"""Runtime layer: what runs an engine that exists (manifest checks, deserialisation, inspection).

Runners and the Engine import from here; nothing here imports build-time code (rn_deploy.builder).
"""

from __future__ import annotations

from .checks import check_compatible, check_engine_file, deserialize_checked, inspect_engine, load_engine_checked, rebuild_command
from .manifest import (
           BACKENDS,
           MANIFEST_FORMAT,
           EngineManifest,
           Profile,
           fmt_shape,
           import_backend,
           manifest_path,
           rtx_runs_on,
           rtx_targets,
)

__all__ = ["BACKENDS", "MANIFEST_FORMAT", "EngineManifest", "Profile", "check_compatible", "check_engine_file",
           "deserialize_checked", "fmt_shape", "import_backend", "inspect_engine", "load_engine_checked", "manifest_path",
           "rebuild_command", "rtx_runs_on", "rtx_targets"]
