"""The demo pages in real Chromium, as a new user tries them (issue 9's "done when"):
``--dev``, ``/demo/executions/42`` in one tab and ``/demo/`` in another, progress then a
failure published with the SDK; the progress bar moves, the error shows, a toast and the
badge appear; the server stops and comes back and the page catches up; the two tabs
share one WebSocket. The pages run under their real Content-Security-Policy (waits use
locators, which need no eval)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from renum_rt.client import Publisher
from tests.browser.harness import ADMIN_TOKEN, API_KEY, ENV, http, watched_page
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess

WAIT_MS = 10_000


@pytest.fixture
def dev_server(own_redis_server: RedisServer) -> Iterator[ServerProcess]:
    """``--dev`` with a known API key and secret, on Redis so that a restart keeps events."""
    process = ServerProcess({**ENV, "RENUM_RT_REDIS_URL": own_redis_server.url}, args=("--dev",)).start()
    yield process
    process.stop()


@pytest.fixture
def tabs(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    yield context
    context.close()


def open_tab(context: BrowserContext, url: str) -> Page:
    page = watched_page(context)
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
    return page


def status(publisher: Publisher, state: str, progress: int, **extra: object) -> None:
    publisher.execution_status("42", "dev-team", state, progress, users=["dev-user"], **extra)  # type: ignore[arg-type]


def test_progress_error_toast_badge_and_one_websocket_for_two_tabs(dev_server: ServerProcess,
                                                                     tabs: BrowserContext) -> None:
    execution = open_tab(tabs, dev_server.url + "/demo/executions/42")
    home = open_tab(tabs, dev_server.url + "/demo/")
    publisher = Publisher(dev_server.url, API_KEY)

    status(publisher, "running", 35, step={"name": "Collect sources", "index": 1, "total": 3})
    expect(execution.locator("#percent")).to_have_text("35%", timeout=WAIT_MS)
    expect(execution.locator("#step")).to_have_text("Collect sources (1 of 3)")
    expect(execution.locator("#status")).to_have_text("Running")

    status(publisher, "failed", 70, error={"code": "tool_error", "message": "The search tool timed out"})
    expect(execution.locator("#percent")).to_have_text("70%", timeout=WAIT_MS)
    expect(execution.locator("#status")).to_have_text("Failed")
    expect(execution.locator("#error-message")).to_have_text("The search tool timed out (tool_error)")
    # on the other page: a toast and the badge
    expect(home.locator(".toast .title")).to_have_text("Execution failed", timeout=WAIT_MS)
    expect(home.locator("#bell .badge")).to_have_text("1")
    expect(execution.locator("#bell .badge")).to_have_text("1")

    # the server counts one WebSocket for the two tabs
    listed = http("GET", dev_server.url + "/admin/api/connections", ADMIN_TOKEN)
    assert [c["user_id"] for c in listed["connections"]] == ["dev-user"], listed

    # mark it read in one tab's inbox: the badge falls in both
    home.locator("#bell").click()
    expect(home.locator(".note .title")).to_have_text("Execution failed", timeout=WAIT_MS)
    home.get_by_role("button", name="Mark as read").click()
    expect(execution.locator("#bell .badge")).to_be_hidden(timeout=WAIT_MS)
    expect(home.locator("#bell .badge")).to_be_hidden()
    assert home.errors == [] and execution.errors == []  # type: ignore[attr-defined]


def test_a_server_restart_shows_the_reconnect_attempts_and_then_catches_up(dev_server: ServerProcess,
                                                                            tabs: BrowserContext) -> None:
    execution = open_tab(tabs, dev_server.url + "/demo/executions/42")
    publisher = Publisher(dev_server.url, API_KEY)
    status(publisher, "running", 10)
    expect(execution.locator("#percent")).to_have_text("10%", timeout=WAIT_MS)

    dev_server.stop()
    expect(execution.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    expect(execution.locator("#conn .label")).to_contain_text("attempt", timeout=WAIT_MS)
    dev_server.start()
    # with full jitter the five attempts may all fall inside the restart: then the page
    # says so and its Retry button is what a user presses
    conn = execution.locator("#conn")
    expect(conn).to_have_attribute("data-state", re.compile("connected|failed"), timeout=40_000)
    if conn.get_attribute("data-state") == "failed":
        conn.get_by_role("button", name="Retry").click()
    expect(conn).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
    status(publisher, "running", 60)
    status(publisher, "completed", 100)
    expect(execution.locator("#percent")).to_have_text("100%", timeout=WAIT_MS)
    expect(execution.locator("#status")).to_have_text("Completed")
    # every update shown once: 10, 60, 100, nothing twice
    assert execution.locator("#timeline li").count() == 3


def test_without_dev_mode_the_pages_ask_for_a_token(browser: Browser) -> None:
    server = ServerProcess(ENV).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/demo/")
        expect(page.get_by_role("button", name="Continue")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("text=not in development mode")).to_be_visible()
        context.close()
    finally:
        server.stop()


def test_demo_tokens_are_given_in_dev_mode_only(dev_server: ServerProcess) -> None:
    body = http("GET", dev_server.url + "/demo/token?channel=execution:42", "")
    assert body["user"] == "dev-user" and body["token"] and body["grant"]
    server = ServerProcess(ENV).start()
    try:
        with pytest.raises(Exception) as refused:
            http("GET", server.url + "/demo/token", "")
        assert "404" in str(refused.value)
    finally:
        server.stop()
