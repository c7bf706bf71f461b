"""The dashboard's memory: the web's counters sampled once a second, as rates.

Sampled by the web (a greenlet per pipe, started with it when DASHBOARD is
on), not by the page, so a page opened now shows the last `HISTORY_S`
seconds at once, and rates and latency percentiles are computed here, where
they can be tested, not in the browser.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent

from greenpipe.books import LATENCY_BUCKETS, Snapshot

HISTORY_S = 300  # samples kept (one a second: five minutes)
TICK_S = 1.0


def percentile(bounds: Sequence[float], counts: Sequence[int], q: float):
    """The upper bound of the bucket holding quantile `q` (None if no data).

    `counts` has one more entry than `bounds` (+Inf); a quantile in it reads
    as the last finite bound (the page says "≥").
    """
    total = sum(counts)
    if not total:
        return None
    want, seen = q * total, 0
    for bound, count in zip((*bounds, bounds[-1]), counts, strict=True):
        seen += count
        if seen >= want:
            return bound
    return bounds[-1]


class History:
    """A sample of a pipe's counters every `tick` seconds, as rates."""

    def __init__(
        self,
        source: Callable[[], Snapshot],
        keep: int = HISTORY_S,
        tick: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.tick = tick
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self._clock = clock
        self._last: tuple | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.sample()
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(self.tick)  # a timer, not a wait for an event
            self.sample()

    def sample(self) -> dict[str, Any] | None:
        """Take one sample; the rates since the previous one (None the first time)."""
        s, now = self.source(), self._clock()
        counters = (s.accepted, s.acked, s.failed, s.resent, s.rejected)
        per_worker = tuple(worker.report["acked"] for worker in s.workers)
        latency = s.latency_counts
        last, self._last = self._last, (now, counters, per_worker, latency)
        if last is None:
            return None
        then, before, workers_before, latency_before = last
        span = max(now - then, 1e-6)

        def rate(a: int, b: int) -> float:
            return round(max(a - b, 0) / span, 1)

        window = [a - b for a, b in zip(latency, latency_before, strict=True)]
        sample = {
            "t": round(now, 3),
            **dict(
                zip(
                    ("accepted", "acked", "failed", "resent", "rejected"),
                    map(rate, counters, before),
                    strict=True,
                )
            ),  # fmt: skip
            "workers": [
                rate(a, b) for a, b in zip(per_worker, workers_before, strict=False)
            ],  # fmt: skip
            "p50": percentile(LATENCY_BUCKETS, window, 0.5),
            "p99": percentile(LATENCY_BUCKETS, window, 0.99),
            "pending": s.pending,
            "in_flight": s.in_flight,
            "credit": s.credit,
        }
        self.samples.append(sample)
        return sample

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]
