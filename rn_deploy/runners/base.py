"""The runner protocol and the base class every runner derives from (see rn_deploy.runners)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import RnDeployError


class RunnerUnavailable(RnDeployError):
    """This machine cannot run the backend (library or GPU missing); the message says why. The only refusal
    ``--allow-skip`` excuses: elsewhere the same artifact may run."""


class ArtifactUnsupported(RnDeployError):
    """The artifact itself cannot be run by this runner on any machine (a tensor type it does not take, a class
    dimension it needs fixed): a failure of the artifact, never a skip, whatever ``--allow-skip`` says."""


@runtime_checkable
class Runner(Protocol):
    name: str
    framework: str
    device: str
    precision: str

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> None: ...

    def prepare(self, x: torch.Tensor) -> Any: ...

    def infer(self, prepared: Any) -> torch.Tensor: ...

    def sync(self) -> None: ...

    def covers(self, shape: tuple[int, ...]) -> str | None: ...

    def close(self) -> None: ...


class BaseRunner:
    name = "base"
    framework = "base"
    device = "cpu"
    precision = "fp32"
    artifact: str | None = None

    def __enter__(self) -> BaseRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def prepare(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def infer(self, prepared: Any) -> torch.Tensor:
        raise NotImplementedError

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def covers(self, shape: tuple[int, ...]) -> str | None:
        """None if this runner can take ``shape``, else the reason it cannot."""
        return None
