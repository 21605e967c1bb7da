"""The installed versions of the packages that must work together, and the known-bad combinations among them."""

from __future__ import annotations

from typing import Any

# The distributions whose versions decide whether rn-deploy's parts work together (pip names).
PACKAGES = ("rn-deploy", "numpy", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "tensorrt-rtx-cu13-bindings", "nvidia-pytriton", "tritonclient", "cuda-bindings", "cuda-python", "nvidia-modelopt",
            "cupy-cuda12x")
# Pairs that are wrong together whatever their versions: (a, b, why and the fix).
CONFLICTS = (("onnxruntime", "onnxruntime-gpu", "both install the one `onnxruntime` module, and whichever was installed last "
              "wins: keep one (pip uninstall -y onnxruntime-gpu onnxruntime && pip install onnxruntime, or onnxruntime-gpu "
              "on a GPU machine; `nvidia-modelopt[onnx]` pulls onnxruntime-gpu: install ModelOpt with --no-deps)"),)


def package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`PACKAGES` (None: not installed), from package metadata (nothing imported)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _requirements(versions: dict[str, str | None]) -> dict[str, list[str]]:
    import importlib.metadata as md

    return {name: list(md.requires(name) or []) for name, v in versions.items() if v is not None}


def known_bad(versions: dict[str, str | None], requirements: dict[str, list[str]]) -> list[str]:
    """What is wrong among the installed ``versions``: one line each, naming the packages, the versions and the fix.

    Two rules: a pair of :data:`CONFLICTS` installed together; a package of :data:`PACKAGES` whose declared
    requirement (``Requires-Dist``, extras left out) on another of them is not met by the installed version
    (e.g. ``nvidia-pytriton 0.7.0`` requires ``numpy<2``: numpy 2.x is installed after it).

    Args:
        versions: distribution name -> installed version or None (:func:`package_versions`).
        requirements: distribution name -> its ``Requires-Dist`` strings (``importlib.metadata.requires``).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    have: dict[str, tuple[str, str]] = {canonicalize_name(k): (k, v) for k, v in versions.items() if v is not None}
    bad = [f"{a} {have[a][1]} and {b} {have[b][1]} are both installed: {why}"
           for a, b, why in CONFLICTS if a in have and b in have]
    for name, reqs in requirements.items():
        if canonicalize_name(name) not in have:
            continue
        for text in reqs:
            try:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                dep = have.get(canonicalize_name(req.name))
                if dep is None or not req.specifier or req.specifier.contains(Version(dep[1]), prereleases=True):
                    continue
            except (InvalidRequirement, InvalidVersion):
                continue
            bad.append(f"{name} {have[canonicalize_name(name)][1]} requires {req.name}{req.specifier}, but {dep[0]} {dep[1]} is "
                       f"installed: pip install '{req.name}{req.specifier}' (or a {name} that accepts {dep[0]} {dep[1]})")
    return bad


def versions_block() -> dict[str, Any]:
    """The versions that matter and the known-bad combinations among them (``rn-deploy doctor``'s ``packages``)."""
    versions = package_versions()
    return {"versions": versions, "known_bad": known_bad(versions, _requirements(versions))}
