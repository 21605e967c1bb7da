"""``python -m rn_deploy.train`` under torchrun, then each rank writes what only it can see.

    RN_TEST_RANK_STATE=DIR torchrun ... -m tests.ddp_rank_state --arch ... (the `python -m rn_deploy.train` options)

Metrics that training all-reduces agree across ranks whatever the ranks did, so they cannot show
that DDP synchronised anything. This wrapper records, per rank and without touching the training
code, a digest of that rank's own model parameters and buffers after training and a digest of
the training batches it was fed; it writes them to ``DIR/rank{RANK}.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


def digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    from rn_deploy.train.data import DeviceLoader

    from rn_deploy.checkpoint import ModelConfig

    built: list[torch.nn.Module] = []
    seen = hashlib.sha256()
    build, iterate = ModelConfig.build, DeviceLoader.__iter__

    def build_and_keep(self: ModelConfig) -> torch.nn.Module:
        model = build(self)
        built.append(model)
        return model

    def iterate_and_hash(self: DeviceLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in iterate(self):
            if self.train:
                seen.update(x.detach().cpu().numpy().tobytes())
                seen.update(y.cpu().numpy().tobytes())
            yield x, y

    ModelConfig.build = build_and_keep  # type: ignore[method-assign]
    DeviceLoader.__iter__ = iterate_and_hash  # type: ignore[method-assign]
    code: Any = 0
    sys.argv = ["train", *argv]
    try:
        runpy.run_module("rn_deploy.train", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code or 0
    if code == 0:
        model = built[0]  # the model training built (and DDP wrapped)
        state = {"rank": int(os.environ["RANK"]), "models_built": len(built), "data": seen.hexdigest(),
                 "params": digest(model.named_parameters()), "buffers": digest(model.named_buffers())}
        out = Path(os.environ["RN_TEST_RANK_STATE"])
        (out / f"rank{state['rank']}.json").write_text(json.dumps(state))
    return int(code) if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
