"""The ``renum-rt`` command (also ``python -m renum_rt`` and ``python server.py``): one server process.

Flags: ``--host``, ``--port``, ``--config PATH`` (TOML), ``--dev`` (throw-away secret
and API key, printed with ready user and admin tokens), ``--log-level``. Every setting
can also come from the environment (``RENUM_RT_*``); see ``config/renum-rt.toml``.
SIGTERM and SIGINT close every connection with 1012, then the process exits.

The package installs without the server's dependencies (``pip install renum-rt`` is the
SDK alone), so this module imports only what the SDK has at the top; ``main`` checks for
the ``server`` extra first and, when it is missing, says what to install (exit 2) instead
of failing with a traceback. The modules that need the extra are imported after that check.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import secrets
import signal
import sys

from . import __version__
from .config import ConfigError, Settings, load, with_changes
from .httpserver import HTTPServer, http_server_options
from .logs import log, setup
from .protocol.errors import CLOSE_RESTART

#: import names of the packages of the ``server`` extra (setup.cfg)
SERVER_MODULES = ("jwt", "cryptography", "redis", "prometheus_client")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags; they override the config file and the environment."""
    parser = argparse.ArgumentParser(prog="renum-rt", description="renum-rt real-time gateway")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8765)")
    parser.add_argument("--config", help="TOML config file (default config/renum-rt.toml)")
    parser.add_argument("--dev", action="store_true", help="development mode: throw-away keys, printed tokens")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"renum-rt {__version__}")
    return parser.parse_args(argv)


def dev_settings(settings: Settings) -> Settings:
    """Fill in a throw-away secret and API key, and print how to use them."""
    from .auth import issue_token  # needs the server extra

    secret = settings.jwt_secret or secrets.token_urlsafe(32)
    key = settings.api_key or (f"dev-{secrets.token_urlsafe(24)}",)
    settings = with_changes(settings, jwt_secret=secret, api_key=key, dev=True)
    base = f"http://{settings.host}:{settings.port}"
    user = issue_token(secret, "dev-user", ttl_s=24 * 3600, teams=["dev-team"])
    admin = issue_token(secret, "dev-admin", ttl_s=24 * 3600, app_metadata={"role": "admin"})
    print(
        f"renum-rt {__version__} dev mode, listening on {base}\n"
        f"  API key:      {key[0]}\n"
        f"  user token:   {user}\n"
        f"  admin token:  {admin}\n"
        f"  WebSocket:    ws://{settings.host}:{settings.port}/ws?token=<user token>\n"
        f"  publish:      curl -s {base}/api/v1/publish -H 'Authorization: Bearer {key[0]}' "
        "-H 'Content-Type: application/json' -d '{\"users\":[\"dev-user\"],\"event\":\"execution.status\","
        "\"data\":{\"execution_id\":\"e1\",\"team_id\":\"dev-team\",\"status\":\"running\",\"progress\":40}}'\n"
        f"  admin page:   {base}/admin   (sign in with the admin token)\n"
        f"  demo pages:   {base}/demo/  and  {base}/demo/executions/e1   (signed in as dev-user)\n"
        "  origins:      pages from any http://localhost:<port> or 127.0.0.1 may connect (dev mode only)",
        flush=True,
    )
    return settings


async def serve(settings: Settings) -> None:
    """Run one node on ``settings.host:port`` until SIGTERM/SIGINT, then close every connection with 1012."""
    from .app import Node  # needs the server extra

    node = Node(settings)
    await node.start()
    server = HTTPServer(node.app, **http_server_options(settings))
    server.listen(settings.port, settings.host)
    log(logging.INFO, "listening", host=settings.host, port=settings.port, engine=node.gateway.engine.name,
        node=node.gateway.node_id, version=__version__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log(logging.INFO, "shutting down", node=node.gateway.node_id)
    server.stop()
    await node.stop(CLOSE_RESTART, "server restart")
    await asyncio.sleep(0.1)  # let the close frames reach the clients
    await server.close_all_connections()


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code: 0, 2 (bad setup), 1 (cannot listen)."""
    args = parse_args(argv)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"renum-rt: the server needs the 'server' extra ({', '.join(missing)} missing): "
              "pip install 'renum-rt[server]'", file=sys.stderr)
        return 2
    from .auth import AuthError  # needs the server extra

    try:
        settings = load(args.config, host=args.host, port=args.port, log_level=args.log_level)
        if args.dev:
            settings = dev_settings(settings)
        setup(settings.log_level)
        if not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
            raise AuthError("no key to verify user tokens: set RENUM_RT_JWT_SECRET (or RENUM_RT_JWT_PUBLIC_KEY, "
                            "RENUM_RT_JWKS_URL), or start with --dev")
        if not settings.api_key:
            log(logging.WARNING, "no API key set (RENUM_RT_API_KEY): the publish API refuses every request")
        asyncio.run(serve(settings))
    except (ConfigError, AuthError) as exc:
        print(f"renum-rt: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"renum-rt: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0

