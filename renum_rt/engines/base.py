"""The storage and fan-out interface every engine implements.

A gateway node never cares which engine it runs on (Centrifuge's broker/presence
split, in one interface). The engine owns what must outlive a connection: channel
history, the durable per-user queue and its ack cursor, the latest state of execution
channels, the ids of idempotent publishes, cluster presence. It also owns fan-out:
``publish`` stores an event and then hands it to the listener of *every* node sharing
the engine, this one included, so the live path is the same with one process or many.

Every method may raise ``EngineUnavailable`` when the store cannot be reached or cannot
take writes now; callers turn that into ``unavailable`` errors and HTTP 503, never into a
half-accepted publish.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .inbox import Inbox

#: ``on_event(channel, event_id, frame)``: ``frame`` is the UTF-8 JSON of the ``event``
#: frame, encoded once by the node that published it.
EventListener = Callable[[str, str, bytes], None]
#: ``on_control(message)``: a cluster-wide command such as an admin disconnect.
ControlListener = Callable[[dict[str, Any]], None]
#: ``on_resync(since, channels)``: the live feed of ``channels`` (None: of every channel)
#: was interrupted (a lost Redis connection); events published meanwhile are in history
#: but were not fanned out to this node. ``since`` is an event id (on the store's clock)
#: before which nothing was missed, for channels on which this node has not seen an
#: event yet. The feed is back once ``listen`` returns for the channel.
ResyncListener = Callable[[str, "frozenset[str] | None"], None]


#: how long an Idempotency-Key's ids are kept when the caller does not say
IDEMPOTENCY_TTL_S = 24 * 3600
#: admin actions the audit log keeps (the newest ones)
AUDIT_MAX = 1000


class EngineUnavailable(Exception):
    """The store is unreachable or refuses writes now. A refused call changed nothing;
    a call whose reply was lost (a timeout) may have taken effect, which is why a publish
    that must happen once carries an idempotency key."""


class AckRefused(Exception):
    """An ``ack`` names an id after the newest event stored on its channel: the client
    cannot have seen it, and storing it would hide every later event."""


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event on one channel."""

    channel: str
    id: str
    ts: int
    name: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publication:
    """One event to publish (the arguments of ``Engine.publish``), as an item of
    ``Engine.publish_batch``."""

    channels: Sequence[str]
    name: str
    data: dict[str, Any]
    ts: int
    idempotency_key: str | None = None
    ttl_s: int = IDEMPOTENCY_TTL_S


