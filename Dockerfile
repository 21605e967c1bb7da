# rn-deploy on an NVIDIA NGC PyTorch image (CUDA, cuDNN, PyTorch and TensorRT inside).
# Build:  docker build -t rn-deploy .
# Run:    docker run --gpus all -v "$PWD/exports:/work/exports" rn-deploy demo
FROM nvcr.io/nvidia/pytorch:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/rn-deploy
COPY pyproject.toml README.md ./
COPY rn_deploy ./rn_deploy
COPY train ./train

# Keep the image's own torch build (an NGC pre-release version) instead of letting pip replace it;
# the trt extra brings TensorRT's Python package, gpu brings ONNX Runtime with CUDA.
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt ".[trt,gpu]" \
    && rm /tmp/constraints.txt

WORKDIR /work
ENTRYPOINT ["rn-deploy"]
CMD ["--help"]
