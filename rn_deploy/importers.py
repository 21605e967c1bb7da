"""Bring a ResNet trained elsewhere (fastai ``xresnet*``, timm ``resnet*d`` / ``resnet*``, torchvision ``resnet*``) into ``rn-deploy/1``.

The source is read without running any of its code (``torch.load(weights_only=True)`` or safetensors), its
architecture is recognised from the state_dict's keys and shapes, and every key is renamed onto a registered
architecture by an explicit table:

- fastai ``xresnet18/34/50/101/152`` and timm ``resnet18d/34d/50d/101d/152d`` are the bag-of-tricks ResNet (ResNet-D)
  of fastbook chapter 14, which is our ``resnet18``...``resnet152``: stem ConvLayers 32/32/64 and a 3x3/2 max-pool,
  ``relu(convs(x) + idconv(avgpool(x)))`` with a 2x2 ceil-mode average pool before the 1x1 shortcut conv, the stride on
  the 3x3 conv of a bottleneck, a global average pool and one linear layer;
- torchvision ``resnet*`` and timm's plain ``resnet*`` (7x7 stem, strided 1x1 shortcut) are ``tv_resnet*``: the same keys.

Anything else (fastai's ``vision_learner`` head, timm's ``resnet*c``/``resnet*t`` stems, SE or widened variants) is
refused in one line naming what differs, never approximated.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._io import sha256_file
from .checkpoint import ModelConfig, check_state_dict, save_checkpoint, torch_load_reason
from .errors import CheckpointError, ModelError
from .filekind import sniff
from .models import RESNETS, TV_RESNETS

LIBRARIES = ("fastai", "timm", "torchvision")
KNOWN = ("fastai xresnet18/34/50/101/152 (Learner(dls, xresnet50(n_out=N))), timm resnet18d..152d or resnet18..152, "
         "torchvision resnet18..152")
# Prefixes wrappers add to every key: DDP / DataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class _Inert:
    """Stands in for a class a weights file names but does not need (fastai's ``L`` in an optimiser state): built
    empty, never calling the foreign class's code."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __setstate__(self, _state: Any) -> None:
        pass


# Classes a learn.save() file names outside its weights (the optimiser's hyper-parameters): loaded as _Inert.
_INERT_GLOBALS = ("fastcore.foundation.L",)


@dataclass(frozen=True)
class Recognised:
    """What a foreign state_dict is.

    Attributes:
        library: ``fastai``, ``timm`` or ``torchvision`` (``timm/torchvision`` for plain ResNets: the same keys).
        source_arch: the name in its library, e.g. ``xresnet50``, ``resnet50d``.
        arch: our registry name it maps onto.
        n_classes: outputs of its last linear layer.
        in_channels: channels of its first convolution.
    """

    library: str
    source_arch: str
    arch: str
    n_classes: int
    in_channels: int


def _tensor(state: dict[str, Any], key: str) -> torch.Tensor:
    v = state.get(key)
    if not isinstance(v, torch.Tensor):
        raise CheckpointError(f"state_dict has no tensor {key!r}")
    return v


def _arch_for(layers: tuple[int, ...], expansion: int, table: dict[str, tuple[tuple[int, ...], int]]) -> str | None:
    return next((name for name, spec in table.items() if spec == (layers, expansion)), None)


def _depth(layers: tuple[int, ...], expansion: int) -> int | None:
    return next((d for d, spec in TV_RESNETS.items() if spec == (layers, expansion)), None)


def _blocks(keys: Sequence[str], pattern: str) -> tuple[int, ...]:
    """Blocks per group from keys matching ``pattern`` (groups ``g``, block ``b``), in group order."""
    seen: dict[int, set[int]] = {}
    for k in keys:
        m = re.fullmatch(pattern, k)
        if m:
            seen.setdefault(int(m["g"]), set()).add(int(m["b"]))
    return tuple(len(seen[g]) for g in sorted(seen))


# ---------------------------------------------------------------------------------------------------------------------
# Key tables: source key -> our key (None: not ours to map)
# ---------------------------------------------------------------------------------------------------------------------


def fastai_key(key: str, n_groups: int = 4) -> str:
    """fastai ``XResNet`` (an ``nn.Sequential``: stem 0-2, max-pool 3, groups 4..7, pool, flatten, dropout, linear 11)
    -> our ``ResNet`` (``features`` + ``head``)."""
    idx, _, rest = key.partition(".")
    i = int(idx)
    linear = 4 + n_groups + 3
    if i < 3:
        return f"features.{i}.{rest}"
    if 4 <= i < 4 + n_groups:
        block, _, r = rest.partition(".")
        if r.startswith("convpath."):
            return f"features.{i}.{block}.convs.{r.removeprefix('convpath.')}"
        m = re.fullmatch(r"idpath\.(\d+)\.(.+)", r)
        if m:  # idpath is [ConvLayer] (stride 1) or [AvgPool, ConvLayer] (stride 2, pool first): the ConvLayer is ours
            return f"features.{i}.{block}.idconv.{m[2]}"
    if i == linear:
        return f"head.2.{rest}"
    raise CheckpointError(f"fastai key {key!r} has no place in the ResNet")


_TIMM_D_STEM = {"conv1.0": "features.0.0", "conv1.1": "features.0.1", "conv1.3": "features.1.0", "conv1.4": "features.1.1",
                "conv1.6": "features.2.0", "bn1": "features.2.1", "fc": "head.2"}


def timm_d_key(key: str) -> str:
    """timm ResNet-D (``resnet*d``: deep stem, ``avg_down``) -> our ``ResNet``."""
    for src, dst in _TIMM_D_STEM.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", key)
    if m:
        return f"features.{3 + int(m[1])}.{m[2]}.convs.{int(m[4]) - 1}.{0 if m[3] == 'conv' else 1}.{m[5]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([12])\.(.+)", key)  # downsample = [pool, conv, bn]
    if m:
        return f"features.{3 + int(m[1])}.{m[2]}.idconv.{int(m[3]) - 1}.{m[4]}"
    raise CheckpointError(f"timm key {key!r} has no place in the ResNet-D")


