"""What the browser tests share: keys, the harness page, and HTTP calls to the server."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from playwright.sync_api import BrowserContext, Page

from renum_rt.auth import issue_token
from tests.support.server_process import ROOT, ServerProcess

SECRET = "browser-secret-" + "b" * 32
API_KEY = "browser-api-key"
ENV = {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STATIC = ROOT / "static"

#: The page under test: it exposes the library as ``lib``, records every frame the client
#: sends (``log.sent``) and what it reports, and ``start(options)`` makes ``window.rt``.
#: ``options.tokens``: what getToken answers, call after call (the last one repeats).
HARNESS = """<!doctype html>
<meta charset="utf-8"><title>renum-rt browser test</title>
<script type="module">
import * as lib from "/static/renum-rt.js";
const log = { states: [], stateTimes: [], reconnecting: [], events: [], all: [], errors: [], unread: [], sent: [],
              subscribed: [], tokenCalls: 0 };
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) { log.sent.push(JSON.parse(data)); return send.call(this, data); };
window.start = ({ tokens, channels = [], throwing = false, ...options }) => {
  const getToken = async () => tokens[Math.min(log.tokenCalls++, tokens.length - 1)];
  const rt = new lib.RenumRealtime({ ...options, getToken });
  rt.on("state", (state) => { log.states.push(state); log.stateTimes.push(performance.now()); });
  rt.on("reconnecting", (r) => log.reconnecting.push({ ...r, at: performance.now() }));
  rt.on("event", (ev) => log.all.push([ev.channel, ev.id, ev.data.n ?? null]));
  rt.on("error", (error) => log.errors.push([error.code, error.channel ?? null]));
  rt.on("unread_count", (count) => log.unread.push(count));
  rt.on("subscribed", ({ channel }) => log.subscribed.push(channel));
  for (const channel of channels) {
    if (throwing) rt.subscribe(channel, () => { throw new Error("a broken handler"); });
    rt.subscribe(channel, (ev) => log.events.push([channel, ev.id, ev.data.n]));
  }
  rt.connect();
  window.rt = rt;
};
window.lib = lib;
window.log = log;
</script>
"""


def user_token(user: str, ttl_s: int = 3600, **claims: Any) -> str:
    return issue_token(SECRET, user, ttl_s, **claims)


ADMIN_TOKEN = issue_token(SECRET, "admin", 3600, app_metadata={"role": "admin"})


def http(method: str, url: str, bearer: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def publish(server: ServerProcess, event: str = "test.tick", **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = http("POST", server.url + "/api/v1/publish", API_KEY, {"event": event, **body})
    return result


def connections_of(server: ServerProcess, user: str) -> int:
    listing = http("GET", server.url + "/admin/api/connections", ADMIN_TOKEN)
    return sum(1 for row in listing["connections"] if row["user_id"] == user)


def watched_page(context: BrowserContext) -> Page:
    """A new tab whose script errors and console errors are kept in ``page.errors``."""
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))  # type: ignore[attr-defined]
    return page
