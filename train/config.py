"""What one training run is asked to do: :class:`TrainConfig` (the CLI's options, checked) and ``--size`` schedules.

Torch-free: ``rn-deploy train`` parses and checks its options before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rn_deploy.errors import RnDeployError


@dataclass
class TrainConfig:
    """Options of one training run (the CLI's options, one to one).

    Attributes:
        arch: registered model name.
        dataset: ``fashion-mnist``, ``mnist`` or ``imagefolder`` (``mnist-png``, ``imagenette``: older names, recorded as these).
        data: dataset folder (None: the dataset's default, where it has one).
        epochs: total epochs (the sum of the phases when ``sizes`` is a schedule).
        batch_size: per-process batch size.
        lr: peak learning rate of the one-cycle schedule.
        size: training image size (H = W); with ``schedule`` the last phase's size.
        schedule: progressive resizing: ``[(size, epochs), ...]`` phases, run in order under one
            one-cycle schedule spanning all of them; ``epochs`` becomes their sum.
        presize: decode size for image folders (random crops of ``size`` are taken from it).
        device: ``cuda``, ``cpu`` or ``auto``.
        out: output folder; the checkpoint is ``out/model.pt``.
        limit: use at most this many training (and validation) images.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        mixup: Beta(mixup, mixup) mixup alpha; 0 disables.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last memory format (on CUDA).
        compile: wrap the model in ``torch.compile``.
        clip: gradient-norm clip; None disables.
        seed: seed for weights, order and augmentation.
        resume: continue from ``out/model.pt`` (same options) at the epoch after the last saved.
        workers: decode workers for image folders.
        multi_scale: size-robust training: ``(lo, hi)``: every training batch is resized to a random
            square side in lo..hi (after augmentation, as a deployer resizes); implies ``range_sizes``.
        range_sizes: measure top-1 on the validation images resized to these sizes after the last
            epoch and record the size range (within ``range_drop`` points of the best) in the
            checkpoint (``config.size_range``, ``train["sizes"]``). Default with ``multi_scale``:
            the training size times 0.75, 1, 1.5, 2 plus lo and hi.
        range_drop: top-1 points below the best size that still count as inside the range.
    """

    arch: str = "resnet18"
    dataset: str = "fashion-mnist"
    data: str | None = None
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    size: int = 28
    presize: int = 160
    device: str = "auto"
    out: str = "exports/model"
    limit: int | None = None
    weight_decay: float = 1e-2
    label_smoothing: float = 0.0
    mixup: float = 0.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    clip: float | None = None
    seed: int = 0
    resume: bool = False
    workers: int | None = None
    schedule: list[tuple[int, int]] | None = None
    multi_scale: tuple[int, int] | None = None
    range_sizes: list[int] | None = None
    range_drop: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        from rn_deploy.datasets import ALIASES

        self.dataset = ALIASES.get(self.dataset, self.dataset)  # one name everywhere: the checkpoint records this one
        if self.size < 8:
            raise RnDeployError(f"--size {self.size}: images must be at least 8 pixels")
        if self.schedule:
            self.schedule = [(int(s), int(e)) for s, e in self.schedule]
            if any(s < 8 or e < 1 for s, e in self.schedule):
                raise RnDeployError(f"size schedule {self.schedule}: sizes must be >= 8 and epochs >= 1")
            self.epochs = sum(e for _, e in self.schedule)
            self.size = self.schedule[-1][0]
        if self.multi_scale:
            lo, hi = (int(v) for v in self.multi_scale)
            if not 8 <= lo <= hi:
                raise RnDeployError(f"--multi-scale {lo}:{hi}: need 8 <= LO <= HI pixels")
            self.multi_scale = (lo, hi)
            if not self.range_sizes:
                self.range_sizes = sorted({lo, hi, *(round(self.size * f) for f in (0.75, 1.0, 1.5, 2.0))})
        if self.range_sizes:
            if min(self.range_sizes) < 1:
                raise RnDeployError(f"--range-sizes {self.range_sizes}: sizes must be at least 1 pixel")
            self.range_sizes = sorted({int(v) for v in self.range_sizes})

    def epoch_sizes(self) -> list[int]:
        """The image size of each epoch."""
        return [s for s, e in (self.schedule or [(self.size, self.epochs)]) for _ in range(e)]


def parse_size_schedule(text: str) -> tuple[int, list[tuple[int, int]] | None]:
    """``'28'`` -> (28, None); ``'64:4,128:4,224:2'`` -> (224, [(64, 4), (128, 4), (224, 2)])."""
    try:
        if ":" not in text:
            return int(text), None
        phases = [(int(a), int(b)) for a, b in (p.split(":") for p in text.split(",") if p.strip())]
    except ValueError:
        raise RnDeployError(f"--size {text!r}: use N, or SIZE:EPOCHS phases like 64:4,128:4,224:2") from None
    if not phases:
        raise RnDeployError(f"--size {text!r}: no phases")
    return phases[-1][0], phases
