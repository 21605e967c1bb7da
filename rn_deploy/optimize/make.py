"""Making the candidates' artifacts with the toolkit's own steps (export, export --fp16, quantize, build), and their digests."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, sha256_file
from ..checkpoint import ModelConfig
from ..errors import RnDeployError
from ..log import Log
from .candidates import ARTIFACT_FILES, RTX_TARGETS


@dataclass
class Source:
    """The model optimize starts from: a checkpoint (the FP32 reference) or an FP32 ONNX with rn-deploy metadata."""

    path: Path
    kind: str  # "checkpoint" | "onnx"
    config: ModelConfig
    sha256: str
    dataset: str
    data: str | None
    seed: int


def read_source(path: Path, dataset: str | None, data: str | None) -> Source:
    """Read MODEL and the dataset it is judged on (the recorded one by default; another one is refused by name)."""
    from ..filekind import expect

    if not path.exists():
        raise RnDeployError(f"{path}: no such file; pass a checkpoint (model.pt) or an FP32 ONNX from `rn-deploy export`/`import`")
    kind = expect(path, "checkpoint", "onnx").kind
    if kind == "onnx" or path.suffix == ".onnx":
        from ..datasets import canonical_dataset
        from ..onnxfile import DATASET_KEY, check_onnx_file, metadata_value, onnx_config, weights_fp16

        m = check_onnx_file(path)
        cfg = onnx_config(m)
        if cfg is None:
            raise RnDeployError(f"{path}: no rn-deploy metadata (class names, mean/std, size); bring it in with `rn-deploy import`")
        if weights_fp16(m) or any(n.op_type == "QuantizeLinear" for n in m.graph.node):
            raise RnDeployError(f"{path}: not an FP32 ONNX; pass the FP32 ONNX (or the checkpoint) it was made from")
        recorded = metadata_value(m, DATASET_KEY)
        if dataset is None and recorded is None:
            raise RnDeployError(f"{path}: records no training dataset; pass --dataset fashion-mnist|mnist|imagefolder")
        chosen = canonical_dataset(dataset or recorded or "")
        if recorded and canonical_dataset(recorded) != chosen:
            raise RnDeployError(f"{path}: trained on {canonical_dataset(recorded)}, not {chosen}; omit --dataset")
        return Source(path, "onnx", cfg, sha256_file(path), chosen, data, 0)
    from ..checkpoint import read_checkpoint, recorded_eval
    from ..evaluate.recorded import recorded_dataset

    raw = read_checkpoint(path)
    train = raw.get("train") or {}
    ds, folder = recorded_dataset(path, train, dataset, data)
    seed = int(recorded_eval(train).get("seed", 0) or 0)
    return Source(path, "checkpoint", ModelConfig.from_dict(raw["config"]), sha256_file(path), ds,
                  str(folder) if folder is not None else None, seed)


def digest(payload: dict[str, Any]) -> str:
    """The sha256 of a JSON-able description of a step's inputs (what the cache compares)."""
    from ..version import __version__

    return hashlib.sha256(json.dumps({**payload, "rn_deploy": __version__}, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class MakeOptions:
    """What the artifacts depend on besides the model: the INT8 gate's data and the engines' shapes."""

    limit: int | None = None
    max_drop: float = 1.0
    calib_size: int = 512
    sizes: tuple[int, ...] = ()
    max_batch: int = 32

    def params(self, recipe: str) -> dict[str, Any]:
        if recipe == "onnx-int8":
            return {"limit": self.limit, "max_drop": self.max_drop, "calib_size": self.calib_size}
        if recipe.startswith("tensorrt"):
            return {"sizes": list(self.sizes), "max_batch": self.max_batch}
        return {}


def recipe_inputs(recipe: str, src: Source, opts: MakeOptions, fp32_sha: str | None) -> str:
    """The digest of everything ``recipe``'s artifact depends on."""
    deps = fp32_sha if recipe in ("onnx-int8", "tensorrt-rtx-fp16", "tensorrt-fp16") or src.kind == "onnx" else None
    return digest({"recipe": recipe, "source": src.sha256, "fp32": deps, "dataset": src.dataset, "data": src.data,
                   "seed": src.seed, **opts.params(recipe)})


def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file and the external-data files it names (kept under their names, beside it)."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in sorted(locations):
        with atomic_path(dst.parent / loc) as tmp:
            shutil.copyfile(src.parent / loc, tmp)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _fp16_from_onnx(src: Path, dst: Path, tool: str) -> None:
    import onnx

    from ..export import convert_fp16

    m = convert_fp16(onnx.load(str(src)), keep_io_fp32=True, tool=tool)
    props = {p.key: p.value for p in m.metadata_props}
    props.update({"rn_deploy.precision": "fp16", "rn_deploy.fp16_tool": tool})
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    with atomic_path(dst) as tmp:
        onnx.save_model(m, str(tmp))


def make_artifact(recipe: str, src: Source, folder: Path, opts: MakeOptions, log: Log) -> dict[str, Any]:
    """Make ``recipe``'s artifact in ``folder`` with the toolkit's own step; return its notes and gate failures.

    FP16 files are written without export's random-input check: optimize judges every candidate on real images
    (parity, accuracy and agreement at each size), and a file that fails is kept in the table with the reason.
    """
    path = folder / ARTIFACT_FILES[recipe]
    fp32 = folder / ARTIFACT_FILES["onnx-fp32"]
    notes: list[str] = []
    failures: list[str] = []
    if recipe == "onnx-fp32":
        if src.kind == "onnx":
            _copy_onnx(src.path, path)
            notes.append(f"copied from {src.path}")
        else:
            from ..export import export_onnx

            res = export_onnx(src.path, path, log=log)
            notes.append(f"export: verified against PyTorch at {len(res.verification)} shapes")
    elif recipe in ("onnx-fp16", "onnx-fp16-autocast"):
        tool = "autocast" if recipe.endswith("autocast") else "converter"
        if src.kind == "onnx":
            _fp16_from_onnx(fp32, path, tool)
        else:
            from ..export import export_onnx

            export_onnx(src.path, path, fp16=True, fp16_tool=tool, verify=False, log=log)
        notes.append(f"FP16 by {'ModelOpt AutoCast' if tool == 'autocast' else 'onnxconverter-common'}, FP32 I/O")
    elif recipe == "onnx-int8":
        from ..quantize import QuantizeOptions, quantize

        q = quantize(fp32, path, QuantizeOptions(calib=src.dataset, data=src.data, calib_size=opts.calib_size,
                                                 max_drop=opts.max_drop, force=True, eval_limit=opts.limit, seed=src.seed), log=log)
        rung = q.rungs[q.chosen or 0]
        notes.append(f"quantize: rung {(q.chosen or 0) + 1} of {len(q.rungs)} ({rung.recipe.label()}), drop {rung.drop_pts:+.2f} pt")
        if not q.passed:
            failures.append(f"quantize gate: no rung kept top-1 within {opts.max_drop:g} pt of FP32 "
                            f"(best {rung.drop_pts:+.2f} pt, {rung.recipe.label()})")
    elif recipe in ("tensorrt-rtx-fp16", "tensorrt-fp16"):
        from ..builder import Profile, build_engine

        backend = recipe.removesuffix("-fp16")
        c, (h, w) = src.config.in_channels, src.config.image_size
        lo, hi = min(opts.sizes or (min(h, w),)), max(opts.sizes or (max(h, w),))
        prof = Profile((1, c, lo, lo), (min(8, opts.max_batch), c, h, w), (opts.max_batch, c, max(hi, h), max(hi, w)))
        gpu = torch.cuda.is_available()
        build_engine(fp32, path, backend=backend, precision="fp16", profiles=[prof],
                     targets=None if gpu or backend == "tensorrt" else list(RTX_TARGETS), log=log)
        notes.append(f"built for {'this GPU' if gpu else ','.join(RTX_TARGETS)}, profile {lo}..{max(hi, h)} px, batch 1..{opts.max_batch}")
    else:
        raise RnDeployError(f"unknown recipe {recipe!r}")
    if not path.exists():
        raise RnDeployError(f"{path}: {recipe} wrote nothing")
    return {"notes": notes, "failures": failures, "bytes": artifact_bytes(path)}


def artifact_bytes(path: Path) -> int:
    """The artifact's size on disk with its external-data files (what a deployment copies)."""
    total = path.stat().st_size
    if path.suffix == ".onnx":
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        for loc in {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}:
            if (path.parent / loc).exists():
                total += (path.parent / loc).stat().st_size
    return total
