"""What every JSON HTTP handler shares: error bodies, bearer credentials, body parsing."""

from __future__ import annotations

import hmac
from typing import Any

import tornado.web
import ujson

from ..gateway import Gateway


class HttpError(Exception):
    """An error answer: ``{"error": {"code", "message", "field"?}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def keys_match(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison of ``given`` with every configured key (all of them are
    compared, so timing tells neither which key matched nor how much of it)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


class JsonHandler(tornado.web.RequestHandler):
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def reply(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(ujson.dumps(body, ensure_ascii=False, escape_forward_slashes=False))

    def fail(self, error: HttpError) -> None:
        for name, value in error.headers.items():
            self.set_header(name, value)
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.field is not None:
            body["field"] = error.field
        self.reply({"error": body}, error.status)

    def bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise HttpError(401, "unauthorized", "send 'Authorization: Bearer <credential>'")
        return credential.strip()

    def json_body(self) -> Any:
        limit = self.gateway.settings.http_max_body_bytes
        if len(self.request.body) > limit:
            raise HttpError(413, "too_large", f"body larger than {limit} bytes")
        try:
            return ujson.loads(self.request.body or b"")
        except (ValueError, OverflowError):
            raise HttpError(400, "bad_request", "body is not valid JSON", field="body") from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (404, 405, uncaught exceptions) in our JSON shape."""
        code = {400: "bad_request", 404: "not_found", 405: "bad_request", 413: "too_large"}.get(status_code, "internal")
        message = self._reason if status_code != 500 else "internal error"
        self.finish(ujson.dumps({"error": {"code": code, "message": message}}))


class NotFoundHandler(JsonHandler):
    """Every path no route matches: a JSON 404 instead of Tornado's HTML page."""

    def prepare(self) -> None:
        self.fail(HttpError(404, "not_found", f"no route {self.request.path[:200]!r}"))
