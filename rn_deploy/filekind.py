"""What a file is, told from its first bytes, so a wrong file gets the right words.

Every entry point that reads a model file (``export``, ``build``, ``validate``, ``inspect``,
``export-triton``, ``Engine.load``) calls :func:`expect` before handing the file to PyTorch, ONNX
or TensorRT. Those libraries, given the wrong file, answer with parser errors (or, for
``torch.load``, with advice to unpickle it unsafely); :func:`expect` names what the file is
instead and which command takes it::

    model.onnx: an ONNX model (by its first bytes), not a PyTorch checkpoint (model.pt);
    ONNX models go to `rn-deploy build`, `validate --onnx`, `export-triton` or Engine.load

Only kinds recognised with confidence are refused; a file the sniffer cannot place ("unknown")
goes on to the real loader, whose own error then applies.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import RnDeployError

HEAD_BYTES = 4096
ENGINE_MAGICS = {b"ftrt": "a TensorRT engine", b"ptrt": "a TensorRT engine", b"vtrt": "a TensorRT-RTX engine"}
MANIFEST_FORMAT_PREFIX = "rn-deploy-engine/"

# ModelProto's fields as protobuf tags, in the order they are serialised: ir_version (1, varint)
# comes first, then producer_name (2), producer_version (3), domain (4), model_version (5),
# doc_string (6), graph (7), opset_import (8), metadata_props (14).
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}

_GOES_TO = {
    "checkpoint": "checkpoints go to `rn-deploy export` (which writes the ONNX) or `validate --checkpoint`",
    "pickle": "checkpoints go to `rn-deploy export` (which writes the ONNX) or `validate --checkpoint`",
    "onnx": "ONNX models go to `rn-deploy build`, `validate --onnx`, `export-triton` or Engine.load",
    "engine": "engines go to `rn-deploy inspect`, `validate --engine`, `export-triton` or Engine.load",
    "image": "images go in a folder passed to `validate --images`, or to Engine.predict as arrays",
    "zip": "unpack it and pass the file inside",
    "gzip": "decompress it first (gunzip)",
    "safetensors": "bring the weights in with `rn-deploy import FILE -o exports/NAME/model.pt` (fastai, timm, torchvision ResNets)",
    "json": "the only JSON input is `build --sizes-from`",
    "text": "rn-deploy reads binary model files",
    "empty": "an interrupted copy or write? copy or write it again",
    "folder": "pass the file inside it",
}

WANTED = {
    "checkpoint": "a PyTorch checkpoint (model.pt)",
    "onnx": "an ONNX model",
    "engine": "a TensorRT engine",
    "weights": "model weights (a state_dict, .safetensors or fastai learn.save file)",
}

# Kinds each wanted kind lets through to its loader (``unknown``: the loader's own error applies).
_ACCEPTS = {
    "checkpoint": {"checkpoint", "pickle", "unknown"},
    "onnx": {"onnx", "unknown"},
    "engine": {"engine", "unknown"},
    "weights": {"checkpoint", "pickle", "safetensors", "unknown"},
}


@dataclass(frozen=True)
class FileKind:
    """What :func:`sniff` found.

    Attributes:
        kind: ``checkpoint``, ``pickle``, ``zip``, ``onnx``, ``engine``, ``manifest``, ``image``,
            ``gzip``, ``safetensors``, ``json``, ``text``, ``empty``, ``folder``, ``missing`` or
            ``unknown``.
        description: the kind in words, e.g. "a PNG image".
    """

    kind: str
    description: str

    def goes_to(self, path: Path) -> str:
        """Which command takes a file of this kind (for a manifest: the engine beside it)."""
        if self.kind == "manifest":
            return f"pass the engine beside it ({path.with_suffix('')})" if path.suffix == ".json" else "pass the engine it describes"
        return _GOES_TO.get(self.kind, "")


def _zip_kind(head: bytes) -> FileKind:
    # The first local header's file name: torch.save writes "<archive>/data.pkl" (or .format_version) first.
    if len(head) >= 30:
        n = struct.unpack_from("<H", head, 26)[0]
        name = head[30:30 + n].decode("utf-8", "replace")
        if "/" in name and name.rsplit("/", 1)[1] in {"data.pkl", ".format_version", "version", "byteorder"}:
            return FileKind("checkpoint", "a PyTorch checkpoint")
    return FileKind("zip", "a zip archive without a PyTorch checkpoint's data.pkl")


def _looks_onnx(head: bytes) -> bool:
    # ir_version (field 1, varint, < 64 so one byte) and then one of ModelProto's next fields.
    return len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 64 and head[2] in _ONNX_NEXT_TAGS


_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\x0c")


def _is_text(head: bytes) -> bool:
    if head.translate(None, _CONTROL) != head:  # control bytes: binary, even when valid UTF-8
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(head) == HEAD_BYTES and e.start >= len(head) - 3  # a character cut at the read boundary
    return True


def _json_kind(path: Path) -> FileKind | None:
    try:
        if path.stat().st_size > 16 << 20:
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(MANIFEST_FORMAT_PREFIX):
        return FileKind("manifest", "an rn-deploy engine manifest (JSON)")
    return FileKind("json", "a JSON file")


def sniff(path: str | Path) -> FileKind:
    """Tell what ``path`` holds from its first bytes (and, for an engine, the manifest beside it)."""
    path = Path(path)
    if path.is_dir():
        return FileKind("folder", "a folder")
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        return FileKind("missing", "no such file")
    except OSError as e:
        return FileKind("unknown", f"unreadable ({e.strerror or e})")
    if not head:
        return FileKind("empty", "an empty file (0 bytes)")
    if head[:4] in ENGINE_MAGICS:
        return FileKind("engine", ENGINE_MAGICS[head[:4]])
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(head)
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return FileKind("pickle", "a Python pickle (legacy PyTorch format)")
    images = {b"\x89PNG\r\n\x1a\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF87a": "a GIF image",
              b"GIF89a": "a GIF image"}
    for magic, what in images.items():
        if head.startswith(magic):
            return FileKind("image", what)
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":  # BMP: magic, then 4 reserved zero bytes
        return FileKind("image", "a BMP image")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FileKind("image", "a WebP image")
    if head.startswith(b"\x1f\x8b"):
        return FileKind("gzip", "a gzip-compressed file")
    if len(head) > 9 and struct.unpack_from("<Q", head)[0] < 100 << 20 and head[8:10] == b'{"':
        return FileKind("safetensors", "a safetensors weights file")
    if _looks_onnx(head):
        return FileKind("onnx", "an ONNX model")
    if _is_text(head):
        if head.lstrip()[:1] in (b"{", b"["):
            kind = _json_kind(path)
            if kind is not None:
                return kind
        return FileKind("text", "a text file")
    beside = _json_kind(path.with_name(path.name + ".json"))
    if beside is not None and beside.kind == "manifest":
        return FileKind("engine", "an engine (an rn-deploy manifest sits beside it)")
    return FileKind("unknown", "unrecognised binary data")


def expect(path: str | Path, *wanted: str, option: str = "") -> FileKind:
    """Refuse ``path`` when it is recognisably not one of ``wanted`` (``checkpoint``, ``onnx``, ``engine``).

    Returns what :func:`sniff` found (a missing file or folder is left to the caller's own message).

    Raises:
        RnDeployError: one line naming what the file is and which command takes it.
    """
    path = Path(path)
    found = sniff(path)
    if found.kind in ("missing", "folder") or any(found.kind in _ACCEPTS[w] for w in wanted):
        return found
    want = " or ".join(WANTED[w] for w in wanted)
    where = f" ({option})" if option else ""
    how = "" if found.kind == "empty" else " (by its first bytes)"
    hint = found.goes_to(path)
    raise RnDeployError(f"{path}{where}: {found.description}{how}, not {want}" + (f"; {hint}" if hint else ""))
