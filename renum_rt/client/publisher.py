"""``Publisher`` and ``AsyncPublisher``: the HTTP publish API for backend services.

A backend that changes something users watch (an execution advancing, a team renamed)
publishes it with one call and must be able to retry that call safely. Both classes
therefore give every call one ``Idempotency-Key`` and send the same key on each retry,
so a retry after a lost answer never publishes twice; they retry what may succeed later
(network errors, 429 after its ``Retry-After``, 409 "same key still in progress", 5xx)
on the contract's backoff schedule, and turn any other refusal into a ``PublishError``
naming the offending field.

``Publisher`` is synchronous (stdlib ``urllib.request``: usable from any thread, worker
or script); ``AsyncPublisher`` has the same methods as coroutines (Tornado's
``AsyncHTTPClient``). The request building, the retry decisions and the domain helpers
are written once, in ``_PublisherBase``; the two classes only move bytes.
"""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Iterable
from typing import Any, Generic, Literal, TypeVar, cast

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError

from .. import __version__
from .backoff import Backoff

#: What a publish returns: ``dict[str, str]`` (sync) or an awaitable of it (async).
R = TypeVar("R")
#: What a batch returns: the list of results (sync) or an awaitable of it (async).
L = TypeVar("L")

USER_AGENT = f"renum-rt-python/{__version__}"


class PublishError(Exception):
    """The publish API refused a call, or could not be reached.

    ``status`` is the HTTP status (``None`` when the server was not reached), ``code``,
    ``message`` and ``field`` come from the error body ``{"error": {...}}``: ``field``
    names the offending field of a 400 (``"data.progress"``). ``retry_after`` is the
    ``Retry-After`` of a 429 or 503, in seconds.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"{status or 'no answer'} {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later: not reached, 409, 429 or 5xx."""
        return self.status is None or self.status in (409, 429) or self.status >= 500


