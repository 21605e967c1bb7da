"""Serve a model on a real Triton Inference Server: HTTP/gRPC KServe-v2, dynamic batching, per-request errors, metrics.

    rn-deploy serve exports/demo/model.onnx --name fashion        # or model.tensorrt.engine

``serve`` writes a Triton model repository (:func:`write_repository`: ``NAME/config.pbtxt`` for
Triton's Python backend and ``NAME/1/model.py``, which runs :class:`TritonPythonModel`) and runs the
``tritonserver`` that the ``nvidia-pytriton`` wheel bundles on it. The model contract (docs/formats.md):

- input ``image`` BYTES [1]: an encoded PNG/JPEG, decoded here, converted to the model's colour
  mode (:func:`rn_deploy.preprocess.convert_pil`) and preprocessed with
  :func:`rn_deploy.preprocess.preprocess`, the training evaluation's own function, so requests of
  any image size batch together;
- or input ``pixels`` UINT8 [-1, -1, C]: one raw HxWxC image;
- outputs ``label`` BYTES [1], ``index`` INT32 [1], ``score`` FP32 [1], ``probs`` FP32 [n_classes],
  class names from the model's metadata.

Triton's dynamic batcher gathers concurrent requests (up to ``max_batch``, waiting at most
``max_queue_delay_us``) into one ``execute`` call. Each request is read and checked on its own, at
the size it will run at: one the server cannot read (not a PNG/JPEG, truncated, over
``--max-request-bytes``, ``--max-pixels`` or ``--max-aspect``) gets its own INVALID_ARG error (HTTP
400, gRPC INVALID_ARGUMENT) with one line naming the problem, and the valid requests of the same
call run as :class:`Engine` batches of at most ``--max-batch-pixels`` decoded pixels; a batch that
fails is retried request by request. Before any of that, :mod:`.guard` holds the public HTTP and gRPC
ports: a body over ``--max-request-bytes`` is refused there (HTTP 413, gRPC RESOURCE_EXHAUSTED)
without being read, and bodies in flight are bounded by ``--max-bytes-in-flight``. A fault of the server itself is answered with an INTERNAL
error (HTTP 500) carrying a short id; the server log has the detail

Modules: :mod:`.options` (ServeOptions), :mod:`.decode` (one request's image), :mod:`.backend`
(Classifier, TritonPythonModel), :mod:`.repository` (the model repository it writes),
:mod:`.tritonserver` (the bundled server's files, command and environment), :mod:`.guard` (the
public ports: body limits in front of tritonserver), :mod:`.server` (the
process: launch, ports, readiness, SIGTERM) and :mod:`.procfs` (process tree, memory). The generated
``model.py`` imports ``rn_deploy.serve.TritonPythonModel``: it stays importable from here.

The names below load on first use (PEP 562): the ``serve`` process only supervises tritonserver and
must not pay for torch or ONNX Runtime (issue 33: <= 300 MB); the stub, which runs the model, loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..triton import IMAGE, INDEX, LABEL, MODEL_PY, PIXELS, PROBS, SCORE, contract_config_pbtxt
    from .backend import Classifier, TritonPythonModel
    from .decode import IMAGE_MAGIC, check_pixels, decode_image
    from .options import DEFAULT_MODEL, SERVE_EXTRA, ServeOptions
    from .procfs import process_tree, tree_pss_mb, tree_rss_mb
    from .repository import config_pbtxt, write_repository
    from .server import START_TIMEOUT_S, check_model, check_ports, serve
    from .tritonserver import (
        RESTRICTED_APIS,
        prefer_own_libpython,
        server_env,
        stage_backends,
        tritonserver_command,
        tritonserver_dist,
    )

# public name -> the module that defines it (relative to this package)
_LAZY = {
    **dict.fromkeys(["IMAGE", "INDEX", "LABEL", "MODEL_PY", "PIXELS", "PROBS", "SCORE", "contract_config_pbtxt"], "..triton"),
    **dict.fromkeys(["Classifier", "TritonPythonModel"], ".backend"),
    **dict.fromkeys(["IMAGE_MAGIC", "check_pixels", "decode_image"], ".decode"),
    **dict.fromkeys(["DEFAULT_MODEL", "SERVE_EXTRA", "ServeOptions"], ".options"),
    **dict.fromkeys(["process_tree", "tree_pss_mb", "tree_rss_mb"], ".procfs"),
    **dict.fromkeys(["config_pbtxt", "write_repository"], ".repository"),
    **dict.fromkeys(["START_TIMEOUT_S", "check_model", "check_ports", "serve"], ".server"),
    **dict.fromkeys(["RESTRICTED_APIS", "prefer_own_libpython", "server_env", "stage_backends", "tritonserver_command",
                     "tritonserver_dist"], ".tritonserver"),
}

__all__ = [
    "DEFAULT_MODEL", "IMAGE", "IMAGE_MAGIC", "INDEX", "LABEL", "MODEL_PY", "PIXELS", "PROBS", "RESTRICTED_APIS", "SCORE",
    "SERVE_EXTRA", "START_TIMEOUT_S", "Classifier", "ServeOptions", "TritonPythonModel", "check_model", "check_pixels", "check_ports",
    "config_pbtxt", "contract_config_pbtxt", "decode_image", "prefer_own_libpython", "process_tree", "serve", "server_env",
    "stage_backends", "tree_pss_mb", "tree_rss_mb", "tritonserver_command", "tritonserver_dist", "write_repository",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
