"""The HTTP API for backend services: publish and broadcast.

Order of checks: API key (401), rate limit per key (429), declared body size (413),
``Content-Type: application/json`` (415), all from the headers, before a byte of the
body is read (the handlers stream their body, so an unauthenticated or oversized upload
costs no memory); then the body as it arrives (413 past the limit, chunked bodies too),
JSON and fields (400 naming the field), Idempotency-Key; then the gateway stores the
event and the answer is 200 only once it is stored. A store outage is 503 with nothing
accepted.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import tornado.web

from ..engines import EngineUnavailable
from ..limits import KeyedBuckets
from ..protocol.events import (
    FieldError,
    PublishRequest,
    TooManyEvents,
    validate_batch,
    validate_broadcast,
    validate_publish,
)
from .base import HttpError, JsonHandler, keys_match

OPENAPI = Path(__file__).resolve().parent.parent / "protocol" / "schemas" / "openapi.json"
MAX_IDEMPOTENCY_KEY = 200


@tornado.web.stream_request_body
class ServiceHandler(JsonHandler):
    """A route for backend services: the API key, its rate limit, the declared size and
    the content type are checked from the headers, before the body is read."""

    buckets: KeyedBuckets

    def initialize(self, gateway: Any, buckets: KeyedBuckets) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.buckets = buckets
        self._api_key = ""
        self._body = bytearray()

    def prepare(self) -> None:
        """What the headers decide, answered before the body is read (Tornado reads it
        only once this returns without finishing the request)."""
        try:
            self._api_key = self._check_key()
            if self.request.method == "POST":
                declared = self.request.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.gateway.settings.http_max_body_bytes:
                    raise self.too_large()
                self.require_json()
        except HttpError as error:
            self.fail(error)

    def data_received(self, chunk: bytes) -> None:
        """Keep at most the limit: past it, answer 413 at once; Tornado then delivers no
        more of the body and closes the connection."""
        if len(self._body) + len(chunk) > self.gateway.settings.http_max_body_bytes:
            self.fail(self.too_large())
            return
        self._body += chunk

    def body(self) -> Any:
        """The parsed JSON body (400 if it is not JSON)."""
        return self.parse_json(self._body)

    def _check_key(self) -> str:
        key = self.bearer()
        if not keys_match(key, self.gateway.settings.api_key):
            raise HttpError(401, "unauthorized", "unknown API key")
        wait = self.buckets.take(key, time.monotonic())
        if wait:
            seconds = max(1, math.ceil(wait))
            raise HttpError(429, "rate_limited", "too many requests for this API key",
                            headers={"Retry-After": str(seconds)})
        return key

    def idempotency_key(self) -> str | None:
        """The stored key: scoped by API key and route, so two services (or publish and
        broadcast) reusing a key never see each other's answers."""
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not (0 < len(key) <= MAX_IDEMPOTENCY_KEY) or not key.isprintable():
            raise HttpError(400, "bad_request",
                            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
                            field="Idempotency-Key")
        scope = hashlib.sha256(self._api_key.encode()).hexdigest()[:16]
        return f"{scope}:{self.request.path}:{key}"


def unavailable(exc: EngineUnavailable) -> HttpError:
    return HttpError(503, "unavailable", "the event store is unavailable; retry with the same Idempotency-Key",
                     headers={"Retry-After": "1"}, cause=exc)


class PublishHandler(ServiceHandler):
    """``POST /api/v1/publish`` (and, with another validator, ``/api/v1/broadcast``)."""

    def validate(self, body: Any) -> PublishRequest:
        return validate_publish(body, max_users=self.gateway.settings.max_users_per_publish)

    async def post(self) -> None:
        try:
            try:
                request = self.validate(self.body())
            except FieldError as exc:
                raise HttpError(400, "bad_request", exc.message, field=exc.field) from None
            try:
                answer = await self.gateway.publish(list(request.targets), request.event, request.data,
                                                    self.idempotency_key())
            except EngineUnavailable as exc:
                raise unavailable(exc) from None
        except HttpError as error:
            self.fail(error)
            return
        self.reply(answer)


class BroadcastHandler(PublishHandler):
    """``POST /api/v1/broadcast``: an event to every user, on ``system``."""

    def validate(self, body: Any) -> PublishRequest:
        return validate_broadcast(body)


class BatchHandler(ServiceHandler):
    """``POST /api/v1/publish/batch``: many publish bodies in one request, stored in one
    engine call (one Redis script call), each answered on its own: an invalid event is
    refused alone and the others are stored.

    The request takes one rate-limit token, like any other (the limiter decides from the
    headers, before the body is read); a batch's weight is bounded by
    ``max_events_per_batch`` (413 beyond) and the body size limit. With an
    ``Idempotency-Key``, event ``i`` is published under the key ``<key>:<i>``: a retry of
    the same body gets the same ids for every stored event and stores nothing twice.
    """

    async def post(self) -> None:
        settings = self.gateway.settings
        try:
            try:
                checked = validate_batch(self.body(), max_events=settings.max_events_per_batch,
                                         max_users=settings.max_users_per_publish)
            except TooManyEvents as exc:
                raise HttpError(413, "too_large", exc.message, field=exc.field) from None
            except FieldError as exc:
                raise HttpError(400, "bad_request", exc.message, field=exc.field) from None
            key = self.idempotency_key()
            valid = [(i, request) for i, request in enumerate(checked) if isinstance(request, PublishRequest)]
            try:
                answers = await self.gateway.publish_batch(
                    [(list(request.targets), request.event, request.data, f"{key}:{i}" if key is not None else None)
                     for i, request in valid])
            except EngineUnavailable as exc:
                raise unavailable(exc) from None
        except HttpError as error:
            self.fail(error)
            return
        stored = iter(answers)
        self.reply({"results": [
            next(stored) if isinstance(outcome, PublishRequest)
            else {"error": {"code": "bad_request", "message": outcome.message, "field": outcome.field}}
            for outcome in checked
        ]})


class OpenApiHandler(JsonHandler):
    """``GET /api/v1/openapi.json``."""

    def get(self) -> None:
        self.finish(OPENAPI.read_bytes())
