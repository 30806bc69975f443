"""Structured logs: one JSON object per line; tokens never reach a line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from renum_rt import logs
from renum_rt.auth import issue_token
from renum_rt.logs import JsonFormatter, redact

JWT = issue_token("s" * 32, "u1", 60, app_metadata={"role": "admin"})


# ---------------------------------------------------------------- redact


def test_redact_removes_jwts_anywhere() -> None:
    assert JWT.startswith("eyJ") and JWT.count(".") == 2
    for text in (JWT, f"Bearer {JWT}", f"/ws?token={JWT}&x=1", f'{{"a":["{JWT}"]}}', f"{JWT} and {JWT}"):
        out = redact(text)
        assert JWT not in out and "[redacted]" in out
        for part in JWT.split("."):
            assert part not in out
    assert redact(f"Bearer {JWT}") == "Bearer [redacted]"


def test_redact_jwt_with_empty_signature() -> None:
    unsigned = JWT.rsplit(".", 1)[0] + "."
    assert redact(f"x {unsigned} y") == "x [redacted] y"


@pytest.mark.parametrize("field", ["token", "api_key", "authorization", "Authorization", "TOKEN"])
def test_redact_token_fields(field: str) -> None:
    text = f'{{"type":"auth","{field}":"opaque-secret-123","ref":"r1"}}'
    out = redact(text)
    assert "opaque-secret-123" not in out
    assert json.loads(out) == {"type": "auth", field: "[redacted]", "ref": "r1"}


def test_redact_token_field_with_spaces_and_escapes() -> None:
    out = redact('{"token" : "abc\\"def\\\\", "channel": "team:t1"}')
    assert "abc" not in out and "def" not in out
    assert json.loads(out) == {"token": "[redacted]", "channel": "team:t1"}


def test_redact_keeps_everything_else() -> None:
    text = '{"type":"subscribe","channel":"execution:e1","since":"1-0","tokens":3,"data":{"eyJ":"x"}}'
    assert redact(text) == text
    assert redact("") == ""


def test_redact_subscribe_frame_with_grant() -> None:
    text = json.dumps({"type": "subscribe", "channel": "execution:e1", "token": JWT})
    out = redact(text)
    assert JWT not in out and json.loads(out)["token"] == "[redacted]"


# ---------------------------------------------------------------- JsonFormatter and log()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Route the renum_rt logger to a JsonFormatter over a buffer, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logs.logger
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line_with_ts_level_msg_and_fields(captured: io.StringIO) -> None:
    logs.log(logging.INFO, "connect", conn="c1", user="u1", admin=False, n=3, path="/ws", name="Zoë")
    logs.log(logging.WARNING, "two\nlines", reason='quote " and\nnewline')
    out = lines(captured)
    assert len(out) == 2
    first = out[0]
    assert list(first)[:3] == ["ts", "level", "msg"]
    assert first["level"] == "info" and first["msg"] == "connect"
    assert isinstance(first["ts"], float) and first["ts"] > 1.6e9
    assert {k: first[k] for k in ("conn", "user", "admin", "n", "path", "name")} == {
        "conn": "c1", "user": "u1", "admin": False, "n": 3, "path": "/ws", "name": "Zoë"}
    assert '"/ws"' in captured.getvalue() and "Zoë" in captured.getvalue()
    assert out[1] == {"ts": out[1]["ts"], "level": "warning", "msg": "two\nlines", "reason": 'quote " and\nnewline'}


def test_level_names(captured: io.StringIO) -> None:
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logs.log(level, "x")
    assert [line["level"] for line in lines(captured)] == ["debug", "info", "warning", "error"]


def test_disabled_levels_write_nothing(captured: io.StringIO) -> None:
    logs.logger.setLevel(logging.WARNING)
    logs.log(logging.INFO, "hidden", a=1)
    assert captured.getvalue() == ""
    assert not logs.debug_enabled()
    logs.logger.setLevel(logging.DEBUG)
    assert logs.debug_enabled()


def test_formatter_on_a_plain_record() -> None:
    record = logging.makeLogRecord({"msg": "hello %s", "args": ("world",), "levelname": "INFO", "created": 1.23456})
    assert json.loads(JsonFormatter().format(record)) == {"ts": 1.235, "level": "info", "msg": "hello world"}


def test_formatter_includes_the_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR", "exc_info": sys.exc_info()})
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert "RuntimeError: boom" in line["exc"] and "Traceback" in line["exc"]


def test_log_with_exc_info_writes_the_traceback(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logs.log(logging.ERROR, "internal error", conn="c1", exc_info=True)
    (line,) = lines(captured)
    assert "exc_info" not in line
    assert "RuntimeError: boom" in str(line.get("exc"))


def test_every_line_is_redacted_whoever_logs_it(captured: io.StringIO) -> None:
    # Tornado logs request URIs with their query string, e.g. for an undecodable argument
    tornado_log = logging.getLogger("renum_rt.tornado-like")
    tornado_log.warning("400 GET /ws?token=%s%%FF (127.0.0.1): Invalid unicode", JWT)
    tornado_log.warning("GET /ws?api_key=opaque-secret&x=1 Authorization: Bearer opaque-key")
    text = captured.getvalue()
    assert JWT not in text and "opaque-secret" not in text and "opaque-key" not in text
    assert "token=[redacted]" in text and "x=1" in text


@pytest.mark.parametrize("frame", [
    '{"type":"auth","\\u0074oken":"opaque-secret"}',
    '{"type":"refresh","TOKEN":"opaque-secret"}',
    '{"type":"subscribe","channel":"team:t1","token":{"nested":"opaque-secret"}}',
    '{"type":"auth","list":[{"api_key":"opaque-secret"}]}',
])
def test_debug_frames_hide_secret_fields_however_the_keys_are_written(frame: str) -> None:
    shown = logs.redact_frame(frame)
    assert "opaque-secret" not in shown and "[redacted]" in shown


def test_debug_frames_that_are_not_json_or_too_deep_still_lose_jwts() -> None:
    assert JWT not in logs.redact_frame(f'not json {JWT}')
    deep = "[" * 900 + f'"{JWT}"' + "]" * 900
    assert JWT not in logs.redact_frame(deep)


def test_a_line_with_a_lone_surrogate_is_still_written(captured: io.StringIO) -> None:
    logs.log(logging.INFO, "client error", reason="bad \ud83d text")
    (line,) = lines(captured)
    assert line["msg"] == "client error"