# ---------------------------------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------------------------------


def recognise(state: dict[str, Any]) -> tuple[Recognised, Callable[[str], str]]:
    """Which library and architecture wrote ``state``, and the function renaming its keys onto ours.

    Raises:
        CheckpointError: a layout none of :data:`KNOWN` writes, with what was found.
    """
    keys = list(state)
    if "0.0.weight" in state and any(k.startswith("4.0.convpath.") for k in keys):
        return _recognise_fastai(state, keys)
    if "conv1.0.weight" in state and "layer1.0.conv1.weight" in state:
        return _recognise_timm_d(state, keys)
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state and "fc.weight" in state:
        layers = _blocks(keys, r"layer(?P<g>\d)\.(?P<b>\d+)\.conv1\.weight")
        exp = 4 if "layer1.0.conv3.weight" in state else 1
        depth = _depth(layers, exp)
        if depth is None:
            raise CheckpointError(f"a torchvision-style ResNet with blocks {list(layers)} ({'bottleneck' if exp == 4 else 'basic'}); "
                                  f"known depths: {sorted(TV_RESNETS)}")
        rec = Recognised("timm/torchvision", f"resnet{depth}", f"tv_resnet{depth}", int(_tensor(state, "fc.weight").shape[0]),
                         int(_tensor(state, "conv1.weight").shape[1]))
        return rec, lambda k: k
    if "0.0.0.weight" in state and any(re.match(r"1\.\d+\.", k) for k in keys):
        raise CheckpointError("a fastai vision_learner model (a cut body + fastai's pooled head with BatchNorm/Dropout/two "
                              "Linear layers) has no equivalent here; train with Learner(dls, xresnet50(n_out=N)) or import "
                              "the body's library weights")
    sample = ", ".join(keys[:3]) or "none"
    raise CheckpointError(f"not a ResNet state_dict rn-deploy knows (first keys: {sample}); it imports {KNOWN}")


