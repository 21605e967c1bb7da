"""The builder's old import path (``rn_deploy.build`` was the package's name): its public names, from :mod:`rn_deploy.builder`.

The package was renamed because ``.gitignore`` templates and code-mapping tools drop folders named
``build/``; this module keeps ``from rn_deploy.build import build_engine, Profile`` working.
"""

from __future__ import annotations

from .builder import *  # noqa: F403  (the public names, listed in rn_deploy.builder.__all__)
from .builder import __all__ as __all__