@dataclass(frozen=True, slots=True)
class Replay:
    """Events after a given id, oldest first.

    ``complete`` is False when retention already dropped events that came after that
    id, so the caller cannot promise "no gap" (``recovered: false`` on the wire).
    """

    events: list[Event]
    complete: bool


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history each channel keeps: at most ``max_len`` events, none older
    than ``max_age_s`` seconds (0 = no age limit)."""

    max_len: int = 1000
    max_age_s: int = 7 * 24 * 3600


class Engine(abc.ABC):
    """Storage + fan-out. Implementations: ``MemoryEngine`` and ``RedisEngine``."""

    name: str = "abstract"
    #: ``EngineUnavailable`` raised so far (``/metrics`` reports it)
    failures: int = 0
    #: fan-out messages, and their bytes, this node received from the store's live feed
    #: (a cluster sends a node only the channels it listens to: these show it)
    feed_messages: int = 0
    feed_bytes: int = 0
    #: the users' notification inboxes, kept in the same store (``inbox.py``)
    inbox: Inbox

    def __init__(self) -> None:
        self._on_event: EventListener = lambda channel, event_id, frame: None
        self._on_control: ControlListener = lambda message: None
        self._on_resync: ResyncListener = lambda since, channels: None

    def set_listeners(self, on_event: EventListener, on_control: ControlListener, on_resync: ResyncListener) -> None:
        """Where this node receives every published event, every control message, and
        the news that its live feed was interrupted and is back."""
        self._on_event = on_event
        self._on_control = on_control
        self._on_resync = on_resync

    async def start(self) -> None:  # noqa: B027 - optional: an engine with nothing to connect keeps it
        """Connect and begin receiving fan-out. Must not fail if the store is down."""

    async def close(self) -> None:  # noqa: B027 - optional, like start
        """Stop receiving and release connections."""

    async def listen(self, channel: str) -> None:  # noqa: B027 - optional, like start
        """Return once this node receives ``channel``'s events: an event published after
        this returns reaches the event listener, so a history read made then misses
        nothing. Called while the node has subscribers of ``channel``, before reading its
        history; may raise ``EngineUnavailable``. Engines whose nodes receive every
        channel (memory, one Redis primary) return at once."""

    def unlisten(self, channel: str) -> None:  # noqa: B027 - optional, like start
        """This node no longer has subscribers of ``channel``."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers and takes writes (what ``/healthz`` reports)."""

    @abc.abstractmethod
    async def publish(self, channels: Sequence[str], name: str, data: dict[str, Any], ts: int,
                      idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S) -> dict[str, str]:
        """Store one event on each channel, then fan it out; return ``{channel: id}``.

        Returns only once every copy is stored (durably, for a durable engine). Either
        every channel gets the event or, on ``EngineUnavailable``, none is promised.
        Channels that keep a latest state (``channels.keeps_latest``) update it here.
        Listeners may be called before this returns (memory) or after (Redis); a
        failing listener never turns a stored event into an error.

        With ``idempotency_key``, the ids are kept under the key for ``ttl_s`` seconds in
        the same atomic step that stores the events, and a publish whose key already
        holds ids returns them, storing and fanning out nothing. There is no "in
        progress" state: a retry after a lost reply gets the first ids, and a retry of a
        publish that never ran publishes.
        """

    @abc.abstractmethod
    async def publish_batch(self, items: Sequence[Publication]) -> list[dict[str, str]]:
        """``publish`` for each item, in order, each with its own idempotency key; return
        each item's ids. Every guarantee of ``publish`` holds per item (a key already
        holding ids returns them, two items with one key store once), and so does
        all-or-nothing for the batch: on ``EngineUnavailable`` no item is promised."""

    @abc.abstractmethod
    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        """At most ``limit`` retained events with an id after ``since`` (all retained
        ones when ``since`` is None), oldest first; when more are retained, the newest
        ``limit``. ``complete`` is False whenever the engine cannot prove there is no
        gap after ``since`` (retention dropped events, an expired stream, the limit,
        or a ``since`` after the newest stored id, which the store has not handed out)."""

    @abc.abstractmethod
    async def latest(self, channel: str) -> Event | None:
        """The last event stored on a channel that keeps its latest state (kept as
        long as the channel's history is, within retention)."""

    @abc.abstractmethod
    async def ack(self, channel: str, event_id: str) -> str:
        """Move the channel's ack cursor forward to ``event_id`` (never backwards);
        return the cursor after the move (concurrent acks of a channel may move it
        together: the newest wins). Raise ``AckRefused``, changing nothing for this
        caller, when ``event_id`` is after the newest id stored on the channel."""

    @abc.abstractmethod
    async def cursor(self, channel: str) -> str | None:
        """The channel's ack cursor, None if nothing was ever acknowledged."""

    @abc.abstractmethod
    async def control(self, message: dict[str, Any]) -> None:
        """Send a control message to every node (this one included)."""

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, stats: dict[str, Any], ttl_s: int) -> None:
        """Publish this node's statistics; they expire after ``ttl_s`` without renewal."""

    @abc.abstractmethod
    async def nodes(self) -> list[dict[str, Any]]:
        """The latest statistics of every live node."""

    @abc.abstractmethod
    async def connection_opened(self, node_id: str, user_id: str, limit: int) -> bool:
        """Count one more connection of ``user_id`` across all nodes, unless that would
        pass ``limit``: then count nothing and return False."""

    @abc.abstractmethod
    async def connection_closed(self, node_id: str, user_id: str) -> None:
        """Undo one ``connection_opened`` that returned True."""

    @abc.abstractmethod
    async def audit_append(self, entry: dict[str, Any]) -> None:
        """Add one admin action to the audit log shared by every node; the log keeps
        the newest ``AUDIT_MAX`` entries."""

    @abc.abstractmethod
    async def audit_list(self, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` audit entries, newest first."""
