"""The import path ``rn_deploy.evaluate_sizes`` of the per-size evaluation, which lives in :mod:`rn_deploy.evaluate.sizes`."""

from .evaluate.sizes import at_size, run_sizes, size_markdown

__all__ = ["at_size", "run_sizes", "size_markdown"]
