"""Prometheus metrics of ``llmpack serve`` (``prometheus_client``, one registry per app).

Names (all prefixed ``llmpack_``): ``requests_total{route,status}``, ``request_duration_seconds{route}``,
``time_to_first_token_seconds``, ``prompt_tokens_total``, ``generation_tokens_total``,
``batch_size{phase}`` (rows per prefill / decode step), ``queue_depth``, ``running_requests``,
``requests_cancelled_total``, ``requests_rejected_total{reason}``, ``model_info{...}``, ``ready``.
"""

from __future__ import annotations

from typing import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["ServeMetrics", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The server's metrics on their own :class:`~prometheus_client.CollectorRegistry`.

    Example:
        >>> m = ServeMetrics(max_batch_size=4)
        >>> m.batch_size.labels(phase="decode").observe(3)
        >>> b"llmpack_batch_size_bucket" in m.render()
        True
    """

    def __init__(self, max_batch_size: int = 8, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmpack_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.latency = Histogram("llmpack_request_duration_seconds", "Time from request to the last byte of the response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmpack_time_to_first_token_seconds", "Time from request to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llmpack_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("llmpack_generation_tokens", "Tokens generated", registry=r)
        buckets = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, max_batch_size})
        self.batch_size = Histogram("llmpack_batch_size", "Rows per batched step (phase: prefill or decode)",
                                    ["phase"], buckets=[b for b in buckets if b <= max(max_batch_size, 1)], registry=r)
        self.queue_depth = Gauge("llmpack_queue_depth", "Requests waiting for a batch slot", registry=r)
        self.running = Gauge("llmpack_running_requests", "Requests in the running batch", registry=r)
        self.cancelled = Counter("llmpack_requests_cancelled", "Generations cancelled (client gone or stop string)",
                                 registry=r)
        self.rejected = Counter("llmpack_requests_rejected", "Requests refused before generation", ["reason"], registry=r)
        self.ready = Gauge("llmpack_ready", "1 once the model is loaded and warmed", registry=r)
        self.info = Info("llmpack_model", "The served model", registry=r)

    def set_model_info(self, info: Mapping[str, str]) -> None:
        """Set the ``llmpack_model_info`` labels (model name, directory, device, quantization, versions)."""
        self.info.info({k: str(v) for k, v in info.items()})

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
