"""Thin Tornado adapters: they move bytes between sockets and the gateway core."""
