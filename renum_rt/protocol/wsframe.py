"""RFC 6455 framing of one server-to-client text message.

A published event goes to many connections as the *same* bytes: the frame header is
built once here and the whole frame is written to each socket, instead of letting the
WebSocket library frame (and copy) the message once per connection. Server frames are
never masked; connections that negotiated compression are not served this way (the
server does not offer permessage-deflate).
"""

from __future__ import annotations

import struct


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload
