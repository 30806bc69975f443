"""Publisher and AsyncPublisher against a scripted HTTP server on a real socket.

The server answers each request with the next scripted response and records what it
got, so the retry rules (what is retried, how often, with which Idempotency-Key) and the
bodies the domain helpers build are checked without the gateway.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import ujson

from renum_rt.client import AsyncPublisher, Backoff, Publisher, PublishError

FAST = Backoff(attempts=3, base_ms=1, max_ms=5)
IDS = {"ids": {"user:u1": "1700000000000-0"}}


class Scripted:
    """A local HTTP server answering ``(status, body, headers)`` responses in order."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, Any, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": ujson.loads(self.rfile.read(length))}
                )
                status, body, headers = outer.responses.pop(0) if outer.responses else (200, IDS, {})
                raw = body if isinstance(body, bytes) else ujson.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def test_publish_sends_the_contract_body_and_headers(scripted: Scripted) -> None:
    ids = Publisher(scripted.url + "/", "key-1").publish("x.done", {"a": 1}, channel="team:t1", users=["u1", "u2"])
    assert ids == IDS["ids"]
    [request] = scripted.requests
    assert request["path"] == "/api/v1/publish"
    assert request["body"] == {"event": "x.done", "data": {"a": 1}, "channel": "team:t1", "users": ["u1", "u2"]}
    assert request["headers"]["Authorization"] == "Bearer key-1"
    assert request["headers"]["Content-Type"] == "application/json"
    assert len(request["headers"]["Idempotency-Key"]) >= 16


def test_each_call_has_its_own_idempotency_key_unless_given(scripted: Scripted) -> None:
    publisher = Publisher(scripted.url, "k")
    publisher.publish("x.a", {}, users=["u1"])
    publisher.publish("x.a", {}, users=["u1"])
    publisher.publish("x.a", {}, users=["u1"], idempotency_key="job-42")
    keys = [r["headers"]["Idempotency-Key"] for r in scripted.requests]
    assert keys[0] != keys[1] and keys[2] == "job-42"


@pytest.mark.parametrize("status", [500, 502, 503, 409])
def test_retryable_status_is_retried_with_the_same_key(scripted: Scripted, status: int) -> None:
    scripted.responses = [(status, error("unavailable", "down"), {}), (status, error("unavailable", "down"), {})]
    assert Publisher(scripted.url, "k", backoff=FAST).publish("x.a", {}, users=["u1"]) == IDS["ids"]
    assert len(scripted.requests) == 3
    assert len({r["headers"]["Idempotency-Key"] for r in scripted.requests}) == 1


def test_429_waits_retry_after(scripted: Scripted) -> None:
    scripted.responses = [(429, error("rate_limited", "slow down"), {"Retry-After": "0"})]
    assert Publisher(scripted.url, "k", backoff=Backoff(base_ms=60_000)).publish("x.a", {}, users=["u1"]) == IDS["ids"]
    assert len(scripted.requests) == 2  # Retry-After 0 was used, not the minute of backoff


def test_retry_delay_prefers_retry_after_then_backoff() -> None:
    publisher = Publisher("http://unused", "k", retries=2, backoff=Backoff(base_ms=200, max_ms=2000, jitter=False))
    assert publisher._retry_delay_s(1, PublishError(429, "rate_limited", "", retry_after=2.5)) == 2.5
    assert publisher._retry_delay_s(2, PublishError(503, "unavailable", "")) == 0.4
    assert publisher._retry_delay_s(3, PublishError(503, "unavailable", "")) is None  # retries used up
    assert publisher._retry_delay_s(1, PublishError(400, "bad_request", "")) is None


def test_400_is_not_retried_and_names_the_field(scripted: Scripted) -> None:
    scripted.responses = [
        (400, error("bad_request", "data.progress must be a number from 0 to 100", "data.progress"), {})
    ]
    with pytest.raises(PublishError) as caught:
        Publisher(scripted.url, "k", backoff=FAST).execution_status("e1", "t1", "running", 150)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "bad_request", "data.progress")
    assert "data.progress" in str(caught.value)
    assert len(scripted.requests) == 1


def test_401_is_not_retried(scripted: Scripted) -> None:
    scripted.responses = [(401, error("unauthorized", "unknown API key"), {})]
    with pytest.raises(PublishError) as caught:
        Publisher(scripted.url, "wrong", backoff=FAST).broadcast("x.a", {})
    assert caught.value.status == 401 and caught.value.field is None
    assert len(scripted.requests) == 1


def test_gives_up_after_retries(scripted: Scripted) -> None:
    scripted.responses = [(503, error("unavailable", "store down"), {})] * 5
    with pytest.raises(PublishError) as caught:
        Publisher(scripted.url, "k", retries=2, backoff=FAST).publish("x.a", {}, users=["u1"])
    assert caught.value.status == 503 and caught.value.code == "unavailable"
    assert len(scripted.requests) == 3


def test_error_body_that_is_not_json(scripted: Scripted) -> None:
    scripted.responses = [(404, b"<html>not here</html>", {"Content-Type": "text/html"})]
    with pytest.raises(PublishError) as caught:
        Publisher(scripted.url, "k").publish("x.a", {}, users=["u1"])
    assert (caught.value.status, caught.value.code) == (404, "http_404")
    assert "not here" in caught.value.message


