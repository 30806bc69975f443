"""Structured logs: one JSON object per line, on stderr.

Every line has ``ts``, ``level`` and ``msg``; connection lines add ``conn`` and
``user``. At ``debug`` level every frame in and out is logged with its size and its
text, with tokens redacted. Tokens and API keys never reach a log line: frames are
decoded and their secret fields removed (``redact_frame``), request URLs are logged
without their query string, and every line, whoever wrote it, passes through ``redact``
before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import ujson

logger = logging.getLogger("renum_rt")

_SECRET_KEYS = frozenset({"token", "api_key", "authorization"})
_TOKEN_FIELD = re.compile(r'("(?:token|api_key|authorization)"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_QUERY_SECRET = re.compile(r"([?&;](?:token|api_key|access_token)=)[^&\s'\"]*", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s'\",]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with token fields, ``token=`` query values, bearer credentials and
    anything shaped like a JWT replaced."""
    text = _TOKEN_FIELD.sub(r'\1"[redacted]"', text)
    text = _QUERY_SECRET.sub(r"\1[redacted]", text)
    return _JWT.sub("[redacted]", _BEARER.sub(r"\1[redacted]", text))


def _hide_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[redacted]" if isinstance(k, str) and k.lower() in _SECRET_KEYS else _hide_secrets(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_secrets(v) for v in value]
    return value


def redact_frame(text: str) -> str:
    """A client or server frame for a debug line, secrets removed. The frame is decoded
    first, so a key written with JSON escapes (``"\\u0074oken"``) is still found."""
    try:
        return redact(_dumps(_hide_secrets(ujson.loads(text))))
    except (ValueError, OverflowError, RecursionError):
        return redact(text)


def _dumps(value: Any) -> str:
    """JSON text of a log line; text that is not valid Unicode (a lone surrogate a
    client sent) is escaped instead of failing the line."""
    try:
        return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)
    except UnicodeEncodeError:
        return ujson.dumps(value, ensure_ascii=True, escape_forward_slashes=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                "msg": record.getMessage()}
        for key, value in (getattr(record, "fields", None) or {}).items():
            line.setdefault(key, value)  # a field never hides ts, level or msg
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # the last line of defence: whatever a library put in its message (Tornado logs
        # request URIs with their query string), no token leaves the process
        return redact(_dumps(line))


def setup(level: str) -> None:
    """Send renum_rt and tornado logs to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("renum_rt", "tornado"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
    # tornado.access lines are written by ``access_log`` below, without query strings
    TRACING.set_level(level)


def log(level: int, message: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        exc_info = fields.pop("exc_info", None)
        logger.log(level, message, exc_info=exc_info, extra={"fields": fields})


def debug_enabled() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


LEVELS = ("debug", "info", "warning", "error")


class Tracing:
    """Which connections log their frames: all of them while the node logs at debug,
    otherwise those of the *followed* users (``POST /admin/api/log-level`` with a
    ``user``), so that one user's traffic can be traced on a busy node at info level.

    A connection caches its answer (``traces``) and asks again only when ``version``
    changed: the check per frame is one integer comparison."""

    def __init__(self) -> None:
        self.followed: set[str] = set()
        self.version = 0

    def traces(self, user: str | None) -> bool:
        return debug_enabled() or (user is not None and user in self.followed)

    def follow(self, user: str, on: bool) -> None:
        (self.followed.add if on else self.followed.discard)(user)
        self.version += 1

    def set_level(self, level: str) -> None:
        """The node's log level, now (the ``tornado`` loggers follow, never below warning)."""
        logger.setLevel(level.upper())
        logging.getLogger("tornado").setLevel(max(logging.WARNING, logger.level))
        self.version += 1

    def level(self) -> str:
        return logging.getLevelName(logger.getEffectiveLevel()).lower()


#: this process's tracing state (one per process, like the logger it drives)
TRACING = Tracing()


def log_frame(direction: str, conn: str, user: str | None, size: int, frame: str) -> None:
    """A ``frame in`` / ``frame out`` debug line, written even when the logger is above
    debug (the user is followed: the caller asked ``TRACING.traces``)."""
    record = logger.makeRecord(logger.name, logging.DEBUG, __file__, 0, f"frame {direction}", (), None,
                               extra={"fields": {"conn": conn, "user": user, "size": size, "frame": frame}})
    logger.handle(record)


#: routes whose successful requests are logged at debug only: health probes, and
#: publishing, which the gateway logs itself (one info line per publish, not two)
QUIET_PATHS = frozenset({"/healthz", "/api/v1/publish", "/api/v1/broadcast"})


def access_log(handler: Any) -> None:
    """Tornado's ``log_function``: one line per HTTP request, path without query."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    if status < 400 and handler.request.path in QUIET_PATHS:
        level = logging.DEBUG
    log(
        level,
        "http",
        method=handler.request.method,
        path=handler.request.path,
        status=status,
        ms=round(1000 * handler.request.request_time(), 2),
        ip=handler.request.remote_ip,
    )
