"""What a training run reports: :class:`TrainResult` on success, :class:`TrainingInterrupted` on Ctrl-C."""

from __future__ import annotations

from dataclasses import dataclass

from rn_deploy.strictjson import ToDict


@dataclass
class TrainResult(ToDict):
    checkpoint: str
    arch: str
    dataset: str
    epochs: int
    accuracy: float
    top5: float | None
    val_loss: float
    train_loss: float
    images_per_second: float
    seconds: float
    device: str
    world_size: int
    n_train: int
    n_val: int
    history: list[dict[str, float]]
    nothing_to_do: bool = False  # --resume of a run that had already trained every epoch


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: how far the run got and where its last checkpoint is.

    Attributes:
        checkpoint: the checkpoint written by this run's last finished epoch (or the resumed
            one), None if no epoch finished.
        epochs_done: epochs in that checkpoint.
        epochs: the run's total.
    """

    def __init__(self, checkpoint: str | None, epochs_done: int, epochs: int):
        super().__init__(f"interrupted after {epochs_done}/{epochs} epochs")
        self.checkpoint, self.epochs_done, self.epochs = checkpoint, epochs_done, epochs
