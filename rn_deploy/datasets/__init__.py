"""Datasets: their names (:mod:`.names`, torch-free, so the CLI can list them at start) and readers (:mod:`.sources`).

Training, evaluation, quantization calibration, the client and the demo all read data through this package;
it sits in the foundation layer (docs/architecture.md) and imports nothing above it. Importing the package
loads only the names; ``from rn_deploy.datasets.sources import load_split`` loads the readers (and torch).
"""

from .names import ALIASES, DATASETS, canonical_dataset

__all__ = ["ALIASES", "DATASETS", "canonical_dataset"]
