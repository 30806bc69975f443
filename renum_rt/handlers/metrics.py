"""``GET /metrics``: the node's figures in the Prometheus text format.

The text is made by prometheus_client from a registry of this node alone (several
nodes run in one test process, and the library's global registry would mix them).
The counters stay plain integers of ``metrics.Metrics``, incremented on the hot paths;
``NodeCollector`` turns them into metric families only when Prometheus scrapes.

Who may read it: a caller with an API key (``Authorization: Bearer <key>``), or one
whose address is in ``metrics_allowed_addresses`` (a Prometheus on a private network
that holds no key).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..gateway import Gateway
from .base import HttpError, JsonHandler, keys_match

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NodeCollector(Collector):
    """Reads the gateway's counters and state at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        g, m = self.gateway, self.gateway.metrics
        yield from _gauges({
            "connections": ("WebSocket connections admitted on this node", len(g.registry)),
            "users": ("users with at least one connection on this node", len(g.registry.by_user)),
            "channels": ("channels with a subscriber on this node", len(g.hub.channels())),
            "subscriptions": ("subscriptions of this node's connections",
                              sum(g.hub.subscriber_count(channel) for channel in g.hub.channels())),
            "engine_up": ("1 when the last heartbeat reached the engine (Redis), else 0", int(g.cluster.engine_ok)),
            "event_loop_lag_seconds": ("how late the event loop ran its last lag probe", m.loop_lag_s),
            "uptime_seconds": ("seconds since this node started", time.time() - g.cluster.started_at),
        })
        received = CounterMetricFamily("renum_rt_messages_in", "client frames received, by type (refused: "
                                       "invalid, too large or rate limited)", labels=["type"])
        for kind, count in sorted(m.frames_in.items()):
            received.add_metric([kind], count)
        received.add_metric(["refused"], m.messages_in - sum(m.frames_in.values()))
        yield received
        sent = CounterMetricFamily("renum_rt_messages_out", "frames sent, by type (event: fanned-out events)",
                                   labels=["type"])
        for kind, count in sorted(m.sent.items()):
            sent.add_metric([kind], count)
        sent.add_metric(["event"], m.delivered)
        yield sent
        closes = CounterMetricFamily("renum_rt_closes", "WebSocket closes, by close code (none: no close frame)",
                                     labels=["code"])
        for code, count in sorted(m.closes.items(), key=lambda item: item[0] or 0):
            closes.add_metric([str(code) if code is not None else "none"], count)
        yield closes
        yield from _counters({
            "published": ("publish requests stored", m.published),
            "rate_limited": ("client frames and connections refused with rate_limited", m.rate_limited),
            "auth_failures": ("tokens refused (URL, auth frame, refresh, admin API)", m.auth_failures),
            "engine_errors": ("engine (Redis) commands that failed: unreachable or refusing writes",
                              g.engine.failures),
            "engine_feed_messages": ("fan-out messages received from the engine's live feed (Redis pub/sub)",
                                     g.engine.feed_messages),
            "engine_feed_bytes": ("bytes of those messages", g.engine.feed_bytes),
            "resyncs": ("history re-reads after the engine's live feed was interrupted", m.resyncs),
            "internal_errors": ("client frames and connects that failed with an unexpected error", m.internal_errors),
            "notifications_created": ("notifications stored (one per user; an announcement once)",
                                      m.notifications_created),
            "notifications_read": ("notifications marked read", m.notifications_read),
        })
        yield from m.publish_seconds.collect()
        yield from m.fanout_seconds.collect()


def _gauges(figures: dict[str, tuple[str, float]]) -> Iterator[Metric]:
    for name, (text, value) in figures.items():
        yield GaugeMetricFamily(f"renum_rt_{name}", text, value=value)


def _counters(figures: dict[str, tuple[str, float]]) -> Iterator[Metric]:
    for name, (text, value) in figures.items():
        yield CounterMetricFamily(f"renum_rt_{name}", text, value=value)


def node_registry(gateway: Gateway) -> CollectorRegistry:
    """A registry of this node's metrics alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(gateway))
    return registry


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``metrics_allowed_addresses`` as networks (an address is a network of one)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


class MetricsHandler(JsonHandler):
    def initialize(self, gateway: Gateway, registry: CollectorRegistry,  # type: ignore[override]
                   allowed: tuple[Network, ...]) -> None:
        super().initialize(gateway)
        self.registry = registry
        self.allowed = allowed

    def _address_allowed(self) -> bool:
        try:
            address = ipaddress.ip_address(self.request.remote_ip or "")
        except ValueError:
            return False
        return any(address in network for network in self.allowed)

    def get(self) -> None:
        try:
            if not self._address_allowed():
                key = self.bearer()
                if not keys_match(key, self.gateway.settings.api_key):
                    raise HttpError(401, "unauthorized", "unknown API key")
        except HttpError as error:
            self.fail(error)
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.registry))
