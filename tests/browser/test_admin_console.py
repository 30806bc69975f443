"""The admin console (/admin) in headless Chromium, against a real server process, under
the page's real Content-Security-Policy (which forbids eval, so the console page is
awaited with ``expect``, never ``wait_for_function``): sign in (a non-admin token is told why it is
refused), the live connection count, a user disconnected (their client gets 4009), a
broadcast that reaches a connected client, the audit log. Clients are harness pages of
tests/browser/conftest.py running static/renum-rt.js."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.harness import ADMIN_TOKEN, ENV, http, user_token, watched_page
from tests.support.server_process import ServerProcess

OpenPage = Callable[..., Page]
WAIT_MS = 10_000

#: wraps WebSocket before the client makes one, so the test sees the close codes it gets
RECORD_CLOSES = """() => {
  window.closes = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); this.addEventListener("close", (e) => window.closes.push(e.code)); }
  };
}"""


@pytest.fixture(scope="module")
def console_server() -> Iterator[ServerProcess]:
    """A server whose admin channel pushes figures twice a second."""
    process = ServerProcess({**ENV, "RENUM_RT_NODE_HEARTBEAT_S": "0.5"}).start()
    yield process
    process.stop()


def open_console(context: BrowserContext, server: ServerProcess) -> Page:
    page = watched_page(context)
    page.goto(server.url + "/admin")
    page.wait_for_selector("#signin-view:not([hidden])", timeout=WAIT_MS)
    return page


def sign_in(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#signin")


def start_client(open_page: OpenPage, server: ServerProcess, user: str) -> Page:
    client = open_page(server.port)
    client.evaluate(RECORD_CLOSES)
    client.evaluate("""t => { start({ tokens: [t], shared: false });
                             rt.on("event", (ev) => (window.events ||= []).push(ev)); }""", user_token(user))
    client.wait_for_function("rt.state === 'connected'", timeout=WAIT_MS)
    return client


def test_a_user_token_is_told_it_is_not_an_admin_token(context: BrowserContext, console_server: ServerProcess) -> None:
    page = open_console(context, console_server)
    sign_in(page, user_token("not-an-admin"))
    page.wait_for_selector("#signin-error:not([hidden])", timeout=WAIT_MS)
    assert "not an admin token" in page.inner_text("#signin-error")
    assert page.is_hidden("#console")
    sign_in(page, "garbage")
    expect(page.locator("#signin-error")).to_contain_text("not valid or has expired", timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.length") == 0
    # the browser reports the refused calls (401, 403) themselves, and nothing else
    assert all(e.startswith("Failed to load resource") for e in page.errors)  # type: ignore[attr-defined]


def test_sign_in_live_count_disconnect_broadcast_and_audit(
    context: BrowserContext, console_server: ServerProcess, open_page: OpenPage
) -> None:
    page = open_console(context, console_server)
    sign_in(page, ADMIN_TOKEN)
    page.wait_for_selector("#console:not([hidden])", timeout=WAIT_MS)
    expect(page.locator("#live")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
    assert "token" not in page.url and page.evaluate("Object.keys(sessionStorage)") == ["renum-rt-admin-token"]
    before = http("GET", console_server.url + "/admin/api/stats", ADMIN_TOKEN)["connections"]  # the console's own too
    connections = page.locator('[data-stat="connections"] .value')
    expect(connections).to_have_text(str(before), timeout=WAIT_MS)  # pushed on the admin channel

    # a client connects: the count pushed on the admin channel goes up, the list shows it
    kicked = start_client(open_page, console_server, "console-kicked")
    expect(connections).to_have_text(str(before + 1), timeout=WAIT_MS)
    page.fill("#search", "console-kicked")
    page.click("#search-form button")
    row = page.locator("#connections tr", has_text="console-kicked")
    expect(row).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#connections tr")).to_have_count(1)

    # disconnect the user, confirming in the dialog: the client gets 4009 and stays disconnected
    row.locator("[data-action=disconnect-user]").click()
    expect(page.locator("#confirm")).to_contain_text("console-kicked")
    page.click("#confirm-ok")
    kicked.wait_for_function("window.closes.includes(4009)", timeout=WAIT_MS)
    kicked.wait_for_function("rt.state === 'disconnected'", timeout=WAIT_MS)
    expect(connections).to_have_text(str(before), timeout=WAIT_MS)

    # broadcast, with its preview, to a connected client
    listener = start_client(open_page, console_server, "console-listener")
    page.fill("#b-title", "Maintenance tonight")
    page.fill("#b-message", "Back in two minutes.")
    page.select_option("#b-level", "warning")
    assert page.inner_text("#preview-title") == "Maintenance tonight"
    assert page.get_attribute("#preview", "data-level") == "warning"
    page.click("#broadcast button[type=submit]")
    expect(page.locator("#confirm")).to_contain_text("Maintenance tonight")
    page.click("#confirm-ok")
    listener.wait_for_function("""() => (window.events || []).some((ev) => ev.event === 'system.announcement'
                                  && ev.data.title === 'Maintenance tonight' && ev.data.level === 'warning')""",
                               timeout=WAIT_MS)

    # both actions are in the audit log, newest first
    audit = page.locator("#audit tr")
    expect(audit.first).to_contain_text("Broadcast", timeout=WAIT_MS)
    expect(audit.first).to_contain_text("Maintenance tonight")
    expect(audit.nth(1)).to_contain_text("Disconnected user")
    expect(audit.nth(1)).to_contain_text("user:console-kicked")

    # signing out forgets the token
    page.click("#signout")
    expect(page.locator("#signin-view")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.errors == []  # type: ignore[attr-defined]
