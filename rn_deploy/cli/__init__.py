"""The ``rn-deploy`` command line: thin click commands over the library functions, one module per command group.

``group`` holds the click group ``main`` (lazy training commands, the output check, --json stdout, errors, Ctrl-C)
and how commands print; ``params`` the option types and parsers. The commands: ``artifacts`` (export, import, build,
quantize, export-triton), ``describe`` (models, summary, inspect), ``verdicts`` (validate, eval, doctor), ``service``
(serve, classify, loadtest), ``optimize``, ``demo``. Importing this package registers every command on ``main``; training commands
live in rn_deploy.train.cli.
"""

from __future__ import annotations

from .artifacts import build_cmd, export_cmd, export_triton_cmd, import_cmd, quantize_cmd
from .demo import demo_cmd
from .describe import inspect_cmd, models_cmd, show_shape, show_value, summary_cmd
from .group import LAZY_COMMANDS, OUTPUTS, echo_json, main, stderr_log
from .optimize import optimize_cmd
from .params import (
    BACKEND_LIST,
    BATCH_TRIPLE,
    DATASET_NAMES,
    FLOATS,
    HW_LIST,
    PROFILE,
    SHAPE,
    HWType,
    LibraryValueType,
    parse_hw,
    split_ints,
)
from .service import classify_cmd, loadtest_cmd, serve_cmd
from .verdicts import doctor_cmd, eval_cmd, validate_cmd

__all__ = [
    "BACKEND_LIST",
    "BATCH_TRIPLE",
    "DATASET_NAMES",
    "FLOATS",
    "HW_LIST",
    "LAZY_COMMANDS",
    "OUTPUTS",
    "PROFILE",
    "SHAPE",
    "HWType",
    "LibraryValueType",
    "build_cmd",
    "classify_cmd",
    "demo_cmd",
    "doctor_cmd",
    "echo_json",
    "eval_cmd",
    "export_cmd",
    "export_triton_cmd",
    "import_cmd",
    "inspect_cmd",
    "loadtest_cmd",
    "main",
    "models_cmd",
    "optimize_cmd",
    "parse_hw",
    "quantize_cmd",
    "serve_cmd",
    "show_shape",
    "show_value",
    "split_ints",
    "stderr_log",
    "summary_cmd",
    "validate_cmd",
]
