"""`export --fp16 --fp16-tool converter|autocast`: both write verified FP16 ONNX; AutoCast keeps out-of-range ops in FP32."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rn_deploy.checkpoint import ModelConfig
from rn_deploy.cli import main
from rn_deploy.errors import ExportError
from rn_deploy.export import DEFAULT_FP16_TOOL, FP16_TOOLS, export_onnx, weights_fp16

from .conftest import make_checkpoint


class HotNet(nn.Module):
    """Activations near 1.5e5, past FP16's 65504: the case AutoCast exists for."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)
        with torch.no_grad():
            self.a.weight.mul_(400)
            self.b.weight.mul_(400)
            self.fc.weight.div_(1e4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.b(torch.relu(self.a(x))))).flatten(1))


def fp32_weight_count(path: str) -> int:
    return sum(t.data_type == onnx.TensorProto.FLOAT for t in onnx.load(path).graph.initializer)


@pytest.mark.parametrize("tool", FP16_TOOLS)
def test_both_tools_write_a_verified_fp16_resnet(tool: str, tmp_path: Path):
    ck = make_checkpoint(tmp_path / "model.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    res = export_onnx(ck, tmp_path / f"{tool}.onnx", fp16=True, fp16_tool=tool)
    assert res.precision == "fp16" and res.fp16_tool == tool and res.passed and len(res.verification) >= 3
    assert all(r.parity.rel_l2 < 1e-2 and r.parity.rel_l2 > 1e-6 for r in res.verification)  # FP16 rounding, not FP32
    m = onnx.load(res.onnx_path)
    props = {p.key: p.value for p in m.metadata_props}
    assert props["rn_deploy.fp16_tool"] == tool and props["rn_deploy.precision"] == "fp16" and weights_fp16(m)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O by default


def test_autocast_keeps_out_of_range_ops_in_fp32_converter_does_not(tmp_path: Path):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mnist_resnet", n_classes=4, in_channels=1, image_size=[32, 32])
    net = HotNet().eval()
    conv = export_onnx((net, cfg), tmp_path / "c.onnx", fp16=True, fp16_tool="converter")
    auto = export_onnx((net, cfg), tmp_path / "a.onnx", fp16=True, fp16_tool="autocast")
    assert fp32_weight_count(conv.onnx_path) == 0 and fp32_weight_count(auto.onnx_path) > 0
    # A graph with FP32 weights is still an rn-deploy FP16 export (builders must not convert it again).
    assert weights_fp16(onnx.load(auto.onnx_path))
    worst = {r.onnx_path: max(v.parity.rel_l2 for v in r.verification) for r in (conv, auto)}
    assert worst[auto.onnx_path] < 0.5 * worst[conv.onnx_path]


def test_fp16_tool_refusals(tmp_path: Path):
    assert DEFAULT_FP16_TOOL in FP16_TOOLS
    ck = make_checkpoint(tmp_path / "model.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    with pytest.raises(ExportError, match="fp16 tool 'bf16': choose one of converter, autocast"):
        export_onnx(ck, tmp_path / "x.onnx", fp16=True, fp16_tool="bf16")
    res = CliRunner().invoke(main, ["export", str(ck), "--fp16-tool", "autocast"])
    assert res.exit_code == 2 and "--fp16-tool needs --fp16" in res.output