def _recognise_fastai(state: dict[str, Any], keys: list[str]) -> tuple[Recognised, Callable[[str], str]]:
    layers = _blocks(keys, r"(?P<g>\d+)\.(?P<b>\d+)\.convpath\.0\.0\.weight")
    exp = 4 if any(re.fullmatch(r"4\.0\.convpath\.2\.0\.weight", k) for k in keys) else 1
    if len(layers) != 4:
        raise CheckpointError(f"a fastai XResNet with {len(layers)} groups (xresnet*_deep/_deeper) has no equivalent here; "
                              "the registry has the 4-group xresnet18..152")
    if any(".convpath." in k and re.search(r"convpath\.\d+\.(fc|conv)\.", k) for k in keys):
        raise CheckpointError("a fastai XResNet with SE/attention modules (xse_*) has no equivalent here")
    stem = [int(_tensor(state, f"{i}.0.weight").shape[0]) for i in range(3)]
    if stem != [32, 32, 64]:
        raise CheckpointError(f"a fastai XResNet with stem widths {stem} (stem_szs); the registry's has 32/32/64")
    arch = _arch_for(layers, exp, RESNETS)
    if arch is None:
        raise CheckpointError(f"a fastai XResNet with blocks {list(layers)} ({'bottleneck' if exp == 4 else 'basic'}) has no "
                              f"equivalent here; known: {', '.join(RESNETS)}")
    linear = max(int(k.split(".")[0]) for k in keys if re.fullmatch(r"\d+\.weight", k))
    depth = _depth(layers, exp)
    rec = Recognised("fastai", f"xresnet{depth}" if depth else f"XResNet{list(layers)}", arch,
                     int(_tensor(state, f"{linear}.weight").shape[0]), int(_tensor(state, "0.0.weight").shape[1]))
    if linear != 11:
        raise CheckpointError(f"a fastai XResNet whose linear layer is module {linear}, not 11; a changed head has no equivalent here")
    return rec, fastai_key


def _recognise_timm_d(state: dict[str, Any], keys: list[str]) -> tuple[Recognised, Callable[[str], str]]:
    layers = _blocks(keys, r"layer(?P<g>\d)\.(?P<b>\d+)\.conv1\.weight")
    exp = 4 if "layer1.0.conv3.weight" in state else 1
    stem = [int(_tensor(state, f"conv1.{i}.weight").shape[0]) for i in (0, 3, 6)]
    if stem != [32, 32, 64]:
        raise CheckpointError(f"a timm deep-stem ResNet with stem widths {stem} (resnet*t?); the registry's ResNet-D has 32/32/64")
    if any(re.fullmatch(r"layer\d\.\d+\.downsample\.0\.weight", k) for k in keys):
        raise CheckpointError("a timm deep-stem ResNet with a strided 1x1 shortcut (resnet*c, no avg_down) has no equivalent "
                              "here; resnet*d (average-pool shortcut) has")
    if any(re.search(r"\.(se|attn|aa)\.", k) for k in keys):
        raise CheckpointError("a timm ResNet-D with attention/SE/anti-aliasing modules has no equivalent here")
    arch = _arch_for(layers, exp, RESNETS)
    if arch is None:
        raise CheckpointError(f"a timm ResNet-D with blocks {list(layers)} has no equivalent here; known: {', '.join(RESNETS)}")
    depth = _depth(layers, exp)
    rec = Recognised("timm", f"resnet{depth}d" if depth else arch, arch, int(_tensor(state, "fc.weight").shape[0]),
                     int(_tensor(state, "conv1.0.weight").shape[1]))
    return rec, timm_d_key


def convert(state: dict[str, Any]) -> tuple[Recognised, dict[str, torch.Tensor]]:
    """``state`` recognised and renamed onto our registry (tensors unchanged)."""
    rec, rename = recognise(state)
    return rec, {rename(k): v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Reading a source file without running its code
# ---------------------------------------------------------------------------------------------------------------------


def _strip_wrappers(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _unwrap(raw: Any, path: Path) -> dict[str, Any]:
    """The state_dict inside what ``torch.load`` returned: bare, fastai ``learn.save`` ({'model', 'opt'}) or a
    training checkpoint's ``state_dict``."""
    if isinstance(raw, dict) and raw.get("format") == "rn-deploy/1":
        raise CheckpointError(f"{path}: already an rn-deploy checkpoint; use it as it is")
    if isinstance(raw, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: not a state_dict (a dict of tensors, found {type(raw).__name__}); save one with "
                              "torch.save(model.state_dict(), PATH)")
    return _strip_wrappers({str(k): v for k, v in raw.items()})


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A foreign weights file (``torch.save`` / fastai ``learn.save`` / ``.safetensors``) as a flat state_dict.

    Raises:
        CheckpointError: missing, unreadable, or a pickle that needs code to load (e.g. fastai ``learn.export()``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass a state_dict (.pth/.pt/.safetensors) or a fastai learn.save() file")
    if path.suffix == ".safetensors" or sniff(path).kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _strip_wrappers(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:160]})") from None
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in _INERT_GLOBALS]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "fastai" in str(e) or "fastcore" in str(e):
            raise CheckpointError(f"{path}: a fastai learn.export() pickle: reading it runs its code, so it is not read; in fastai "
                                  "save the weights with learn.save('NAME') or torch.save(learn.model.state_dict(), PATH)") from None
        raise CheckpointError(f"{path}: refused: the file holds Python objects only a full unpickle could build "
                              f"({torch_load_reason(e)[:160]}); nothing was executed. Save model.state_dict() instead") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({torch_load_reason(e)[:160]})") from None
    return _unwrap(raw, path)


