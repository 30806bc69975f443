"""The two places renum-rt reaches into Tornado's ``IOStream``, and nowhere else.

Broadcasts hand the same pre-built frame to thousands of connections; going through
``IOStream.write`` costs a Future and a write-loop pass per connection, so when nothing
is queued for a connection the bytes go straight to its socket (docs/benchmarks.md:
about half the CPU of a broadcast). That needs two things Tornado does not publish: the
number of unsent bytes (``IOStream._write_buffer``) and the socket (``IOStream.socket``,
public but only meaningful on a plain ``IOStream``).
``tests/unit/test_socket_write.py`` checks both against a real socket pair, so a
Tornado release that changes them fails the suite instead of the servers (Tornado is
pinned below its next major version in setup.cfg).
"""

from __future__ import annotations

from tornado.iostream import IOStream, StreamClosedError


def pending_bytes(stream: IOStream) -> int:
    """Bytes queued on ``stream`` that the kernel has not taken yet."""
    return len(stream._write_buffer)


def write(stream: IOStream, frame: bytes) -> None:
    """Send ``frame`` now when nothing is queued, queue what the socket does not take
    (or all of it when bytes are already queued, to keep frames in order). Never raises."""
    if type(stream) is IOStream and not len(stream._write_buffer):
        try:
            sent = stream.socket.send(frame)
        except OSError:  # would block, or a dead peer: stream.write queues it or closes
            sent = 0
        if sent == len(frame):
            return
        if sent:
            frame = frame[sent:]
    try:
        stream.write(frame)
    except StreamClosedError:
        pass
