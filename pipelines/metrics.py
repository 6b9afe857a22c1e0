"""Prometheus metrics fed by the drivers; live runs serve them on ``/metrics``.

One registry per process (:data:`METRICS`). Event-to-change latency and watermark lag are wall-clock
measures, observed in live runs only (a replay of last year's data would report a year of lag).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class JobMetrics:
    """The job's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "segstream_events",
            "Events by type and outcome (accepted, duplicate, dead_letter)",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "segstream_dead_letters", "Dead letters by reason", ["reason"], registry=self.registry
        )
        self.changes = Counter(
            "segstream_segment_changes",
            "Segment changes by segment and direction",
            ["segment", "change"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "segstream_event_to_change_seconds",
            "Wall-clock time from event time to emitted change (live runs)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.watermark_lag = Gauge(
            "segstream_watermark_lag_seconds",
            "Wall clock minus the event-time watermark (live runs)",
            registry=self.registry,
        )

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``address:port`` in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)


METRICS = JobMetrics()
