"""What ``rn-deploy serve`` takes: :class:`ServeOptions` and the service's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..names import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_QUEUE_DELAY_US
from ..triton import DEFAULT_MAX_BATCH_PIXELS, DEFAULT_MAX_REQUEST_BYTES

DEFAULT_MODEL = "classifier"
SERVE_EXTRA = "pip install 'rn-deploy[serve]' (nvidia-pytriton, tritonclient[all])"


@dataclass
class ServeOptions:
    """What ``rn-deploy serve`` takes; ports 0 are not allowed (clients must know where to connect)."""

    model: Path
    name: str = DEFAULT_MODEL
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    instances: int = 1
    ort_threads: int = 0  # ONNX Runtime intra-op threads per instance; 0: the cores less one, shared by the instances
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_bytes_in_flight: int = 4 * DEFAULT_MAX_REQUEST_BYTES  # request bodies forwarded to tritonserver, not yet answered
    body_guard: bool = True  # False: tritonserver takes the public ports itself (a proxy in front limits bodies)
    exit_timeout_s: int = 4  # Triton waits this long for open HTTP connections, then in-flight requests: < 10 s in all
