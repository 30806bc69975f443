"""The node's counters, in one place.

Every figure the admin statistics and ``/metrics`` report is counted here and nowhere
else: the WebSocket adapter counts frames in and out (by type) and close codes, the hub
counts fan-out deliveries, the gateway counts publishes, refusals and errors. Counters
are plain integers (or dicts of them, keyed by a frame type or a close code) so that
counting costs an attribute increment on the hot path; ``handlers/metrics.py`` reads
them when Prometheus scrapes. The two latencies are ``Latencies`` histograms, observed
once per publish request and once per event fanned out, never once per connection.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

#: seconds; from sub-millisecond (memory engine) to a Redis in trouble
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: routes whose successful answers are publish latencies
PUBLISH_ROUTES = frozenset({"/api/v1/publish", "/api/v1/publish/batch", "/api/v1/broadcast",
                            "/api/v1/notifications"})

#: ``deliver(channel, event_id, payload)``, the engine's event listener
Deliver = Callable[[str, str, bytes], None]


class Latencies:
    """A latency histogram whose ``observe`` is a bisect and two additions.

    Why not prometheus_client's ``Histogram``: it takes a lock for its sum and one for its
    bucket on every observation, which made 12% of the server's CPU on the batch publish
    route (the fan-out observes once per event; docs/benchmarks.md, section 2). Only the
    event loop observes, so plain numbers are enough; ``collect`` hands Prometheus the
    same family (buckets, count, sum and ``_created``) at scrape time.
    With ``label``, each value of that label is its own series (``observe(s, value)``).
    """

    __slots__ = ("name", "documentation", "label", "bounds", "_series")

    def __init__(self, name: str, documentation: str, label: str | None = None,
                 bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = bounds
        #: label value -> (count per bucket, the last one past every bound; [sum, created]);
        #: without a label, its one series is there from the start, as in prometheus_client
        self._series: dict[str, tuple[list[int], list[float]]] = {} if label else {"": self._new()}

    def _new(self) -> tuple[list[int], list[float]]:
        return [0] * (len(self.bounds) + 1), [0.0, time.time()]

    def observe(self, seconds: float, label_value: str = "") -> None:
        series = self._series.get(label_value)
        if series is None:
            series = self._series[label_value] = self._new()
        series[0][bisect_left(self.bounds, seconds)] += 1
        series[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        """One histogram family, with a series per label value observed so far."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label] if self.label else None)
        upper = [*map(floatToGoString, self.bounds), "+Inf"]
        for value, (counts, (total, created)) in self._series.items():
            labels = {self.label: value} if self.label else {}
            buckets = list(zip(upper, map(float, accumulate(counts)), strict=True))
            family.add_metric(list(labels.values()), buckets, total)
            family.add_sample(self.name + "_created", labels, created)
        yield family


class Metrics:
    __slots__ = ("messages_in", "frames_in", "sent", "delivered", "rate_limited", "published", "auth_failures",
                 "resyncs", "internal_errors", "closes", "notifications_created", "notifications_read", "loop_lag_s",
                 "publish_seconds", "fanout_seconds")

    def __init__(self) -> None:
        #: client frames received (valid or not)
        self.messages_in = 0
        #: valid client frames, by type (the rest of ``messages_in`` was refused)
        self.frames_in: dict[str, int] = {}
        #: frames sent to one connection (replies, errors, replays), by type
        self.sent: dict[str, int] = {}
        #: live events handed to connections by the fan-out
        self.delivered = 0
        #: client frames and connections refused with ``rate_limited``
        self.rate_limited = 0
        #: publish requests stored
        self.published = 0
        #: tokens refused (URL, auth frame, refresh, admin API)
        self.auth_failures = 0
        #: re-reads of history after an interrupted live feed
        self.resyncs = 0
        #: client frames that failed with an unexpected exception
        self.internal_errors = 0
        #: WebSocket closes by code (None: the connection dropped without a close frame)
        self.closes: dict[int | None, int] = {}
        #: notifications stored (one per user; an announcement counts once) and marked read
        self.notifications_created = 0
        self.notifications_read = 0
        #: how late the event loop ran the last ``LoopLag`` tick, in seconds
        self.loop_lag_s = 0.0
        # each node's /metrics registry collects them (tests run several nodes)
        self.publish_seconds = Latencies("renum_rt_publish_seconds", "Time to store and answer a publish request",
                                         "route")
        self.fanout_seconds = Latencies("renum_rt_fanout_seconds",
                                        "Age of an event (from its id) when this node has handed it to its "
                                        "subscribers")

    @property
    def messages_out(self) -> int:
        """Every frame sent: replies and errors, and events from the fan-out."""
        return sum(self.sent.values()) + self.delivered

    def snapshot(self) -> dict[str, Any]:
        """The figures the statistics report."""
        return {
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "rate_limited": self.rate_limited,
            "published": self.published,
            "auth_failures": self.auth_failures,
            "resyncs": self.resyncs,
            "internal_errors": self.internal_errors,
        }

    def timed_fanout(self, deliver: Deliver) -> Deliver:
        """``deliver`` that also observes, per event, how old the event is once this node
        has handed it to its subscribers. An id is ``<ms>-<seq>`` on the store's clock,
        so the age covers storing, the trip through the engine and the local fan-out
        (clock skew between a Redis host and this one shows too, floored at 0)."""
        observe = self.fanout_seconds.observe

        def timed(channel: str, event_id: str, payload: bytes) -> None:
            deliver(channel, event_id, payload)
            stored_ms = event_id.partition("-")[0]
            if stored_ms.isdigit():
                observe(max(0.0, time.time() - int(stored_ms) / 1000))

        return timed

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """A finished HTTP request: the publish routes' successes are publish latencies."""
        if status == 200 and path in PUBLISH_ROUTES:
            self.publish_seconds.observe(seconds, path)


class LoopLag:
    """Measures event-loop lag: how late a callback scheduled ``interval_s`` ahead runs.

    A loop busy with a long step (a big replay, a slow listener) delays every
    connection by that much; this is the figure that shows it."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.5) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.metrics.loop_lag_s = max(0.0, now - self._due)
        self._due = now + self.interval_s
        self._handle = loop.call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
