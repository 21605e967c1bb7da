"""Generate the bad-input corpus: files every rn-deploy command must refuse cleanly.

    python -m tests.bad_inputs.make_corpus OUT_DIR

Nothing here is committed: the files are made fresh (tests call ``make_corpus(tmp_path)``), from
a tiny real checkpoint, so they track the current formats. The engine cases are real TensorRT-RTX
builds; only a missing TensorRT-RTX leaves them out (the tests then skip them, which fails under
RN_DEPLOY_STRICT=1). Any other build error propagates.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import torch

from rn_deploy.builder import Profile, build_engine
from rn_deploy.checkpoint import FORMAT, ModelConfig, save_checkpoint
from rn_deploy.errors import MissingDependencyError
from rn_deploy.export import export_onnx
from rn_deploy.models import create_model
from rn_deploy.runtime import import_backend

MARKER = "PWNED"  # the file the malicious pickles would create
ENGINE_CASES = ("rtx.engine", "newer.engine", "other_backend.engine", "tampered.engine")


def have_trt_rtx() -> bool:
    try:
        import_backend("tensorrt-rtx")
    except MissingDependencyError:
        return False
    return True


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint must never be loaded that way."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def make_corpus(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c: dict[str, Path] = {}
    torch.manual_seed(0)
    good_model = create_model("mnist_cnn", n_classes=10, in_channels=1)
    cfg = ModelConfig(arch="mnist_cnn", n_classes=10, in_channels=1, image_size=[28, 28])
    c["good.pt"] = save_checkpoint(out / "good.pt", good_model, cfg)
    rgb = ModelConfig(arch="fcn", n_classes=3, in_channels=3, image_size=[32, 32])
    c["rgb.pt"] = save_checkpoint(out / "rgb.pt", create_model("fcn", n_classes=3), rgb)

    data = c["good.pt"].read_bytes()
    (out / "truncated.pt").write_bytes(data[: len(data) // 3])
    c["truncated.pt"] = out / "truncated.pt"
    (out / "random.pt").write_bytes(os.urandom(20_000))
    c["random.pt"] = out / "random.pt"
    marker = out / MARKER
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "state_dict": _RunsCode(str(marker))}, out / "evil.pt")
    c["evil.pt"] = out / "evil.pt"
    (out / "evil.pkl").write_bytes(pickle.dumps({"state_dict": _RunsCode(str(marker))}))
    c["evil.pkl"] = out / "evil.pkl"
    other = {"format": FORMAT, "config": ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=1).to_dict(),
             "state_dict": good_model.state_dict(), "train": {}}
    torch.save(other, out / "other_arch.pt")
    c["other_arch.pt"] = out / "other_arch.pt"

    c["good.onnx"] = Path(export_onnx(c["good.pt"], out / "good.onnx", verify=False).onnx_path)
    c["static.onnx"] = Path(export_onnx(c["good.pt"], out / "static.onnx", static_size=(28, 28), verify=False).onnx_path)
    ext = Path(export_onnx(c["good.pt"], out / "ext" / "missing_data.onnx", external_data=True, verify=False).onnx_path)
    ext.with_name(ext.name + ".data").unlink()
    c["missing_data.onnx"] = ext
    (out / "not_onnx.onnx").write_bytes(b"\x08\x01garbage" * 100)
    c["not_onnx.onnx"] = out / "not_onnx.onnx"

    if have_trt_rtx():
        eng = out / "rtx.engine"
        build_engine(c["good.onnx"], eng, backend="tensorrt-rtx", precision="fp32",
                     profiles=[Profile((1, 1, 28, 28), (4, 1, 64, 64), (8, 1, 128, 128))], targets=["sm89"])
        c["rtx.engine"] = eng
        newer = out / "newer.engine"
        newer.write_bytes(eng.read_bytes())
        m = json.loads(eng.with_name(eng.name + ".json").read_text())
        newer.with_name(newer.name + ".json").write_text(json.dumps({**m, "library_version": "99.0.0", "engine_path": str(newer)}))
        c["newer.engine"] = newer
        other_backend = out / "other_backend.engine"
        other_backend.write_bytes(eng.read_bytes())
        other_backend.with_name(other_backend.name + ".json").write_text(
            json.dumps({**m, "backend": "tensorrt", "library_version": "10.13.0", "engine_path": str(other_backend)}))
        c["other_backend.engine"] = other_backend
        tampered = out / "tampered.engine"
        tampered.write_bytes(eng.read_bytes()[:-100])
        tampered.with_name(tampered.name + ".json").write_text(json.dumps({**m, "engine_path": str(tampered)}))
        c["tampered.engine"] = tampered
    (out / "a_file").write_text("a regular file standing where a folder should be\n")
    c["a_file"] = out / "a_file"
    c.update(_wrong_kinds(out, c))
    return c


def _wrong_kinds(out: Path, c: dict[str, Path]) -> dict[str, Path]:
    """Files of every kind a user may pass where another is expected (named by what they are, or misnamed)."""
    import gzip
    import zipfile

    import numpy as np
    from PIL import Image

    w = out / "wrong"
    w.mkdir(exist_ok=True)
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(w / "photo.jpg")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w / "digit.png")
    with zipfile.ZipFile(w / "bundle.zip", "w") as z:
        z.writestr("model/readme.txt", "a zip, not a checkpoint")
    (w / "empty.pt").write_bytes(b"")
    (w / "notes.txt").write_text("epochs: 5\naccuracy: 0.9\n")
    (w / "sizes.json").write_text(json.dumps([[480, 640], [720, 1280]]))
    (w / "weights.gz").write_bytes(gzip.compress(b"\x00" * 1000))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (w / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    # Right bytes, wrong names: the sniffer reads content, not suffixes.
    (w / "onnx_named.pt").write_bytes(c["good.onnx"].read_bytes())
    (w / "checkpoint_named.onnx").write_bytes(c["good.pt"].read_bytes())
    (w / "checkpoint_named.engine").write_bytes(c["good.pt"].read_bytes())
    files = {p.name: p for p in sorted(w.iterdir())}
    if "rtx.engine" in c:
        files["rtx.engine.json"] = c["rtx.engine"].with_name("rtx.engine.json")
        (w / "engine_named.onnx").write_bytes(c["rtx.engine"].read_bytes())
        files["engine_named.onnx"] = w / "engine_named.onnx"
    return files


if __name__ == "__main__":
    for name, path in make_corpus(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_out").items():
        print(f"{name:>22}  {path}")
