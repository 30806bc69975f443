"""Protocol v1: client frame parsing and validation, server frame building, error codes.

Pure functions over strings and dicts; nothing here touches a socket. ``schemas/``
holds the JSON Schema of every frame and domain event for clients and for the tests.
"""

from .errors import CODES, ProtocolError
from .frames import (
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    ClientFrame,
    encode,
    event_frame,
    event_frame_head,
    event_frame_tail,
    parse_client_frame,
)

__all__ = [
    "CODES",
    "PROTOCOL_VERSION",
    "SUBPROTOCOLS",
    "ClientFrame",
    "ProtocolError",
    "encode",
    "event_frame",
    "event_frame_head",
    "event_frame_tail",
    "parse_client_frame",
]
