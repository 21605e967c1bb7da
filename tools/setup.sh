#!/usr/bin/env bash
# The one install path (README command 1 and .ci/run): everything `rn-deploy demo` and the whole test suite need,
# into the Python that `python3` is (activate your venv first). Safe to run again.
#
#   1. the Fashion-MNIST data set (Debian package dataset-fashion-mnist; apt-get as root, else sudo);
#   2. torch + torchvision, the pair this project is developed and tested with;
#   3. NVIDIA ModelOpt WITHOUT its dependencies: its [onnx] extra would replace the CPU onnxruntime with
#      onnxruntime-gpu (+ cupy) and pin onnx; our `quant` extra lists the dependencies it really needs;
#   3b. fastai without its dependencies (the `test` extra has the ones `rn-deploy import`'s tests need);
#   4. rn-deploy (editable) with every extra the suite exercises: dev (pytest, ruff, mypy, hadolint), trt-rtx,
#      serve (PyTriton pins numpy<2: numpy 2.x is downgraded to 1.26), quant, fp16-autocast, test;
#   5. tensorrt-stubs for mypy, without the real `tensorrt` it depends on (it cannot install on a CPU machine);
#   6. a check that the CPU onnxruntime is still the one installed.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist
fi

pip=(python3 -m pip install -q)
"${pip[@]}" --upgrade pip "setuptools>=77"  # a fresh 3.11 venv brings setuptools 65, which cannot read our pyproject
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" --no-deps "nvidia-modelopt==0.47.0"
# fastai for `rn-deploy import`'s tests, likewise without its requirements (they pull spacy, and fastprogress>=1.1
# pulls python-fasthtml); the `test` extra lists what `fastai.vision.models.xresnet` really needs.
"${pip[@]}" --no-deps "fastai==2.8.12"
"${pip[@]}" -e '.[dev,trt-rtx,serve,quant,fp16-autocast,test]'
"${pip[@]}" --no-deps tensorrt-stubs

python3 - <<'PY'
import importlib.metadata as m

import onnxruntime

names = {(d.metadata["Name"] or "").lower() for d in m.distributions()}
assert "onnxruntime-gpu" not in names, "onnxruntime-gpu got installed: pip uninstall -y onnxruntime-gpu onnxruntime && pip install onnxruntime"
assert "CPUExecutionProvider" in onnxruntime.get_available_providers(), "the CPU onnxruntime was replaced"
PY
echo "tools/setup.sh: done ($(python3 -c 'import sys; print(sys.executable)'))" >&2
