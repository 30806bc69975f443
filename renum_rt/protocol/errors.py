"""Error codes and close codes of protocol v1, and the exception that carries one to
the wire.

The table itself is ``schemas/codes.json``, shipped with the other schemas so that
every client reads the same rules: for each error code its meaning and HTTP status,
for each close code its meaning and what a client library does next (``reconnect``).
The constants below name the codes the server's own code uses; a test checks that
they agree with the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

TABLE: Final[dict[str, Any]] = json.loads((Path(__file__).parent / "schemas" / "codes.json").read_text())

#: Every code an ``error`` frame or HTTP error body may carry (contract v1).
CODES: Final = frozenset(TABLE["errors"])
#: The HTTP status of each error code.
HTTP_STATUS: Final[dict[str, int]] = {code: spec["http"] for code, spec in TABLE["errors"].items()}

Reconnect = Literal["never", "backoff", "soon", "refresh_token", "on_activity"]

#: WebSocket close codes (contract v1, "Close codes").
CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
CLOSE_RESTART: Final = 1012
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_FORBIDDEN: Final = 4003
CLOSE_IDLE: Final = 4008
CLOSE_KICKED: Final = 4009
CLOSE_TOO_MANY: Final = 4029


def reconnect_policy(close_code: int | None) -> Reconnect:
    """What a client does after ``close_code`` (None: lost without a close frame)."""
    spec = TABLE["close_codes"].get(str(close_code))
    policy: Reconnect = spec["reconnect"] if spec is not None else TABLE["default_reconnect"]
    return policy


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

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def frame(self) -> dict[str, object]:
        """The ``error`` frame for this error."""
        out: dict[str, object] = {"type": "error", "ref": self.ref, "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out
