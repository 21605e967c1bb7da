"""Talk to ``rn-deploy serve`` (or any Triton serving the same contract): one client, classify images.

    rn-deploy classify 127.0.0.1:8000 shirt.png boot.jpg            # HTTP
    rn-deploy classify 127.0.0.1:8001 shirt.png --grpc --json

The load test (``rn-deploy loadtest``) is :mod:`rn_deploy.loadtest`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError, RnDeployError
from .serve import DEFAULT_MODEL, IMAGE, INDEX, LABEL, PROBS, SCORE, SERVE_EXTRA


def host_port(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


def make_client(url: str, grpc: bool = False, timeout_s: float = 60.0) -> Any:
    """A tritonclient HTTP (or gRPC) client for ``host:port`` (an ``http://`` prefix is accepted)."""
    try:
        if grpc:
            import tritonclient.grpc as tc
            return tc.InferenceServerClient(host_port(url))
        import tritonclient.http as th
        return th.InferenceServerClient(host_port(url), connection_timeout=timeout_s, network_timeout=timeout_s)
    except ImportError as e:
        raise MissingDependencyError(f"the client needs tritonclient ({e}); {SERVE_EXTRA}") from None


def server_message(exc: BaseException) -> str:
    """The useful line of a server error (the server's one-line message; an older server's ``RequestError: ...`` line)."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    text = str(text or exc)
    m = re.search(r"RequestError: (.+)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[0] if text.strip() else repr(exc)


def find_model(client: Any, model: str | None, grpc: bool) -> str:
    """Check that ``model`` (default: serve's default name) is ready; the repository index is not open to clients."""
    name = model or DEFAULT_MODEL
    try:
        ready = client.is_model_ready(name)
    except Exception as e:  # noqa: BLE001 - any connection failure is one user-facing line
        raise RnDeployError(f"cannot reach a Triton server ({server_message(e)}); is `rn-deploy serve` running there"
                            f"{' (gRPC port?)' if grpc else ' (HTTP port?)'}?") from None
    if not ready:
        raise RnDeployError(f"model {name!r} is not ready on the server; pass --model NAME (the name given to `serve --name`)")
    return name


def protocol_module(grpc: bool) -> Any:
    if grpc:
        import tritonclient.grpc as tc
        return tc
    import tritonclient.http as th
    return th


def request(client: Any, model: str, data: bytes, grpc: bool = False) -> dict[str, Any]:
    """Send one encoded image; return ``{label, index, score, probs}``. Server errors raise tritonclient's exception."""
    tc = protocol_module(grpc)
    inp = tc.InferInput(IMAGE, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    outs = [tc.InferRequestedOutput(n) for n in (LABEL, INDEX, SCORE, PROBS)]
    res = client.infer(model, [inp], outputs=outs)
    return {"label": res.as_numpy(LABEL).reshape(-1)[0].decode(), "index": int(res.as_numpy(INDEX).reshape(-1)[0]),
            "score": float(res.as_numpy(SCORE).reshape(-1)[0]), "probs": res.as_numpy(PROBS)[0].astype(float).tolist()}


def classify(url: str, images: Sequence[str | Path | bytes], *, grpc: bool = False, model: str | None = None) -> list[dict[str, Any]]:
    """Classify files (or encoded bytes), one request each; a failed image gets ``{"error": ...}`` instead of a result."""
    client = make_client(url, grpc)
    try:
        name = find_model(client, model, grpc)
        out: list[dict[str, Any]] = []
        for img in images:
            src = "<bytes>" if isinstance(img, bytes) else str(img)
            try:
                data = img if isinstance(img, bytes) else Path(img).read_bytes()
            except OSError as e:
                out.append({"image": src, "error": f"cannot read: {e.strerror}"})
                continue
            try:
                out.append({"image": src, **request(client, name, data, grpc)})
            except Exception as e:  # noqa: BLE001 - tritonclient raises its own exception types per protocol
                out.append({"image": src, "error": server_message(e)})
        return out
    finally:
        client.close()
