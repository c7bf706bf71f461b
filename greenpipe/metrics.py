"""/metrics: the web's and its workers' figures for Prometheus (prometheus_client).

A `Collector` reads a `Snapshot` of the web's books at scrape time, so nothing
is counted twice on the request path; prometheus_client writes the text
exposition format. The workers' figures (handled, failed, handler run time)
arrive with their heartbeats, so one scrape of the web shows the whole system.
Each series carries no process label: with several processes on one port,
see `greenpipe.routes` (421) and the README (METRICS_PORT).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector as _Collector

from greenpipe import protocol
from greenpipe.books import LATENCY_BUCKETS, REJECT_REASONS, Snapshot
from greenpipe.link import LinkState

WS = ["worker", "state"]
OWN_LABELS = 20  # names no worker announced (a default handler's) labelled as such
OTHER = ""  # the names past those: job="" (a job's name is never empty)


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
    """Everything /metrics shows, read from one `Snapshot` per scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source
        self._labelled: set[str] = set()  # job names with a label of their own

    def collect(self) -> Iterator:
        s = self.source()
        for name, value, doc in (
            ("accepted", s.accepted, "Jobs accepted (answered 202, or awaited)."),
            ("acknowledged", s.acked, "Jobs acknowledged by a worker."),
            ("failed", s.failed, "Jobs whose handler raised or timed out."),
            ("resent", s.resent, "Jobs re-sent after their worker was lost."),
            ("dead_lettered", s.dead_lettered, "Jobs given up on."),
            ("pushed", s.pushed, "Jobs handed to plain PULL workers."),
            ("replayed", s.replayed, "Jobs replayed from the journal at start."),
            ("redriven", s.redriven, "Kept jobs re-sent (dashboard, resend)."),
            ("retried", s.retried, "Runs that failed and were held for a retry."),
            ("cancelled", s.cancelled, "Jobs cancelled."),
        ):
            yield CounterMetricFamily(f"greenpipe_jobs_{name}", doc, value=value)
        rejected = CounterMetricFamily(
            "greenpipe_jobs_rejected",
            "Jobs refused with 503, by reason.",
            labels=["reason"],
        )
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], s.rejected_by.get(reason, 0))
        yield rejected
        yield _gauge("jobs_pending", "Jobs accepted, waiting for a worker.", s.pending)
        by_queue = GaugeMetricFamily(
            "greenpipe_jobs_pending_by_queue",
            "Jobs accepted, waiting for a worker, by queue.",
            labels=["queue"],
        )
        for queue, count in s.pending_by_queue.items():
            by_queue.add_metric([queue], count)
        yield by_queue
        yield _gauge("jobs_in_flight", "Jobs sent, not yet acknowledged.", s.in_flight)
        yield _gauge(
            "jobs_waiting", "Jobs held until a time (retries' backoff).", s.waiting
        )
        yield _gauge("barrier_met", "1 once every worker said READY.", s.barrier)
        latency = HistogramMetricFamily(
            "greenpipe_job_ack_seconds", "Time from acceptance to acknowledgement."
        )
        counts = _buckets(LATENCY_BUCKETS, s.latency_counts)
        latency.add_metric([], counts, s.latency_sum)
        yield latency
        yield from self._by_name(s)
        yield from self._workers(s)
        yield from self._journal(s.journal)

    def _by_name(self, s: Snapshot) -> Iterator:
        """The ack latency and failures by job name (label ``job``), bounded:
        the names the workers announce, then the first `OWN_LABELS` others
        (a default handler's), the rest under "other"."""
        announced = {name for w in s.workers for name in w.report["serves"]["names"]}
        labelled = self._labelled  # once a name has its label, it keeps it
        width = len(LATENCY_BUCKETS) + 1
        merged: dict[str, list[float]] = {}
        for name, figures in s.by_name.items():
            if name and name not in labelled:
                others = len(labelled - announced)
                if name in announced or others < OWN_LABELS:
                    labelled.add(name)
            label = name if name in labelled else OTHER
            into = merged.setdefault(label, [0.0] * (width + 2))
            for i, value in enumerate(figures):
                into[i] += value
        latency = HistogramMetricFamily(
            "greenpipe_job_ack_by_name_seconds",
            "Time from acceptance to acknowledgement, by job name.",
            labels=["job"],
        )
        failed = CounterMetricFamily(
            "greenpipe_jobs_failed_by_name",
            "Jobs whose handler raised or timed out on their last run, by job name.",
            labels=["job"],
        )
        for label, figures in merged.items():
            counts = [int(c) for c in figures[:width]]
            latency.add_metric([label], _buckets(LATENCY_BUCKETS, counts), figures[-2])
            failed.add_metric([label], figures[-1])
        yield latency
        yield failed

    def _workers(self, s: Snapshot) -> Iterator:
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
        overrunning = _per_worker(
            GaugeMetricFamily,
            "overrunning",
            "Its handlers running past their time limit now (all webs).",
        )
        run = HistogramMetricFamily(
            "greenpipe_worker_handler_seconds",
            "Handler run time as the worker measured it (all its jobs).",
            labels=["worker"],
        )
        for worker in s.workers:
            report = worker.report
            name = [report["endpoint"]]
            current = report["state"]
            for each in LinkState:
                state.add_metric([report["endpoint"], each.value],
                                 int(each == current))  # fmt: skip
            in_flight.add_metric(name, report["in_flight"])
            credit.add_metric(name, report["credit"])
            seconds = worker.heartbeat_age
            age.add_metric(name, math.nan if seconds is None else seconds)
            sent.add_metric(name, report["sent"])
            acked.add_metric(name, report["acked"])
            if worker.figures is not None:
                figures = worker.figures
                handled.add_metric(name, figures.handled)
                failed.add_metric(name, figures.failed)
                refused.add_metric(name, figures.refused)
                overrunning.add_metric(name, figures.overrunning)
                counts = _buckets(protocol.RUN_BUCKETS, figures.run_counts)
                run.add_metric(name, counts, figures.run_sum)
        yield from (state, in_flight, credit, age, sent, acked, handled, failed,
                   refused, overrunning, run)  # fmt: skip

    def _journal(self, journal: dict) -> Iterator:
        on = journal.get("mode", "off") != "off"
        info = InfoMetricFamily("greenpipe_journal", "The journal's mode and path.")
        info.add_metric([], {"mode": journal.get("mode", "off"),
                             "path": journal.get("path", "")})  # fmt: skip
        yield info
        if not on:
            return
        yield CounterMetricFamily(
            "greenpipe_journal_written_bytes",
            "Bytes written to the journal.",
            value=journal["bytes_written"],
        )
        yield CounterMetricFamily(
            "greenpipe_journal_failures",
            "Journal writes that failed (503s followed).",
            value=journal["failures"],
        )
        yield _gauge(
            "journal_healthy", "1 while it can be written.", journal["healthy"]
        )


class Exposition:
    """One pipe's /metrics: a registry of its own, rendered per scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
