"""Settings: built-in defaults < TOML file < environment, validated once at start.

Every setting is a field of ``Settings``; its TOML key is the field name and its
environment variable is ``RENUM_RT_`` + the upper-cased name (``api_key`` →
``RENUM_RT_API_KEY``). ``config/renum-rt.toml`` lists them all with their defaults.
A bad value stops the server at start with a message naming the key, never later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .resources import default_config

ENV_PREFIX = "RENUM_RT_"
DEFAULT_CONFIG = default_config()


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    #: public origin of this server (for the default Origin allow-list); derived when empty
    public_origin: str = ""
    allowed_origins: tuple[str, ...] = ()

    # -- user tokens
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwks_url: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: int = 30
    jwks_cache_s: float = 600.0
    admin_claim: str = "app_metadata.role"
    admin_value: str = "admin"
    auth_timeout_s: float = 10.0

    # -- backend services
    api_key: tuple[str, ...] = ()
    http_max_body_bytes: int = 1024 * 1024
    http_rate: float = 1000.0
    http_burst: int = 2000
    idempotency_ttl_s: int = 24 * 3600
    max_users_per_publish: int = 1000
    #: most events one ``POST /api/v1/publish/batch`` may carry (413 beyond): the
    #: request takes one rate-limit token, so this bounds what one token buys
    max_events_per_batch: int = 1000

    # -- HTTP connections
    #: seconds a client has to send a request's headers (an idle keep-alive connection
    #: is closed after it too) ...
    http_header_timeout_s: float = 10.0
    #: ... and its body: slow clients cannot hold connections open
    http_body_timeout_s: float = 30.0
    #: addresses or networks (CIDR) of the proxies whose X-Forwarded-For / X-Real-Ip is
    #: believed; from any other peer, the peer's address is the client's
    trusted_proxies: tuple[str, ...] = ()

    # -- connections
    rate: float = 50.0
    burst: int = 100
    #: rate-limited frames in a row after which a flooding client is closed with 1008
    flood_close_after: int = 50
    max_frame_bytes: int = 64 * 1024
    #: frames above this are refused by the WebSocket layer with close 1009
    hard_frame_bytes: int = 1024 * 1024
    max_subscriptions: int = 100
    max_connections_per_user: int = 20
    max_connections_per_address: int = 200
    idle_timeout: float = 1800.0
    heartbeat_ms: int = 25000
    #: bytes queued for one connection before it is closed as a slow consumer
    max_write_buffer_bytes: int = 4 * 1024 * 1024
    replay_limit: int = 1000

    # -- storage
    redis_url: str = ""
    redis_prefix: str = "renum-rt:"
    #: Redis connections per process; commands beyond it wait for a free one (no connect storms)
    redis_pool_size: int = 32
    #: replicas that must have a publish before it is answered (Redis ``WAIT``; 0: none)
    redis_wait_replicas: int = 0
    #: how long a publish waits for those replicas before it is answered 503
    redis_wait_timeout_ms: int = 1000
    history_max_len: int = 1000
    history_max_age_s: int = 7 * 24 * 3600
    node_heartbeat_s: float = 2.0

    # -- notifications
    #: create notifications from published execution.status (final) and team events
    notifications_from_events: bool = True
    inbox_max_per_user: int = 1000
    inbox_max_age_s: int = 90 * 24 * 3600
    inbox_global_max: int = 200
    inbox_global_max_age_s: int = 30 * 24 * 3600
    notifications_page_default: int = 20
    notifications_page_max: int = 100

    # -- logging
    log_level: str = "info"
    #: addresses or networks (CIDR) that may read /metrics without an API key (a Prometheus
    #: on a private network); empty: the API key is needed
    metrics_allowed_addresses: tuple[str, ...] = ()

    #: development mode (``--dev``): pages from any localhost origin may connect, and the
    #: demo pages get a user token without a login step; never in production
    dev: bool = False

    def origin_allowed(self, origin: str, host: str) -> bool:
        """May a browser page from ``origin`` open /ws on this server, reached as ``host``?

        With ``allowed_origins`` set, only those; otherwise the server's own origin:
        ``public_origin`` when set. Without it, a page from the host the request was sent
        to, but only when that host is an IP address or ``localhost``: a ``Host`` header
        naming a domain proves nothing (a DNS-rebinding page sends its own domain as both
        ``Origin`` and ``Host``), so a server reached by name needs ``public_origin``.
        """
        origin = origin.rstrip("/").lower()
        if self.dev and _is_local(origin):
            return True
        if self.allowed_origins:
            return origin in {o.rstrip("/").lower() for o in self.allowed_origins}
        if self.public_origin:
            return origin == self.public_origin.rstrip("/").lower()
        scheme, _, netloc = origin.partition("://")
        return scheme in ("http", "https") and netloc == host.lower() and _is_address(_hostname(netloc))

    def idle_sweep_s(self) -> float:
        """How often idle connections are looked for: a tenth of the timeout, at most 60 s."""
        return max(0.05, min(60.0, self.idle_timeout / 10))


def _hostname(netloc: str) -> str:
    """``host`` of ``host[:port]`` (``[::1]`` of ``[::1]:8765``)."""
    return netloc if netloc.endswith("]") else netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def _is_address(hostname: str) -> bool:
    """An IP address or ``localhost``: names no other site can take over by DNS."""
    if hostname == "localhost":
        return True
    try:
        ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    return True


def _is_local(origin: str) -> bool:
    """An http(s) origin on this machine, any port (a Vite or Next dev server)."""
    scheme, _, netloc = origin.partition("://")
    return scheme in ("http", "https") and _hostname(netloc) in ("localhost", "127.0.0.1", "[::1]")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def _convert(name: str, raw: Any) -> Any:
    kind = _TYPES[name]
    try:
        if kind == "tuple[str, ...]":
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind == "float":
            value = float(raw)
            if isinstance(raw, bool) or not math.isfinite(value):
                raise ValueError
            return value
        if kind == "str":
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            words = {"true": True, "1": True, "yes": True, "on": True,
                     "false": False, "0": False, "no": False, "off": False}
            return words[str(raw).strip().lower()]
    except (TypeError, ValueError, KeyError):
        pass
    raise ConfigError(f"setting {name!r} ({ENV_PREFIX}{name.upper()}): {raw!r} is not a valid {kind}")


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (the default one if ``path`` is None and it exists), then the
    environment, then ``overrides`` (command-line flags); validate."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if path is not None or file.exists():
        try:
            with open(file, "rb") as fh:
                table = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        for name, raw in table.items():
            if name not in _FIELDS:
                raise ConfigError(f"config file {file}: unknown setting {name!r}")
            values[name] = _convert(name, raw)
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    positive = ["port", "rate", "burst", "max_frame_bytes", "hard_frame_bytes", "max_subscriptions",
                "max_connections_per_user", "max_connections_per_address", "idle_timeout", "heartbeat_ms",
                "max_write_buffer_bytes", "replay_limit", "history_max_len", "http_max_body_bytes",
                "http_rate", "http_burst", "auth_timeout_s", "flood_close_after", "max_users_per_publish",
                "max_events_per_batch",
                "redis_pool_size", "http_header_timeout_s", "http_body_timeout_s",
                "inbox_max_per_user", "inbox_max_age_s", "inbox_global_max",
                "inbox_global_max_age_s", "notifications_page_default", "notifications_page_max"]
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"setting {name!r} must be greater than 0")
    for name in ("jwt_leeway_s", "history_max_age_s", "jwks_cache_s", "redis_wait_replicas"):
        if getattr(s, name) < 0:
            raise ConfigError(f"setting {name!r} must not be negative")
    if s.redis_url:
        from .engines.redis_connect import BadRedisURL, parse

        try:
            kind = parse(s.redis_url).kind
        except BadRedisURL as exc:
            raise ConfigError(f"setting 'redis_url': {exc}") from None
        if kind == "cluster" and s.redis_wait_replicas:
            raise ConfigError("setting 'redis_wait_replicas' needs a redis:// or redis+sentinel:// URL, not a cluster")
    if s.redis_wait_timeout_ms <= 0:
        raise ConfigError("setting 'redis_wait_timeout_ms' must be greater than 0")
    if s.node_heartbeat_s <= 0:
        raise ConfigError("setting 'node_heartbeat_s' must be greater than 0")
    if s.hard_frame_bytes < s.max_frame_bytes:
        raise ConfigError("setting 'hard_frame_bytes' must be at least 'max_frame_bytes'")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("setting 'log_level' must be one of debug, info, warning, error")
    if s.jwt_public_key and s.jwks_url:
        raise ConfigError("set RENUM_RT_JWT_PUBLIC_KEY or RENUM_RT_JWKS_URL, not both")
    for name in ("trusted_proxies", "metrics_allowed_addresses"):
        for entry in getattr(s, name):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"setting {name!r}: {entry!r} is not an address or a network "
                                  "such as 10.0.0.0/8") from None


def with_changes(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some fields replaced (used by ``--dev`` and tests)."""
    return dataclasses.replace(settings, **changes)


__all__ = ["ConfigError", "Settings", "load", "with_changes"]
