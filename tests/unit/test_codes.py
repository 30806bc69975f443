"""The one table of error and close codes (protocol/schemas/codes.json) agrees with the
contract, with the server's constants, and drives the clients' reconnect rules."""

from __future__ import annotations

import pytest

from renum_rt.protocol import errors
from renum_rt.protocol.errors import CODES, HTTP_STATUS, TABLE, ProtocolError, reconnect_policy

CONTRACT_CODES = {"bad_request", "unknown_type", "unauthorized", "forbidden", "not_found", "rate_limited",
                  "too_large", "unsupported_version", "unavailable", "internal"}
#: contract v1, "Close codes": what the client library does
CONTRACT_CLOSES = {1000: "never", 1008: "backoff", 1009: "backoff", 1012: "soon", 4001: "refresh_token",
                   4003: "never", 4008: "on_activity", 4009: "never", 4029: "backoff"}


def test_every_contract_error_code_is_in_the_table_with_its_http_status() -> None:
    assert CODES == CONTRACT_CODES
    assert (HTTP_STATUS["bad_request"], HTTP_STATUS["unauthorized"], HTTP_STATUS["too_large"],
            HTTP_STATUS["rate_limited"], HTTP_STATUS["unavailable"]) == (400, 401, 413, 429, 503)
    assert ProtocolError("not_found", "x").http_status == 404


@pytest.mark.parametrize("code, policy", sorted(CONTRACT_CLOSES.items()))
def test_close_codes_follow_the_contract(code: int, policy: str) -> None:
    assert reconnect_policy(code) == policy


def test_unknown_and_missing_close_codes_reconnect_with_backoff() -> None:
    assert reconnect_policy(None) == reconnect_policy(1006) == reconnect_policy(4999) == "backoff"


def test_the_servers_constants_are_the_tables_codes() -> None:
    names = {name: value for name, value in vars(errors).items() if name.startswith("CLOSE_")}
    assert names and all(str(value) in TABLE["close_codes"] for value in names.values())
    for spec in TABLE["close_codes"].values():
        assert spec["reconnect"] in TABLE["reconnect"]
