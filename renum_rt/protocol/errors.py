"""Error codes of protocol v1 and the exception that carries one to the wire."""

from __future__ import annotations

#: Every code an ``error`` frame or HTTP error body may carry (contract v1).
CODES = frozenset(
    {
        "bad_request",
        "unknown_type",
        "unauthorized",
        "forbidden",
        "not_found",
        "rate_limited",
        "too_large",
        "unsupported_version",
        "unavailable",
        "internal",
    }
)

#: WebSocket close codes (contract v1, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_IDLE = 4008
CLOSE_KICKED = 4009
CLOSE_TOO_MANY = 4029


class ProtocolError(Exception):
    """A client frame that cannot be served: becomes an ``error`` frame.

    ``field`` names the offending field where there is one; ``close`` is a close code
    when the error also ends the connection.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        ref: str | None = None,
        field: str | None = None,
        close: int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.field = field
        self.close = close
        self.retry_after_ms = retry_after_ms

    def frame(self) -> dict[str, object]:
        """The ``error`` frame for this error."""
        out: dict[str, object] = {"type": "error", "ref": self.ref, "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out
