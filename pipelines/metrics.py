"""Prometheus metrics fed by every driver; the run summary is read back from them.

One registry per process (:data:`METRICS`); live runs serve it on ``/metrics``. Event-to-change
latency and watermark lag are wall-clock measures, observed in live runs only (a replay of last
year's data would report a year of lag). On a distributed runner each worker process has its own
registry; the summary printed by the command line covers in-process runners (DirectRunner, core).
"""

from __future__ import annotations

import time
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from transforms.changes import SegmentChange
from transforms.customer import Step
from transforms.dead_letters import DeadLetter
from transforms.summary import RunCounts

PRIVACY_COUNTS = {  # metric -> run count
    "segstream_events_no_consent": "no_consent",
    "segstream_consent_revocations": "consent_revocations",
    "segstream_forgets": "forgets",
}


class JobMetrics:
    """The job's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_in = Counter("segstream_events_in", "Records read from the sources", registry=self.registry)
        self.events = Counter(
            "segstream_events",
            "Events by type and outcome (accepted, duplicate)",
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
        self.customers = Counter(
            "segstream_customers_finalized", "Customers whose final profile was written", registry=self.registry
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
        self.webhook_deliveries = Counter(
            "segstream_webhook_deliveries",
            "Webhook delivery outcomes by subscriber: delivered, retried (a retryable failure, retry scheduled), "
            "failed (a permanent answer), dead_lettered (given up: permanent answer or max retry age)",
            ["subscriber", "outcome"],
            registry=self.registry,
        )
        self.identity_merges = Counter(
            "segstream_identity_merges", "Customers absorbed into another by identity stitching", registry=self.registry
        )
        self.identity_refused = Counter(
            "segstream_identity_refused_links",
            "Links identity stitching refused, by reason: shared (an identifier of several people), "
            "user_conflict (two user ids), cap (a customer with too many identifiers)",
            ["reason"],
            registry=self.registry,
        )
        self.no_consent = Counter(
            "segstream_events_no_consent",
            "Accepted events not profiled: their customer has not granted consent.personalization",
            registry=self.registry,
        )
        self.consent_revocations = Counter(
            "segstream_consent_revocations",
            "Customers whose consent.personalization was revoked",
            registry=self.registry,
        )
        self.forgets = Counter(
            "segstream_forgets", "Customers forgotten (forget events; segstream forget)", registry=self.registry
        )
        self.model_updates = Gauge(
            "segstream_model_updates", "Labelled examples each model has learnt", ["task"], registry=self.registry
        )
        self.model_auc = Gauge(
            "segstream_model_auc",
            "Progressive-validation ROC AUC over the last models.validation_window labels",
            ["task"],
            registry=self.registry,
        )
        self.model_log_loss = Gauge(
            "segstream_model_log_loss",
            "Progressive-validation log loss (same window)",
            ["task"],
            registry=self.registry,
        )
        self.model_calibration_error = Gauge(
            "segstream_model_calibration_error",
            "Progressive-validation expected calibration error (same window)",
            ["task"],
            registry=self.registry,
        )
        self.model_scored_beyond = Gauge(
            "segstream_model_scores_beyond_labels",
            "Scores computed at a longer silence than any learnt label had (the models extrapolate there)",
            ["task"],
            registry=self.registry,
        )
        self.models: dict[str, Any] = {}  # the latest model summary, per task (for the run summary)
        self.live = False

    def record_models(self, summary: dict[str, dict[str, Any]]) -> None:
        """Model quality from :meth:`online_models.Models.summary` (gauges and the run summary)."""
        self.models = summary
        for task, figures in summary.items():
            validation = figures["validation"]
            self.model_updates.labels(task).set(figures["n_updates"])
            self.model_scored_beyond.labels(task).set(figures["silence"]["scored_beyond"])
            for gauge, key in (
                (self.model_auc, "roc_auc"),
                (self.model_log_loss, "log_loss"),
                (self.model_calibration_error, "expected_calibration_error"),
            ):
                if validation.get(key) is not None:
                    gauge.labels(task).set(validation[key])

    def record_step(self, step: Step) -> None:
        """Count what one keyed step did."""
        for event in step.accepted:
            self.events.labels(event.type, "accepted").inc()
        for event in step.duplicates:
            self.events.labels(event.type, "duplicate").inc()
        for change in step.changes:
            self.record_change(change)
        if step.no_consent or step.revocations or step.forgotten:
            self.no_consent.inc(len(step.no_consent))
            self.consent_revocations.inc(step.revocations)
            self.forgets.inc(len(step.forgotten))

    def record_change(self, change: SegmentChange) -> None:
        self.changes.labels(change.segment, change.change).inc()
        if self.live:
            self.latency.observe(max(0.0, time.time() - change.event_time / 1000))

    def record_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.labels(letter.reason).inc()

    def snapshot(self) -> RunCounts:
        """Totals so far, as :class:`RunCounts` (subtract an earlier snapshot for one run)."""
        counts = RunCounts()
        for metric in self.registry.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                n = int(sample.value)
                labels = sample.labels
                if metric.name == "segstream_events_in":
                    counts.add("events_in", n)
                elif metric.name == "segstream_events":
                    counts.add("accepted" if labels["outcome"] == "accepted" else "duplicates", n)
                elif metric.name == "segstream_dead_letters":
                    counts.add_dead_letter(labels["reason"], n)
                elif metric.name == "segstream_segment_changes":
                    counts.add_change(labels["segment"], labels["change"], n)
                elif metric.name == "segstream_customers_finalized":
                    counts.add("customers", n)
                elif metric.name in PRIVACY_COUNTS:
                    counts.add(PRIVACY_COUNTS[metric.name], n)
        return counts

    def serve(self, port: int, address: str = "127.0.0.1") -> WSGIServer:
        """Serve ``/metrics`` on ``address:port`` in a background thread; return the server (its
        ``server_address`` is where it listens; ``shutdown()`` stops it). Loopback by default: the
        metrics carry no personal data, but nothing outside the machine needs them unless told so."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server


METRICS = JobMetrics()
