"""Option values of the commands: click parameter types and the parsers behind them (sizes, shapes, profiles, lists).

Every value that can be judged alone is judged here, while click parses, so a bad one is a usage error (exit 2)
before any work; the types import nothing heavy (torch, onnx) unless their option is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..datasets import ALIASES, DATASETS
from ..errors import RnDeployError


def parse_hw(value: str) -> tuple[int, int]:
    """'224' -> (224, 224); '97x211' -> (97, 211)."""
    parts = value.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size; use H or HxW, e.g. 224 or 97x211") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise click.BadParameter(f"{value!r} is not a size; use H or HxW with positive numbers")
    return nums[0], nums[1]


class HWType(click.ParamType):
    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_hw(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


class LibraryValueType(click.ParamType):
    """An option value parsed by a library function: its RnDeployError becomes a usage error (exit 2)."""

    def __init__(self, name: str, parse: Any):
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except RnDeployError as e:
            self.fail(str(e), param, ctx)


def _shape(text: str) -> Any:
    from ..runtime.manifest import parse_shape  # not ..builder: that imports torch

    return parse_shape(text)


def _profile(text: str) -> Any:
    from ..runtime.manifest import Profile

    return Profile.parse(text)


def _batch_triple(text: str) -> tuple[int, int, int]:
    try:
        b = tuple(int(v) for v in text.split(","))
    except ValueError:
        b = ()
    if len(b) != 3 or min(b) < 1:
        raise RnDeployError(f"{text!r}: use MIN,OPT,MAX batch sizes, e.g. 1,8,32")
    return b  # type: ignore[return-value]


def _hw_list(text: str) -> list[tuple[int, int]]:
    try:
        return [parse_hw(s) for s in text.split(",") if s.strip()]
    except click.BadParameter as e:
        raise RnDeployError(e.message) from None


def _backend_list(text: str) -> list[str]:
    from ..names import VALIDATE_BACKENDS as BACKEND_NAMES  # not ..validate: that imports torch

    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKEND_NAMES]
    if unknown or not names:
        raise RnDeployError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKEND_NAMES)}")
    return names


SHAPE = LibraryValueType("NxCxHxW", _shape)
PROFILE = LibraryValueType("MIN:OPT:MAX", _profile)
BATCH_TRIPLE = LibraryValueType("MIN,OPT,MAX", _batch_triple)
HW_LIST = LibraryValueType("H|HxW,...", _hw_list)
BACKEND_LIST = LibraryValueType("BACKEND,...", _backend_list)
# rn_deploy.datasets' names, then its older aliases (that package's names are torch-free)
DATASET_NAMES = [*DATASETS, *ALIASES]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RnDeployError(f"{text!r}: use comma-separated numbers, e.g. 0.485,0.456,0.406") from None


FLOATS = LibraryValueType("A,B,C", _floats)


def _positive_floats(text: str) -> list[float]:
    out = _floats(text)
    if not out or not all(0 < v < float("inf") for v in out):
        raise RnDeployError(f"{text!r}: use positive numbers separated by commas, e.g. 0.229,0.224,0.225")
    return out


def _positive_ints(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RnDeployError(f"{text!r}: use comma-separated integers, e.g. 1,8") from None
    if not out or min(out) < 1:
        raise RnDeployError(f"{text!r}: use positive integers separated by commas, e.g. 1,8")
    return out


def _finite_points(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v < float("inf"):
        raise RnDeployError(f"{text!r}: use a finite number of points >= 0, e.g. 1.0")
    return v


def _model_name(text: str) -> str:
    from ..names import check_model_name

    check_model_name(text)
    return text


def _tolerance(text: str) -> str:
    from ..validate import parse_tolerance_overrides  # imports torch: only when --tol is given

    parse_tolerance_overrides([text])
    return text


def _eval_backends(text: str) -> list[str]:
    from ..evaluate.artifacts import BACKENDS  # imports torch: only when --backends is given

    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise RnDeployError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}")
    return names


def _arch(text: str) -> str:
    from ..modeltable import MODELS  # the registry's names without importing it (torch)

    if text not in MODELS:
        raise RnDeployError(f"unknown architecture {text!r}; known: {', '.join(MODELS)} (see `rn-deploy models`)")
    return text


ARCH = LibraryValueType("ARCH", _arch)
POSITIVE_FLOATS = LibraryValueType("A,B,C", _positive_floats)
POSITIVE_INTS = LibraryValueType("N,N,...", _positive_ints)
POINTS = LibraryValueType("POINTS", _finite_points)
MODEL_NAME = LibraryValueType("NAME", _model_name)
TOLERANCE = LibraryValueType("[PREC.]METRIC=VALUE", _tolerance)
EVAL_BACKENDS = LibraryValueType("BACKEND,...", _eval_backends)
PORT = click.IntRange(1, 65535)


def split_ints(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use comma-separated integers", param_hint=what) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: use positive integers", param_hint=what)
    return out


def _warn(msg: str) -> None:
    click.echo(msg, err=True)


def apply_tuned(model: Path, keys: tuple[str, ...]) -> dict[str, int]:
    """The saved tuned values (MODEL.serving.json) for the options among ``keys`` left at their defaults on this command line."""
    from click.core import ParameterSource

    from ..tuned import load_tuned, tuned_path

    ctx = click.get_current_context()
    if not model.is_file():
        return {}
    saved = load_tuned(model, warn=_warn)
    if not saved:
        return {}
    used = {k: saved[k] for k in keys if ctx.get_parameter_source(k) in (ParameterSource.DEFAULT, None)}
    if used:
        _warn(f"using the tuned setting of {tuned_path(model)}: {', '.join(f'{k}={v}' for k, v in used.items())}")
    return used