def test_unreachable_server_is_retried_then_raised() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PublishError) as caught:
        Publisher(f"http://127.0.0.1:{port}", "k", retries=1, backoff=FAST, timeout=2).publish("x.a", {}, users=["u1"])
    assert caught.value.status is None and caught.value.code == "unreachable" and caught.value.retryable


def test_domain_helpers_build_the_contract_events(scripted: Scripted) -> None:
    publisher = Publisher(scripted.url, "k")
    publisher.execution_status(
        "e1",
        "t1",
        "failed",
        60,
        users=["u1"],
        step={"name": "fetch"},
        error={"code": "timeout", "message": "agent timed out"},
    )
    publisher.execution_status("e2", "t1", "queued", 0)
    publisher.team_event("updated", "t1", "Research", users=["u1", "u2"], changes={"name": "Research"})
    publisher.announcement("Maintenance", "at 22:00", level="warning")
    bodies = [(r["path"], r["body"]) for r in scripted.requests]
    assert bodies == [
        (
            "/api/v1/publish",
            {
                "event": "execution.status",
                "channel": "execution:e1",
                "users": ["u1"],
                "data": {
                    "execution_id": "e1",
                    "team_id": "t1",
                    "status": "failed",
                    "progress": 60,
                    "step": {"name": "fetch"},
                    "error": {"code": "timeout", "message": "agent timed out"},
                },
            },
        ),
        (
            "/api/v1/publish",
            {
                "event": "execution.status",
                "channel": "execution:e2",
                "data": {"execution_id": "e2", "team_id": "t1", "status": "queued", "progress": 0},
            },
        ),
        (
            "/api/v1/publish",
            {
                "event": "team.updated",
                "channel": "team:t1",
                "users": ["u1", "u2"],
                "data": {"team_id": "t1", "name": "Research", "changes": {"name": "Research"}},
            },
        ),
        (
            "/api/v1/broadcast",
            {
                "event": "system.announcement",
                "data": {"title": "Maintenance", "message": "at 22:00", "level": "warning"},
            },
        ),
    ]


def test_team_event_kind_is_checked_before_sending() -> None:
    with pytest.raises(ValueError):
        Publisher("http://unused", "k").team_event("deleted", "t1", "x", users=["u1"])  # type: ignore[arg-type]


@pytest.mark.gen_test(timeout=30)
async def test_async_publisher_retries_with_the_same_key(scripted: Scripted) -> None:
    scripted.responses = [(503, error("unavailable", "down"), {"Retry-After": "0"})]
    ids = await AsyncPublisher(scripted.url, "k", backoff=FAST).team_event("created", "t1", "Ops", users=["u1"])
    assert ids == IDS["ids"]
    assert len(scripted.requests) == 2
    assert scripted.requests[0]["headers"]["Idempotency-Key"] == scripted.requests[1]["headers"]["Idempotency-Key"]
    assert scripted.requests[0]["body"]["event"] == "team.created"


@pytest.mark.gen_test(timeout=30)
async def test_async_publisher_raises_field_errors(scripted: Scripted) -> None:
    scripted.responses = [(400, error("bad_request", "users[0] is not a user id", "users[0]"), {})]
    with pytest.raises(PublishError) as caught:
        await AsyncPublisher(scripted.url, "k", backoff=FAST).publish("x.a", {}, users=["bad id"])
    assert caught.value.field == "users[0]"
    assert len(scripted.requests) == 1


@pytest.mark.gen_test(timeout=30)
async def test_async_publisher_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PublishError) as caught:
        await AsyncPublisher(f"http://127.0.0.1:{port}", "k", retries=1, backoff=FAST, timeout=2).announcement("a", "b")
    assert caught.value.status is None and caught.value.code == "unreachable"


RESULTS = {"results": [IDS, error("bad_request", "events[1]: event must be a name", "events[1].event")]}
EVENTS = [{"event": "x.a", "data": {}, "users": ["u1"]}, {"event": "X", "data": {}, "users": ["u1"]}]


def test_publish_batch_returns_every_result_and_retries_with_the_same_key(scripted: Scripted) -> None:
    scripted.responses = [(503, error("unavailable", "down"), {"Retry-After": "0"}), (200, RESULTS, {})]
    results = Publisher(scripted.url, "k", backoff=FAST).publish_batch(iter(EVENTS))
    assert results == RESULTS["results"]
    assert [r["path"] for r in scripted.requests] == ["/api/v1/publish/batch"] * 2
    assert scripted.requests[0]["body"] == {"events": EVENTS}
    assert scripted.requests[0]["headers"]["Idempotency-Key"] == scripted.requests[1]["headers"]["Idempotency-Key"]
    scripted.responses = [(200, IDS, {})]  # an answer without results is refused
    with pytest.raises(PublishError, match="no results"):
        Publisher(scripted.url, "k", backoff=FAST).publish_batch(EVENTS)


@pytest.mark.gen_test(timeout=30)
async def test_async_publish_batch_returns_every_result(scripted: Scripted) -> None:
    scripted.responses = [(200, RESULTS, {})]
    results = await AsyncPublisher(scripted.url, "k", backoff=FAST).publish_batch(EVENTS, idempotency_key="b1")
    assert results == RESULTS["results"]
    assert scripted.requests[0]["headers"]["Idempotency-Key"] == "b1"