# ---------------------------------------------------------------------------------------------------------------------
# Metadata: flags, a small JSON, or what the source carries
# ---------------------------------------------------------------------------------------------------------------------


def read_meta(path: str | Path) -> dict[str, Any]:
    """Class names, mean/std and image size from a small JSON: rn-deploy's own keys (``class_names``, ``mean``, ``std``,
    ``image_size``, ``presize``) or a timm/Hugging Face ``config.json`` (``label_names``, ``pretrained_cfg.mean/std/input_size``)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e}); write {{\"class_names\": [...], \"mean\": [...], "
                              "\"std\": [...], \"image_size\": [H, W]}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object with class_names/mean/std/image_size")
    pretrained = d.get("pretrained_cfg")
    cfg: dict[str, Any] = pretrained if isinstance(pretrained, dict) else {}
    out: dict[str, Any] = {}
    names = d.get("class_names", d.get("label_names"))
    if names is not None:
        out["class_names"] = names
    for key in ("mean", "std", "presize"):
        if key in d or key in cfg:
            out[key] = d.get(key, cfg.get(key))
    size = d.get("image_size", cfg.get("input_size"))
    if size is not None:
        out["image_size"] = size[-2:] if isinstance(size, list) and len(size) == 3 else size
    if "architecture" in d:
        out["architecture"] = d["architecture"]
    return out


def read_class_names(text: str) -> list[str]:
    """``--classes``: a file with one name per line, or a comma list."""
    p = Path(text)
    if p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass
class ImportResult:
    """What ``import_weights`` wrote."""

    checkpoint: str
    source: str
    source_sha256: str
    library: str
    source_arch: str
    arch: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def import_weights(source: str | Path, out: str | Path, *, class_names: Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   image_size: Sequence[int] | int | None = None, meta: str | Path | None = None) -> ImportResult:
    """Read a foreign ResNet's weights, rename them onto a registered architecture and write an ``rn-deploy/1`` checkpoint.

    Args:
        source: the weights file (``torch.save(model.state_dict())``, fastai ``learn.save``, ``.safetensors``).
        out: the checkpoint to write (``model.pt``).
        class_names: one name per output; None: from ``meta`` (or a ``config.json`` beside a ``.safetensors``), else 0..N-1.
        mean, std: per-channel normalisation of pixels in [0, 1]; None: from ``meta``, else ImageNet's (all three libraries' default).
        image_size: (H, W) the model was trained at; None: from ``meta``, else 224.
        meta: a JSON file with any of those (see :func:`read_meta`); explicit arguments win.
    """
    source = Path(source)
    state = read_state_dict(source)
    try:
        rec, ours = convert(state)
    except CheckpointError as e:  # recognition judges keys and shapes, not files: the user needs to know which file
        raise CheckpointError(f"{source}: {e}") from None
    found: dict[str, Any] = {}
    beside = source.with_name("config.json")
    if meta is None and source.suffix == ".safetensors" and beside.is_file():
        meta = beside
    if meta is not None:
        found = read_meta(meta)
        named = found.pop("architecture", None)
        if isinstance(named, str) and named not in (rec.source_arch, rec.arch):
            raise CheckpointError(f"{meta}: names architecture {named!r} but {source} holds a {rec.library} {rec.source_arch}")
    given = {"class_names": list(class_names) if class_names else None, "mean": list(mean) if mean else None,
             "std": list(std) if std else None, "image_size": image_size}
    settings = {**found, **{k: v for k, v in given.items() if v is not None}}
    try:
        config = ModelConfig(arch=rec.arch, n_classes=rec.n_classes, in_channels=rec.in_channels, **settings)
    except (ModelError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e} (the weights have {rec.n_classes} outputs and {rec.in_channels} input channels)") from None
    model = config.build()
    check_state_dict(source, rec.arch, model, ours)
    model.load_state_dict(ours)
    digest = sha256_file(source)
    out = Path(out)
    save_checkpoint(out, model, config, {"imported_from": str(source), "source_sha256": digest, "library": rec.library,
                                         "source_arch": rec.source_arch})
    return ImportResult(checkpoint=str(out), source=str(source), source_sha256=digest, library=rec.library,
                        source_arch=rec.source_arch, arch=rec.arch, config=config.to_dict())
