"""What every JSON HTTP handler shares: error bodies, bearer credentials, body parsing,
and the log line that says why a request failed on the server's side."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import tornado.web
import ujson

from ..gateway import Gateway
from ..logs import log
from ..protocol.errors import HTTP_STATUS

#: the error code of an HTTP status, from the protocol's one table (codes.json): the
#: first code listed with that status (400 is ``bad_request``)
CODE_OF_STATUS: dict[int, str] = {status: code for code, status in reversed(HTTP_STATUS.items())}


class HttpError(Exception):
    """An error answer: ``{"error": {"code", "message", "field"?}}`` with ``status``.

    ``cause`` is the exception behind a 5xx answer: its class and message are logged
    (the client only learns that the server failed, the operator needs to know why).
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.cause = cause


def keys_match(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison of ``given`` with every configured key (all of them are
    compared, so timing tells neither which key matched nor how much of it)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def is_json_type(content_type: str) -> bool:
    """True for ``application/json``, with no charset or ``charset=utf-8``: bodies are
    parsed as UTF-8, so a body declared in another charset would be misread."""
    media, *params = content_type.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class JsonHandler(tornado.web.RequestHandler):
    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        # a browser must never render an answer (which may echo request text) as anything else
        self.set_header("X-Content-Type-Options", "nosniff")

    def reply(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(ujson.dumps(body, ensure_ascii=False, escape_forward_slashes=False))

    def fail(self, error: HttpError) -> None:
        if error.status >= 500:
            self.log_failure(error.status, error.cause or error)
        for name, value in error.headers.items():
            self.set_header(name, value)
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.field is not None:
            body["field"] = error.field
        self.reply({"error": body}, error.status)

    def log_failure(self, status: int, reason: BaseException) -> None:
        """One warning line saying why a request got a 5xx: the route, the status, the
        error's class and message. No header is logged (they hold keys and tokens)."""
        log(logging.WARNING, "http failure", method=self.request.method, path=self.request.path, status=status,
            error=type(reason).__name__, reason=str(reason)[:500])

    def bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise HttpError(401, "unauthorized", "send 'Authorization: Bearer <credential>'")
        return credential.strip()

    def require_json(self) -> None:
        """415 unless the request declares a JSON body."""
        if not is_json_type(self.request.headers.get("Content-Type", "")):
            raise HttpError(415, "bad_request", "send the body as JSON, with 'Content-Type: application/json'",
                            field="Content-Type")

    def too_large(self) -> HttpError:
        limit = self.gateway.settings.http_max_body_bytes
        return HttpError(413, "too_large", f"body larger than {limit} bytes")

    @staticmethod
    def parse_json(raw: bytes | bytearray) -> Any:
        try:
            return ujson.loads(raw)
        except (ValueError, OverflowError):
            raise HttpError(400, "bad_request", "body is not valid JSON", field="body") from None

    def json_body(self) -> Any:
        """The body of a request Tornado has read whole (the API routes stream theirs)."""
        self.require_json()
        if len(self.request.body) > self.gateway.settings.http_max_body_bytes:
            raise self.too_large()
        return self.parse_json(self.request.body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (404, 405, uncaught exceptions) in our JSON shape."""
        exc_info = kwargs.get("exc_info")
        if status_code >= 500 and exc_info:
            self.log_failure(status_code, exc_info[1])
        code = CODE_OF_STATUS.get(status_code, "bad_request" if status_code < 500 else "internal")
        message = self._reason if status_code != 500 else "internal error"
        self.finish(ujson.dumps({"error": {"code": code, "message": message}}))


class NotFoundHandler(JsonHandler):
    """Every path no route matches: a JSON 404 instead of Tornado's HTML page."""

    def prepare(self) -> None:
        self.fail(HttpError(404, "not_found", f"no route {self.request.path[:200]!r}"))
