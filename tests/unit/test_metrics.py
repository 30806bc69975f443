"""``metrics.Latencies`` against prometheus_client's ``Histogram``: same scrape text for
the same observations (it replaces it on the hot path, docs/benchmarks.md section 2)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric

from renum_rt.metrics import LATENCY_BUCKETS, Latencies

OBSERVED = [0.0, 0.0004, 0.0005, 0.003, 0.01, 0.7, 5.0, 9.5]  # bounds themselves and past the last one


class _Families:
    def __init__(self, *histograms: Latencies | Histogram) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for histogram in self.histograms:
            yield from histogram.collect()


def scrape(*histograms: Latencies | Histogram) -> tuple[list[str], list[str]]:
    """The exposition lines, without and with ``_created`` (a time, which differs)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(*histograms))
    lines = generate_latest(registry).decode().splitlines()
    created = [line for line in lines if "_created" in line and not line.startswith("#")]
    return [line for line in lines if "_created" not in line], created


def test_an_unlabelled_histogram_scrapes_as_prometheus_client_does() -> None:
    ours = Latencies("x_seconds", "doc")
    theirs = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=None)
    assert scrape(ours)[0] == scrape(theirs)[0]  # nothing observed yet: zero buckets, as theirs
    for seconds in OBSERVED:
        ours.observe(seconds)
        theirs.observe(seconds)
    lines, created = scrape(ours)
    assert lines == scrape(theirs)[0]
    assert len(created) == 1


def test_a_labelled_histogram_has_one_series_per_value_observed() -> None:
    ours = Latencies("y_seconds", "doc", "route")
    theirs = Histogram("y_seconds", "doc", ["route"], buckets=LATENCY_BUCKETS, registry=None)
    assert scrape(ours)[0] == scrape(theirs)[0]
    for i, seconds in enumerate(OBSERVED):
        route = "/a" if i % 3 else "/b"
        ours.observe(seconds, route)
        theirs.labels(route).observe(seconds)
    lines, created = scrape(ours)
    assert lines == scrape(theirs)[0]
    assert len(created) == 2
