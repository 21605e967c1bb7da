#!/usr/bin/env bash
# Make tensorrt-stubs (TensorRT 10.x API) usable by mypy: copy them to .mypy-stubs/ (git-ignored).
#
# The package installs a bare `tensorrt_bindings/*.pyi` without py.typed, which mypy skips in
# site-packages, and a few signatures are not valid Python (a parameter named `in`, a required
# parameter after defaults). We copy and repair those lines; pyproject's mypy_path points here.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/tensorrt_bindings
[ -d "$src" ] || { echo "tensorrt-stubs not installed: pip install --no-deps tensorrt-stubs" >&2; exit 1; }
rm -rf .mypy-stubs && mkdir -p .mypy-stubs && cp -r "$src" .mypy-stubs/
sed -i -E 's/\(self(: [A-Za-z0-9]+)?, in: /(self\1, in_: /; s/power: Weights = None, channel_axis: int\)/power: Weights = None, channel_axis: int = 0)/' \
  .mypy-stubs/tensorrt_bindings/tensorrt.pyi