class _PublisherBase(Generic[R, L]):
    """Everything but the transport: bodies, headers, answers, retry decisions."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: Backoff = Backoff(attempts=3, base_ms=200, max_ms=2000),
    ) -> None:
        """``retries`` is how many times a failed call is sent again (0: never); the
        waits between tries follow ``backoff``'s schedule (its ``attempts`` is not used).
        ``timeout`` (seconds) bounds each try."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._api_key = api_key

    # -- the API ------------------------------------------------------------------

    def publish(
        self,
        event: str,
        data: dict[str, Any],
        *,
        channel: str | None = None,
        users: Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """Publish ``event`` on ``channel`` and/or to each ``user:<id>`` of ``users``;
        return the event id per channel, once stored."""
        body: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            body["channel"] = channel
        listed = list(users or ())
        if listed:
            body["users"] = listed
        return self._post("/api/v1/publish", body, idempotency_key)

    def publish_batch(self, events: Iterable[dict[str, Any]], *, idempotency_key: str | None = None) -> L:
        """Publish several events in one request (``POST /api/v1/publish/batch``): each of
        ``events`` is a publish body (``{"event", "data", "channel"?, "users"?}``). Returns
        one result per event, in order: ``{"ids": {...}}`` once stored, or ``{"error":
        {"code", "message", "field"}}`` for an event refused alone (the others are
        stored). Retries resend the same key, and the server keeps one per event, so a
        retry stores no event twice."""
        # the transport's ``_post`` gives the answer's "results": a list, not an object
        return cast(L, self._post("/api/v1/publish/batch", {"events": list(events)}, idempotency_key, "results"))

    def broadcast(self, event: str, data: dict[str, Any], *, idempotency_key: str | None = None) -> R:
        """Publish ``event`` to every user, on ``system``."""
        return self._post("/api/v1/broadcast", {"event": event, "data": data}, idempotency_key)

    def execution_status(
        self,
        execution_id: str,
        team_id: str,
        status: Literal["queued", "running", "completed", "failed", "cancelled"],
        progress: float,
        *,
        users: Iterable[str] | None = None,
        step: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """``execution.status`` on ``execution:<execution_id>`` (its page) and to
        ``users`` (their notifications). ``error`` holds ``code``, ``message`` and
        optionally ``details``."""
        data: dict[str, Any] = {"execution_id": execution_id, "team_id": team_id, "status": status,
                                "progress": progress}
        if step is not None:
            data["step"] = step
        if error is not None:
            data["error"] = error
        return self.publish(
            "execution.status", data, channel=f"execution:{execution_id}", users=users, idempotency_key=idempotency_key
        )

    def team_event(
        self,
        kind: Literal["created", "updated"],
        team_id: str,
        name: str,
        *,
        users: Iterable[str],
        changes: dict[str, Any] | list[Any] | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """``team.created`` or ``team.updated`` on ``team:<team_id>`` and to ``users``."""
        if kind not in ("created", "updated"):
            raise ValueError(f"kind must be 'created' or 'updated', got {kind!r}")
        data: dict[str, Any] = {"team_id": team_id, "name": name}
        if changes is not None:
            data["changes"] = changes
        return self.publish(
            f"team.{kind}", data, channel=f"team:{team_id}", users=users, idempotency_key=idempotency_key
        )

    def announcement(
        self,
        title: str,
        message: str,
        level: Literal["info", "success", "warning", "error"] = "info",
        *,
        idempotency_key: str | None = None,
    ) -> R:
        """``system.announcement`` to every user."""
        return self.broadcast(
            "system.announcement", {"title": title, "message": message, "level": level}, idempotency_key=idempotency_key
        )

    def notify(
        self,
        users: Iterable[str],
        title: str,
        body: str | None = None,
        *,
        level: Literal["info", "success", "warning", "error"] | None = None,
        category: str | None = None,
        data: dict[str, Any] | None = None,
        link: str | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """One inbox notification for each of ``users`` (``POST /api/v1/notifications``);
        returns the notification once stored: ``{"id", "title", ..., "status": "unread"}``."""
        fields = {"body": body, "level": level, "category": category, "data": data, "link": link}
        payload = {"users": list(users), "title": title, **{k: v for k, v in fields.items() if v is not None}}
        return self._post("/api/v1/notifications", payload, idempotency_key, "notification")

    # -- shared by both transports ----------------------------------------------

    def _post(self, path: str, body: dict[str, Any], idempotency_key: str | None, answer: str = "ids") -> R:
        raise NotImplementedError

    def _prepare(
        self, path: str, body: dict[str, Any], idempotency_key: str | None
    ) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of one call: its Idempotency-Key is fixed here, once."""
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key or uuid.uuid4().hex,
            "User-Agent": USER_AGENT,
        }
        payload = ujson.dumps(body, ensure_ascii=False, escape_forward_slashes=False).encode()
        return self.base_url + path, payload, headers

    def _retry_delay_s(self, retry: int, error: PublishError) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None: give up."""
        if not error.retryable or retry > self.retries:
            return None
        if error.retry_after is not None:
            return error.retry_after
        return self.backoff.delay_ms(retry) / 1000


def _answer(status: int, retry_after: str | None, raw: bytes, field: str) -> Any:
    """``field`` of a 2xx answer (the ids, the notification: an object; the results of a
    batch: a list); else raise the ``PublishError`` its body describes."""
    try:
        body = ujson.loads(raw)
    except (ValueError, TypeError):
        body = None
    if 200 <= status < 300:
        value = body.get(field) if isinstance(body, dict) else None
        if not isinstance(value, list if field == "results" else dict):
            raise PublishError(status, "bad_response", f"no {field} in the answer: {raw[:200]!r}")
        return value
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {
            "code": f"http_{status}",
            "message": raw[:200].decode("utf-8", "replace") or http.client.responses.get(status, ""),
        }
    raise PublishError(
        status,
        str(error.get("code", f"http_{status}")),
        str(error.get("message", "")),
        error.get("field"),
        retry_after=_seconds(retry_after),
    )


def _seconds(retry_after: str | None) -> float | None:
    """``Retry-After`` as seconds; None when absent or an HTTP date (then backoff applies)."""
    try:
        return max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:
        return None


class Publisher(_PublisherBase[dict[str, Any], list[dict[str, Any]]]):
    """Synchronous publisher; every method returns ``{channel: event id}`` (``notify``:
    the notification; ``publish_batch``: the list of results).

    Retries sleep in the calling thread (at most ``retries`` times).
    """

    def _post(
        self, path: str, body: dict[str, Any], idempotency_key: str | None, answer: str = "ids"
    ) -> Any:
        url, payload, headers = self._prepare(path, body, idempotency_key)
        retry = 0
        while True:
            try:
                return _answer(*self._fetch(url, payload, headers), answer)
            except PublishError as error:
                retry += 1
                delay = self._retry_delay_s(retry, error)
                if delay is None:
                    raise
                time.sleep(delay)

    def _fetch(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Retry-After"), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers.get("Retry-After"), exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise PublishError(None, "unreachable", f"{url}: {exc}") from exc


class AsyncPublisher(_PublisherBase[Awaitable[dict[str, Any]], Awaitable[list[dict[str, Any]]]]):
    """Asynchronous publisher (Tornado's ``AsyncHTTPClient``, any asyncio loop);
    every method is awaited and gives ``{channel: event id}`` (``notify``: the
    notification; ``publish_batch``: the list of results)."""

    async def _post(
        self, path: str, body: dict[str, Any], idempotency_key: str | None, answer: str = "ids"
    ) -> Any:
        url, payload, headers = self._prepare(path, body, idempotency_key)
        retry = 0
        while True:
            try:
                return _answer(*await self._fetch(url, payload, headers), answer)
            except PublishError as error:
                retry += 1
                delay = self._retry_delay_s(retry, error)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _fetch(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        request = HTTPRequest(
            url,
            method="POST",
            body=payload,
            headers=headers,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, StreamClosedError, HTTPClientError) as exc:  # HTTPClientError here: 599, nothing answered
            raise PublishError(None, "unreachable", f"{url}: {exc}") from exc
        return response.code, response.headers.get("Retry-After"), response.body
