"""The HTTP server in front of the application: time and size bounds, and whose
``X-Forwarded-For`` is believed.

Why a module of its own: Tornado's defaults suit a trusted network, not the internet.
A connection may take as long as it likes to send its headers or its body (one byte a
second, "slowloris", holds a socket and a buffer forever), and ``xheaders=True`` makes
Tornado believe ``X-Forwarded-For`` / ``X-Real-Ip`` from any peer, so any client could
choose the address that the per-address connection cap and the logs see. The command
(``cli.py``) and the tests build the server from ``http_server_options(settings)`` with
``HTTPServer`` below, so the server under test is the one that runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import tornado.httpserver
import tornado.httputil

from .config import Settings

#: Request line and headers together: a JWT in the URL or in ``Authorization`` is at
#: most 8 KiB (``protocol.frames.MAX_TOKEN``); browsers add cookies. Larger: closed.
MAX_HEADER_BYTES = 64 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Addresses and networks (``10.0.0.5``, ``10.0.0.0/8``, ``fd00::/8``) of the proxies
    whose forwarding headers are believed; ``address in proxies`` tells whether one is."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(e, strict=False) for e in entries)

    def __contains__(self, address: object) -> bool:
        if not self.networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(ip in network for network in self.networks)


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server with its own ``xheaders`` mechanism applied only to requests
    whose direct peer is a trusted proxy; for every other request the peer's address
    is the client's address, whatever headers it sends.

    Among the addresses of ``X-Forwarded-For``, Tornado takes the last one that is not
    in ``trusted_downstream``; here that set is the trusted proxies themselves, networks
    included, so a chain of proxies (load balancer, then nginx) yields the client.
    """

    def initialize(  # type: ignore[override]
        self,
        request_callback: tornado.httputil.HTTPServerConnectionDelegate,
        trusted_proxies: TrustedProxies,
        **kwargs: Any,
    ) -> None:
        super().initialize(request_callback, xheaders=True, **kwargs)
        self.delegate = request_callback
        self.trusted_proxies = trusted_proxies

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        # Tornado's per-connection context: remote_ip is still the socket peer here
        # (the forwarding headers are applied once the request's headers arrive)
        context = request_conn.context  # type: ignore[attr-defined]
        if context.remote_ip in self.trusted_proxies:
            context.trusted_downstream = self.trusted_proxies
            return super().start_request(server_conn, request_conn)
        return self.delegate.start_request(server_conn, request_conn)


def http_server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``HTTPServer(application, **options)``.

    - ``idle_connection_timeout``: the time a client has to send a request's headers
      (Tornado applies it to the headers of every request, so an idle keep-alive
      connection is closed after it too);
    - ``body_timeout``: the time it has to send the body, whatever its size;
    - ``max_body_size``: what Tornado reads at all. The API routes stream their body
      and stop at ``http_max_body_bytes`` themselves; routes whose body Tornado reads
      whole (the admin broadcast) answer the JSON 413 up to four times the limit, a
      bare 400 beyond.
    """
    return {
        "idle_connection_timeout": settings.http_header_timeout_s,
        "body_timeout": settings.http_body_timeout_s,
        "max_header_size": MAX_HEADER_BYTES,
        "max_body_size": max(4 * settings.http_max_body_bytes, 1 << 20),
        "trusted_proxies": TrustedProxies(settings.trusted_proxies),
    }
