"""HTML pages of the server (``/admin``, the demo pages): one file of ``static/`` each,
served with headers that keep it from being framed, sniffed, leaking its URL, or
running code that is not this server's own.

A page keeps its script and style in files under ``/static/`` (no inline code), so the
Content-Security-Policy allows ``'self'`` only: an injected inline script or style does
not run. ``connect-src`` allows this server alone: its HTTP API and its WebSocket on the
host the page was loaded from (a ``Host`` header that is not a plain host name is left
out rather than written into the policy).
"""

from __future__ import annotations

import re

import tornado.web

from ..resources import static_dir

STATIC = static_dir()
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d+)?|\[[0-9A-Fa-f:.]+\](?::\d+)?")


def policy(host: str) -> str:
    """The Content-Security-Policy of a page served to a browser that reached us as ``host``."""
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        f"connect-src 'self'{sockets}",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ])


class PageHandler(tornado.web.RequestHandler):
    """``GET`` one HTML file of ``static/``, named by the route (``page``); the path's
    groups (``/demo/executions/<id>``) are for the page's script, not for this handler."""

    def initialize(self, page: str) -> None:
        self.page = page

    def get(self, *_: str) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", policy(self.request.host))
        self.finish((STATIC / self.page).read_bytes())
