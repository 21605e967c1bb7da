"""Dataset names: the ones every command accepts, their older aliases, and the one canonical name (torch-free)."""

from ..errors import DataError

DATASETS = ("fashion-mnist", "mnist", "imagefolder")
# Older names, still accepted everywhere and recorded under the name they stand for.
ALIASES = {"mnist-png": "mnist", "imagenette": "imagefolder"}


def canonical_dataset(name: str) -> str:
    """``mnist-png`` -> ``mnist``, ``imagenette`` -> ``imagefolder``; unknown names are an error."""
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name
