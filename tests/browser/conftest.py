"""Headless Chromium driving static/renum-rt.js against real server processes.

The browser is the machine's Debian ``chromium`` (tests/run.sh installs it; a browser is
never downloaded), driven with Playwright's sync API from the test thread, so no event
loop is shared with pytest-tornado. Servers are real processes (``ServerProcess``). The
test page is same-origin with the server without writing into static/: ``page.route``
answers ``http://127.0.0.1:<port>/__test__.html`` with a harness that imports
``/static/renum-rt.js`` (served by the server) and records what the client reports.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Route,
    sync_playwright,
)

from tests.browser.harness import CHROMIUM_ARGS, ENV, HARNESS, STATIC
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # module scope: the sync API's own event loop is gone before other modules' tests run
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "chromium is missing: tests/run.sh installs it with apt-get"
    browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One server (in-memory engine) for the tests that do not stop it; each uses its own users."""
    process = ServerProcess(ENV).start()
    yield process
    process.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    # A page fulfilled by page.route() has no server address, so Chromium's Local Network
    # Access checks count it as public and would block its WebSocket to 127.0.0.1; the
    # real page (served by the server itself) is loopback to loopback and never asks.
    context = browser.new_context(permissions=["local-network-access"])
    yield context
    context.close()


def serve_static_from_disk(route: Route) -> None:
    """For pages whose server is down: the library files as the server would serve them."""
    path = STATIC / Path(route.request.url.split("/static/", 1)[1].split("?")[0]).name
    route.fulfill(path=str(path), content_type="text/javascript")


@pytest.fixture
def open_page(context: BrowserContext) -> Callable[..., Page]:
    """``open_page(port, static_from_disk=False)``: a new tab on the harness page of
    ``http://127.0.0.1:<port>``, its module loaded; console errors are kept in ``page.errors``,
    the URLs of its WebSockets in ``page.sockets``."""

    def make(port: int, static_from_disk: bool = False) -> Page:
        origin = f"http://127.0.0.1:{port}"
        context.route(origin + "/__test__.html", lambda route: route.fulfill(body=HARNESS, content_type="text/html"))
        if static_from_disk:
            context.route(origin + "/static/*.js", serve_static_from_disk)
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.sockets = []  # type: ignore[attr-defined]
        page.on("websocket", lambda socket: page.sockets.append(socket.url))  # type: ignore[attr-defined]
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))  # type: ignore[attr-defined]
        page.goto(origin + "/__test__.html")
        page.wait_for_function("window.log !== undefined", timeout=10_000)
        return page

    return make
