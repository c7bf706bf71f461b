"""/metrics: the web's and its workers' figures for Prometheus (prometheus_client).

A `Collector` reads the dispatcher's own counters at scrape time, so nothing
is counted twice on the request path; prometheus_client writes the text
exposition format. The workers' figures (handled, failed, handler run time)
arrive with their heartbeats, so one scrape of the web shows the whole system.
Each series carries no process label: with several processes on one port,
see `greenpipe.app` (421) and the README (METRICS_PORT).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector as _Collector

from greenpipe import protocol
from greenpipe.link import CONNECTING, FULL, LEAVING, LOST, READY

if TYPE_CHECKING:
    from greenpipe.dispatcher import Dispatcher

STATES = (CONNECTING, READY, FULL, LEAVING, LOST)
REJECT_REASONS = ("barrier", "no_worker", "max_pending", "stopping", "journal")


WS = ["worker", "state"]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"greenpipe_{name}", doc, value=value)


def _per_worker(kind: type, name: str, doc: str):
    return kind(f"greenpipe_worker_{name}", doc, labels=["worker"])


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs from per-bucket counts (+Inf last)."""
    out, total = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class Collector(_Collector):
    """Everything /metrics shows, read from a dispatcher when scraped."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher

    def collect(self) -> Iterator:
        from greenpipe.dispatcher import LATENCY_BUCKETS

        d = self.d
        for name, value, doc in (
            ("accepted", d.accepted, "Jobs accepted (answered 202, or awaited)."),
            ("acknowledged", d.acked, "Jobs acknowledged by a worker."),
            ("failed", d.failed, "Jobs whose handler raised or timed out."),
            ("resent", d.resent, "Jobs re-sent after their worker was lost."),
            ("dead_lettered", d.dead_letters.count, "Jobs given up on."),
            ("pushed", d.pushed(), "Jobs handed to plain PULL workers."),
            ("replayed", d.replayed, "Jobs replayed from the journal at start."),
            ("redriven", d.redriven, "Dead letters re-sent from the dashboard."),
        ):
            yield CounterMetricFamily(f"greenpipe_jobs_{name}", doc, value=value)
        rejected = CounterMetricFamily(
            "greenpipe_jobs_rejected",
            "Jobs refused with 503, by reason.",
            labels=["reason"],
        )
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], d.rejected_by.get(reason, 0))
        yield rejected
        in_flight = sum(len(link.jobs) for link in d.links)
        yield _gauge(
            "jobs_pending", "Jobs accepted, waiting for a worker.", d.pending()
        )
        yield _gauge("jobs_in_flight", "Jobs sent, not yet acknowledged.", in_flight)
        yield _gauge("barrier_met", "1 once every worker said READY.", d.barrier_met)
        latency = HistogramMetricFamily(
            "greenpipe_job_ack_seconds", "Time from acceptance to acknowledgement."
        )
        counts = _buckets(LATENCY_BUCKETS, d.latency_counts)
        latency.add_metric([], counts, d.latency_sum)
        yield latency
        yield from self._workers()
        yield from self._journal()

    def _workers(self) -> Iterator:
        d = self.d
        now = d.now()
        state = GaugeMetricFamily(
            "greenpipe_worker_state", "1 for each worker's state.", labels=WS
        )
        in_flight = _per_worker(GaugeMetricFamily, "in_flight", "Jobs in flight there.")
        credit = _per_worker(GaugeMetricFamily, "credit", "Jobs it lets this web hold.")
        age = _per_worker(
            GaugeMetricFamily, "last_heartbeat_age_seconds", "Seconds since last heard."
        )
        sent = _per_worker(CounterMetricFamily, "sent", "Jobs this web sent there.")
        acked = _per_worker(
            CounterMetricFamily, "acknowledged", "Jobs it acknowledged."
        )
        handled = _per_worker(
            CounterMetricFamily, "handled", "Jobs it ran, for all webs (its count)."
        )
        failed = _per_worker(CounterMetricFamily, "failed", "Its handlers' failures.")
        refused = _per_worker(
            CounterMetricFamily,
            "refused_handshakes",
            "Handshakes its CURVE allowlist refused (all webs; its count).",
        )
        run = HistogramMetricFamily(
            "greenpipe_worker_handler_seconds",
            "Handler run time as the worker measured it (all its jobs).",
            labels=["worker"],
        )
        for link in d.links:
            name = [link.name]
            current = link.status
            for each in STATES:
                state.add_metric([link.name, each], int(each == current))
            in_flight.add_metric(name, len(link.jobs))
            credit.add_metric(name, link.credit)
            age.add_metric(name, now - link.last_seen if link.last_seen else math.nan)
            sent.add_metric(name, link.sent)
            acked.add_metric(name, link.acked)
            if link.figures is not None:
                done, bad, refusals, run_sum, counts = link.figures
                handled.add_metric(name, done)
                failed.add_metric(name, bad)
                refused.add_metric(name, refusals)
                run.add_metric(name, _buckets(protocol.RUN_BUCKETS, counts), run_sum)
        yield from (state, in_flight, credit, age, sent, acked, handled, failed,
                   refused, run)  # fmt: skip

    def _journal(self) -> Iterator:
        journal = self.d.journal
        info = InfoMetricFamily("greenpipe_journal", "The journal's mode and path.")
        info.add_metric([], {"mode": journal.sync if journal else "off",
                             "path": journal.path if journal else ""})  # fmt: skip
        yield info
        if journal is None:
            return
        yield CounterMetricFamily(
            "greenpipe_journal_written_bytes",
            "Bytes written to the journal.",
            value=journal.bytes_written,
        )
        yield CounterMetricFamily(
            "greenpipe_journal_failures",
            "Journal writes that failed (503s followed).",
            value=journal.failures,
        )
        yield _gauge("journal_healthy", "1 while it can be written.", journal.healthy)


def render(dispatcher: Dispatcher) -> bytes:
    """The text exposition of one dispatcher's figures."""
    registry = getattr(dispatcher, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(dispatcher))
        dispatcher._metrics_registry = registry  # type: ignore[attr-defined]
    return generate_latest(registry)
