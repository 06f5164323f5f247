"""Prometheus metrics of the model server, in a registry of their own.

Each :class:`Metrics` owns a ``CollectorRegistry`` (never the process-global one), so several
schedulers (tests, benchmarks) can live in one process. The scheduler calls the ``observe_*``,
``set_*`` and ``inc_*`` methods; the HTTP layer serves :meth:`Metrics.render` at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics"]

_MB = 1024 * 1024
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The scheduler's counters, gauges and histograms.

    Args:
        registry: where to register them (a new ``CollectorRegistry`` by default).

    Attributes:
        registry: the registry.
        content_type: the ``Content-Type`` of :meth:`render`'s output.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "modelmora_http_requests",
            "HTTP requests, per route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "modelmora_http_request_seconds", "HTTP request time, per route.", ["route"], registry=r
        )
        self.request_latency = Histogram(
            "modelmora_request_latency_seconds",
            "Time from submit to result, per model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelmora_batch_size",
            "Items per call into a worker, per model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelmora_queue_depth", "Requests waiting, per priority.", ["priority"], registry=r
        )
        self.resident_models = Gauge(
            "modelmora_resident_models", "Models with a loaded worker.", registry=r
        )
        self.rss_bytes = Gauge(
            "modelmora_model_rss_bytes", "RSS of the model's workers.", ["model"], registry=r
        )
        self.vram_bytes = Gauge(
            "modelmora_model_vram_bytes",
            "GPU memory of the model's workers.",
            ["model"],
            registry=r,
        )
        self.loads = Counter("modelmora_loads", "Worker loads, per model.", ["model"], registry=r)
        self.starts = Counter(
            "modelmora_worker_starts",
            "Worker loads per model and start: warm (from a spare) or cold (a new process).",
            ["model", "start"],
            registry=r,
        )
        self.spares = Gauge(
            "modelmora_spares",
            "Spare workers ready (framework imported, no model), per adapter kind.",
            ["kind"],
            registry=r,
        )
        self.spare_rss_bytes = Gauge(
            "modelmora_spare_rss_bytes", "RSS of the ready spare workers.", registry=r
        )
        self.unloads = Counter(
            "modelmora_unloads", "Worker stops (any reason), per model.", ["model"], registry=r
        )
        self.evictions = Counter(
            "modelmora_evictions", "Unloads to make room, per model.", ["model"], registry=r
        )
        self.crashes = Counter(
            "modelmora_crashes",
            "Workers that died during a call, per model.",
            ["model"],
            registry=r,
        )

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one HTTP request: its route (the pattern, ``unmatched`` for none) and status."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(route).observe(seconds)

    def observe_latency(self, model: str, seconds: float) -> None:
        """Record one request's latency (submit to result)."""
        self.request_latency.labels(model=model).observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        """Record the size of one call into a worker."""
        self.batch_size.labels(model=model).observe(size)

    def set_queue_depth(self, priority: str, depth: int) -> None:
        """Set how many requests of ``priority`` are waiting."""
        self.queue_depth.labels(priority=priority).set(depth)

    def set_resident(self, count: int) -> None:
        """Set how many models are resident."""
        self.resident_models.set(count)

    def set_memory(self, model: str, rss_mb: float, vram_mb: float | None) -> None:
        """Set the model's measured memory (0 when it is unloaded)."""
        self.rss_bytes.labels(model=model).set(rss_mb * _MB)
        self.vram_bytes.labels(model=model).set((vram_mb or 0.0) * _MB)

    def inc_load(self, model: str, warm: bool = False) -> None:
        """Count one worker load, warm (started from a spare) or cold."""
        self.loads.labels(model=model).inc()
        self.starts.labels(model=model, start="warm" if warm else "cold").inc()

    def set_spares(self, counts: dict[str, int], rss_mb: float) -> None:
        """Set how many spares are ready per adapter kind, and their RSS together."""
        for kind, count in counts.items():
            self.spares.labels(kind=kind).set(count)
        self.spare_rss_bytes.set(rss_mb * _MB)

    def inc_unload(self, model: str) -> None:
        """Count one worker stop."""
        self.unloads.labels(model=model).inc()

    def inc_eviction(self, model: str) -> None:
        """Count one unload made to free memory for another model."""
        self.evictions.labels(model=model).inc()

    def inc_crash(self, model: str) -> None:
        """Count one worker that died during a call."""
        self.crashes.labels(model=model).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format (serve with :attr:`content_type`)."""
        return generate_latest(self.registry)
