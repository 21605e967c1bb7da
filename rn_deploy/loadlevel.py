"""One load-test level's figures and its verdict: who set the pace (the client or the server), and by how much.

A level of :mod:`rn_deploy.loadtest` is closed-loop: N senders, each sending its next request when the last is
answered, so rate = N / mean latency. Who set the pace (``LoadLevel.judge``), in this order:

- ``client_bound``: the client's own CPU per wall second was >= 90% of a core; the fraction of the
  window the model was busy says how far the server could go;
- ``client_starved``: the client held the pace back without using CPU, waiting for cores busy serving:
  a ticker on the event loop measures how late the loop ran (``loop_lag_ms``); a lag over a tenth of
  the mean latency (and 0.2 ms), while the model was idle more than a tenth of the window;
- ``client_held``: the load generator's own CPU per request (at most the client side of the split) was
  >= ``CLIENT_SHARE`` of the mean latency while the model was busy < ``SATURATED`` of the window. In a
  closed loop rate = N / latency, so a zero-overhead client could reach up to ~mean / (mean - own) times
  the rate (``ceiling_x``, at most 1 / busy): the verdict gives both figures. The client side of the split
  (mean latency minus the server's own time) is not the client's alone: it holds the network stack,
  ``serve``'s body guard and tritonserver's HTTP handling, which every client pays. Measured (issue 33,
  docs/benchmarks.md): it was 7-13% of the latency at concurrency 1, 4 and 16 while perf_analyzer's C++
  client got the same rate as loadtest within 8%, and loadtest's own CPU was 0.09-0.47 ms per request;
- otherwise the server set the pace (the verdict still gives the client's share); without the server's
  statistics (no split) who set the pace is unknown, unless the client was bound or starved.
"""

from __future__ import annotations

from dataclasses import dataclass

from .serverstats import LatencySplit

CLIENT_BOUND_CPU = 0.9
STARVED_SHARE = 0.10  # loop lag over this share of the mean latency (and over 0.2 ms): the client held the pace back
SATURATED = 0.90  # ... unless the model instances were busy at least this share of the window
CLIENT_SHARE = 0.10  # the client side over this share of the mean latency, the model not saturated: the client held the rate back


@dataclass
class LoadLevel:
    """One concurrency level: rate, percentiles, errors, the latency split, the client's figures, the verdict."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    first_error: str | None = None
    client_cpu: float | None = None  # the load generator's CPU seconds per wall second (1.0 = one core)
    client_bound: bool = False  # the client used >= CLIENT_BOUND_CPU of a core: its figure is a floor, not the server's
    mean_ms: float | None = None  # the client's mean latency: what ``split`` divides
    split: LatencySplit | None = None  # from the server's statistics over the window (None: not readable)
    verdict: str = ""  # one sentence: who set the pace, and by how much
    loop_lag_ms: float | None = None  # how late the client's event loop woke, on average over the window
    client_starved: bool = False  # the loop ran late by > STARVED_SHARE of the mean latency: the client waited for a core

    client_share: float | None = None  # the load generator's own time's share of the mean latency (own_ms / mean_ms)
    own_ms: float | None = None  # the load generator's own time per request: its CPU per request, at most split.client_ms
    client_cpu_ms: float | None = None  # the load generator's CPU ms per request (client_cpu / requests_per_s)
    client_held: bool = False  # client share >= CLIENT_SHARE while the model was busy < SATURATED: the client held the rate back
    ceiling_x: float | None = None  # the rate a zero-overhead client could reach at this level, as a multiple of this one

    def assess(self) -> None:
        """Fill the client figures from the split, the mean and the client's CPU; then the verdict."""
        s, mean = self.split, self.mean_ms
        self.client_cpu_ms = (round(self.client_cpu * 1e3 / self.requests_per_s, 4)
                              if self.client_cpu is not None and self.requests_per_s > 0 else None)
        if s is not None and mean:
            own = min(max(0.0, s.client_ms), mean)
            if self.client_cpu_ms is not None:
                own = min(own, self.client_cpu_ms)  # the rest of the client side is the network and the server's HTTP
            self.own_ms = round(own, 4)
            self.client_share = round(own / mean, 4)
            # Closed loop: rate = concurrency / latency. Without the client's own time the latency is mean - own, as long
            # as the model has room: it cannot be busy more than all the window (rate x 1/busy).
            x = mean / (mean - own) if own < mean else float("inf")
            if s.busy:
                x = min(x, 1 / s.busy)
            self.ceiling_x = round(x, 3) if x != float("inf") else None
            self.client_held = self.client_share >= CLIENT_SHARE and (s.busy is None or s.busy < SATURATED)
        self.verdict = self.judge()

    def _own_time(self) -> str:
        """How much of each request was the client's, and what a zero-overhead client could reach ('' without a split)."""
        if self.split is None or self.client_share is None or not self.mean_ms:
            return ""
        text = (f"the load generator's own time was {self.own_ms or 0:.2f} ms of each {self.mean_ms:.2f} ms request "
                f"({self.client_share:.0%}; outside the server's statistics {max(0.0, self.split.client_ms):.2f} ms: "
                "the client, the network stack, HTTP handling)")
        if self.ceiling_x is None:
            return text + ": the server's share was nil, so the rate is the client's"
        if self.ceiling_x > 1.005:
            text += (f": with a zero-overhead client this level could reach up to ~{self.ceiling_x:.2f}x this rate "
                     f"({self.requests_per_s * self.ceiling_x:.0f} req/s)")
        return text

    def judge(self) -> str:
        """Who set the pace: the client (and by how much; how far the server could go), or the server."""
        busy = self.split.busy if self.split else None
        own = self._own_time()
        busy_text = f", the model busy {busy:.0%} of the window" if busy is not None else ""
        if self.client_bound:
            room = (f"; the model was busy {busy:.0%} of the window, so the server could answer up to ~{1 / busy:.1f}x "
                    f"this rate ({self.requests_per_s / busy:.0f} req/s)") if busy and busy < 1 else ""
            return (f"the client was the bottleneck: the load generator used {self.client_cpu:.0%} of a CPU core "
                    f"(>= {CLIENT_BOUND_CPU:.0%}){room}" + (f"; {own}" if own else ""))
        if self.client_starved:
            return (f"the client was the bottleneck: its event loop ran {self.loop_lag_ms:.2f} ms late on average "
                    f"({(self.loop_lag_ms or 0) / (self.mean_ms or 1):.0%} of the mean latency) while using only "
                    f"{self.client_cpu or 0:.0%} of a core: it waited for a CPU the server was using{busy_text}"
                    + (f"; {own}" if own else ""))
        if self.client_held:
            return f"the client was the bottleneck: {own}{busy_text}"
        if self.split is None:
            return (f"who set the pace is unknown: no server statistics to split the latency "
                    f"(client CPU {self.client_cpu or 0:.0%} of a core)")
        return (f"the server set the pace ({own + ', ' if own else ''}client CPU {self.client_cpu or 0:.0%} of a core"
                f"{busy_text})")
