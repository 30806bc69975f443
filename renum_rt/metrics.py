"""The node's counters, in one place.

Every figure the admin statistics (and, later, ``/metrics``) report is counted here
and nowhere else: the WebSocket adapter counts frames in and out, the hub counts
fan-out deliveries, the gateway counts publishes, refusals and errors. Counters are
plain integers so that counting costs an attribute increment on the hot path; the
exporters read them when asked.
"""

from __future__ import annotations

from typing import Any


class Metrics:
    __slots__ = ("messages_in", "messages_out", "delivered", "rate_limited", "published", "auth_failures",
                 "resyncs")

    def __init__(self) -> None:
        #: client frames received
        self.messages_in = 0
        #: frames sent to one connection (replies, errors, replays)
        self.messages_out = 0
        #: live events handed to connections by the fan-out
        self.delivered = 0
        #: client frames and connections refused with ``rate_limited``
        self.rate_limited = 0
        #: publish requests stored
        self.published = 0
        #: tokens refused (URL, auth frame, refresh)
        self.auth_failures = 0
        #: re-reads of history after an interrupted live feed
        self.resyncs = 0

    def snapshot(self) -> dict[str, Any]:
        """The figures the statistics report, with ``messages_out`` covering fan-out."""
        return {
            "messages_in": self.messages_in,
            "messages_out": self.messages_out + self.delivered,
            "rate_limited": self.rate_limited,
            "published": self.published,
            "auth_failures": self.auth_failures,
            "resyncs": self.resyncs,
        }
