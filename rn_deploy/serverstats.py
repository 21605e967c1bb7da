"""Triton's statistics API seen over a window: counters before and after, per-request latency split, batches and busy time.

``GET /v2/models/NAME/stats`` (gRPC ``ModelStatistics``) gives cumulative counts and nanoseconds since the
model loaded. Their difference over a load-test window is what perf_analyzer prints as "Server:
queue / compute input / compute infer / compute output": each divided by its own count is the mean per
inference request. ``success`` is a request's whole time inside the server; what the client measured
beyond it is the client's and the network's share. ``batch_stats`` count executions (one per batch the
dynamic batcher formed): their compute time summed is how long the model instances were busy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def counters(stats: dict[str, Any]) -> dict[str, int]:
    """Flat cumulative counters of one model's statistics document (HTTP JSON, or gRPC ``as_json``: int64 as strings),
    summed over the versions it lists: ``success_count``, ``queue_ns``, ..., ``inferences``, ``executions``, ``busy_ns``."""
    out: dict[str, int] = {}

    def add(key: str, value: Any) -> None:
        out[key] = out.get(key, 0) + int(value or 0)

    for m in stats.get("model_stats", []):
        add("inferences", m.get("inference_count"))
        add("executions", m.get("execution_count"))
        inf = m.get("inference_stats", {})
        for phase in ("success", "fail", *PHASES):
            add(f"{phase}_count", inf.get(phase, {}).get("count"))
            add(f"{phase}_ns", inf.get(phase, {}).get("ns"))
        for b in m.get("batch_stats", []):  # per batch size: one count per execution, its whole compute time
            add("busy_ns", sum(int(b.get(p, {}).get("ns") or 0) for p in ("compute_input", "compute_infer", "compute_output")))
    return out


@dataclass
class LatencySplit:
    """Where a window's mean request latency went, in ms per request (``client_ms`` is the measured mean's remainder).

    ``client_ms + queue_ms + compute_input_ms + compute_infer_ms + compute_output_ms + server_other_ms`` is the
    client's mean latency; ``server_ms`` the server's own mean per request (``success``), of which the four phases
    are parts. ``avg_batch``: requests per execution; ``busy``: the fraction of the window the model instances spent
    computing (1.0: every instance always busy).
    """

    requests: int
    server_ms: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    server_other_ms: float
    client_ms: float
    avg_batch: float | None
    busy: float | None

    def parts(self) -> dict[str, float]:
        """The stacked parts of the mean latency, client first."""
        return {"client": self.client_ms, "queue": self.queue_ms, "compute input": self.compute_input_ms,
                "compute infer": self.compute_infer_ms, "compute output": self.compute_output_ms,
                "server other": self.server_other_ms}


def split(before: dict[str, int], after: dict[str, int], mean_latency_ms: float, seconds: float,
          instances: int = 1) -> LatencySplit | None:
    """The window's split from counters before and after it; None when the server counted no successful request."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    n = d.get("success_count", 0)
    if n <= 0:
        return None

    def per_request(phase: str) -> float:
        count = d.get(f"{phase}_count", 0)
        return d.get(f"{phase}_ns", 0) / count / 1e6 if count else 0.0

    server = per_request("success")
    phases = [per_request(p) for p in PHASES]
    executions = d.get("executions", 0)
    busy = d.get("busy_ns", 0) / (seconds * 1e9 * max(1, instances)) if seconds > 0 else None
    q, ci, cinf, co = (round(v, 4) for v in phases)
    return LatencySplit(n, round(server, 4), q, ci, cinf, co, round(server - sum(phases), 4), round(mean_latency_ms - server, 4),
                        round(d.get("inferences", 0) / executions, 2) if executions else None,
                        round(busy, 4) if busy is not None else None)


async def fetch_async(client: Any, model: str, grpc: bool) -> dict[str, int]:
    """The model's counters now, through a tritonclient ``aio`` client (HTTP or gRPC)."""
    if grpc:
        return counters(await client.get_inference_statistics(model, as_json=True))
    return counters(await client.get_inference_statistics(model))


async def instances_async(client: Any, model: str, grpc: bool) -> int:
    """How many model instances the server runs (the ``instance_group`` counts of its config); 1 if it does not say."""
    try:
        cfg = await client.get_model_config(model, as_json=True) if grpc else await client.get_model_config(model)
    except Exception:  # noqa: BLE001 - the count only scales the busy fraction
        return 1
    cfg = cfg.get("config", cfg)
    return max(1, sum(int(g.get("count") or 1) for g in cfg.get("instance_group", [])) or 1)
