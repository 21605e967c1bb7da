"""Tracing to ONNX: the dynamo exporter with dynamic axes, the metadata an export carries, and the staged write."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .. import names
from .._io import set_default_mode
from ..checkpoint import FORMAT, ModelConfig, recorded_dataset, weights_sha256
from ..errors import ExportError

# Above this many bytes of weights, store them in MODEL.onnx.data (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
MAX_DIM = 8192
MIN_OPSET = 18  # the dynamo exporter writes nothing older (its down-conversion fails on ReduceMean's axes input)


def provenance(model: nn.Module, train: dict[str, Any]) -> dict[str, str]:
    """The metadata that ties an artifact to its checkpoint: the weights' digest and, when recorded, the dataset."""
    from ..onnxfile import DATASET_KEY, SOURCE_KEY

    keys = {SOURCE_KEY: weights_sha256(model)}
    dataset = recorded_dataset(train)
    if dataset:
        from rn_deploy.datasets import ALIASES

        keys[DATASET_KEY] = ALIASES.get(dataset, dataset)
    return keys


def lowest_ir(opset: int) -> int:
    """The lowest ONNX IR version that can carry ``opset`` (the first ONNX release implementing it)."""
    return next((ir for _rel, ir, op, *_ in onnx.helper.VERSION_TABLE if op >= opset), onnx.IR_VERSION)


def export_metadata(config: ModelConfig, precision: str, dynamic: bool, min_size: int, runtimes: str,
                    source: dict[str, str]) -> dict[str, str]:
    """An export's metadata_props: provenance, model config, precision, dynamic axes, minimum size, loading runtimes."""
    return {
        **source,
        "rn_deploy.format": FORMAT,
        "rn_deploy.config": json.dumps(config.to_dict()),
        "rn_deploy.precision": precision,
        "rn_deploy.dynamic": json.dumps(dynamic),
        "rn_deploy.min_size": str(min_size),
        "rn_deploy.runtimes": runtimes,
        "torch_version": torch.__version__,
        "arch": config.arch,
        "class_names": json.dumps(config.class_names),
        "mean": json.dumps(config.mean),
        "std": json.dumps(config.std),
        "in_channels": str(config.in_channels),
        "image_size": json.dumps(config.image_size),
    }


def torch_export(model: nn.Module, sample: torch.Tensor, path: Path, opset: int | None, dynamic: bool, min_size: int) -> str:
    """Trace ``model`` on ``sample`` into ``path`` with the dynamo exporter; return which exporter wrote it."""
    kwargs: dict[str, Any] = {}
    if dynamic:
        b = torch.export.Dim(names.BATCH, min=1, max=MAX_DIM)
        h = torch.export.Dim(names.HEIGHT, min=min_size, max=MAX_DIM)
        w = torch.export.Dim(names.WIDTH, min=min_size, max=MAX_DIM)
        kwargs["dynamic_shapes"] = ({0: b, 2: h, 3: w},)
    else:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim(names.BATCH, min=1, max=MAX_DIM)},)
    if opset is not None:
        kwargs["opset_version"] = opset
    chatter = io.StringIO()
    try:
        # The exporter prints progress on stdout; keep stdout clean for --json.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), str(path), input_names=[names.INPUT], output_names=[names.OUTPUT],
                              dynamo=True, external_data=True, verbose=False, **kwargs)
    except OSError as e:  # the exporter's own file writes (disk full, quota): the output folder is the problem
        raise ExportError(f"{path.parent.parent}: write failed while exporting ({e.strerror or e}); "
                          "check free space and permissions") from None
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types; report one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {msg[:300]}") from None
    return f"torch.onnx dynamo (torch {torch.__version__})"


def explicit_pool_pads(model: onnx.ModelProto) -> int:
    """Rewrite ``AveragePool(ceil_mode=1)`` with kernel == stride as ``pads`` end ``stride-1``, ``count_include_pad=0``,
    ``ceil_mode=0``: the same output size (ceil(H/s)) and divisors, at every input size.

    ResBlock's ``AvgPool2d(2, ceil_mode=True)`` exports with ``ceil_mode=1, count_include_pad=1``. At opset <= 18
    ONNX Runtime 1.23 (the newest with Python 3.10 wheels, i.e. JetPack 6) counts the window's overhang in the divisor
    (rel L2 0.06-0.2 against PyTorch at odd sizes); 1.32 does not. The explicit form means the same to both.
    Returns the number of nodes rewritten.
    """
    n = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        kernel, strides = list(a.get("kernel_shape", [])), list(a.get("strides", []))
        if (a.get("ceil_mode", 0) != 1 or kernel != strides or any(a.get("pads", [0])) or a.get("auto_pad", b"NOTSET") != b"NOTSET"
                or any(d != 1 for d in a.get("dilations", [1]))):
            continue
        del node.attribute[:]
        node.attribute.extend([
            onnx.helper.make_attribute("kernel_shape", kernel), onnx.helper.make_attribute("strides", strides),
            onnx.helper.make_attribute("pads", [0] * len(kernel) + [s - 1 for s in strides]),
            onnx.helper.make_attribute("ceil_mode", 0), onnx.helper.make_attribute("count_include_pad", 0),
        ])
        n += 1
    return n


@contextlib.contextmanager
def staged_onnx(model: onnx.ModelProto, dest: Path, external: bool | None) -> Iterator[tuple[Path, bool]]:
    """Write ``model`` into a temp folder beside ``dest``; on clean exit move it (and its data) into place.

    Yields the staged ``.onnx`` path and whether weights are external. Verification runs on the
    staged file, so a model that fails it is never written under ``dest``.
    """
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if external is None:
        external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp_onnx = tmpdir / dest.name
        if external:
            onnx.save_model(model, str(tmp_onnx), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp_onnx))
        try:
            onnx.checker.check_model(str(tmp_onnx), full_check=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{dest}: the exported graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
        yield tmp_onnx, external
        # Data first: the .onnx never points at a data file that is not there yet.
        if external:
            set_default_mode(tmpdir / data_name)  # onnx writes it 0600; it travels with the .onnx, so same mode
            os.replace(tmpdir / data_name, dest.parent / data_name)
        else:
            (dest.parent / data_name).unlink(missing_ok=True)  # stale data from an earlier export
        os.replace(tmp_onnx, dest)
    except OSError as e:
        raise ExportError(f"{dest}: cannot write ({e.strerror or e}); check free space and permissions") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
