"""Prometheus metrics of the server (GET /metrics), in a registry of its own so that two apps in one process
(tests) do not collide."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("diffusionvl_requests", "Chat completion requests by outcome", ["status"],
                                registry=self.registry)
        self.tokens = Counter("diffusionvl_generated_tokens", "Tokens generated", registry=self.registry)
        self.forwards = Counter("diffusionvl_row_forwards", "Model forwards summed over the rows taking part (NFE)",
                                registry=self.registry)
        self.per_forward = Gauge("diffusionvl_tokens_per_forward", "Generated tokens per row forward, since start",
                                 registry=self.registry)
        self.queue = Gauge("diffusionvl_queue_depth", "Requests waiting for a row", registry=self.registry)
        self.batch = Gauge("diffusionvl_batch_size", "Rows being decoded", registry=self.registry)
        self.latency = Histogram("diffusionvl_request_seconds", "Arrival to last token",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)

    def observe_load(self, queued: int, active: int) -> None:
        self.queue.set(queued)
        self.batch.set(active)

    def observe_request(self, job) -> None:
        """A finished (or cancelled) request's tokens and forwards."""
        self.tokens.inc(job.tokens)
        self.forwards.inc(job.forwards)
        forwards = self.forwards._value.get()
        self.per_forward.set(self.tokens._value.get() / forwards if forwards else 0.0)
        self.latency.observe(time.monotonic() - job.arrived)

    def count(self, status: int) -> None:
        self.requests.labels(status=str(status)).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
