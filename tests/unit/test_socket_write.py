"""Tornado internals the direct socket write relies on: fails when a Tornado release
changes them (renum_rt/handlers/socket_write.py)."""

from __future__ import annotations

import socket

import pytest
from tornado.iostream import IOStream

from renum_rt.handlers import socket_write


def test_the_write_buffer_and_socket_are_where_the_direct_write_expects_them() -> None:
    a, b = socket.socketpair()
    try:
        stream = IOStream(a)
        assert stream.socket is a
        assert socket_write.pending_bytes(stream) == 0
        assert hasattr(stream._write_buffer, "append") and hasattr(stream._write_buffer, "advance")
    finally:
        a.close()
        b.close()


@pytest.mark.gen_test
async def test_frames_arrive_whole_and_in_order_whether_sent_directly_or_queued() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream, reader = IOStream(a), IOStream(b)
    try:
        frames = [bytes([i % 256]) * 3000 for i in range(200)]  # far more than both kernel buffers
        for frame in frames:
            socket_write.write(stream, frame)
        assert socket_write.pending_bytes(stream) > 0  # the socket filled up: the rest is queued
        received = await reader.read_bytes(sum(map(len, frames)))
        assert received == b"".join(frames)
        assert socket_write.pending_bytes(stream) == 0
    finally:
        stream.close()
        reader.close()
