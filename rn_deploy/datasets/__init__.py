"""Datasets: their names (here, torch-free, so the CLI can list them at start) and readers (:mod:`.sources`).

Training, evaluation, quantization calibration, the client and the demo all read data through this package;
it sits in the foundation layer (docs/architecture.md) and imports nothing above it.
"""

from rn_deploy.errors import DataError

DATASETS = ("fashion-mnist", "mnist", "imagefolder")
# Older names, still accepted everywhere and recorded under the name they stand for.
ALIASES = {"mnist-png": "mnist", "imagenette": "imagefolder"}


def canonical_dataset(name: str) -> str:
    """``mnist-png`` -> ``mnist``, ``imagenette`` -> ``imagefolder``; unknown names are an error."""
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name
