"""The worker channel: framed JSON messages over a Unix socket, with file descriptors beside.

A frame is a fixed header (the lengths of a JSON document and of a raw payload), the JSON
document, then the payload (an artifact's bytes). Open files travel with a frame as
``SCM_RIGHTS`` ancillary data: the server hands a worker the files of its task this way, so the
worker never needs the paths, or the rights, to open them itself.

Nothing is unpickled on either side: what a worker sends the server is data, bounded in size,
and the server checks it like any other input from a user.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

_HEADER = struct.Struct("!II")  # JSON length, payload length
MAX_FDS = 64  # files sent with one frame at most (a chunk's parts, its result, its bundle)
MAX_DOCUMENT = 64 << 20  # bytes of JSON in one frame at most
_PIECE = 1 << 20


class ChannelError(Exception):
    """The peer broke the protocol (a frame too large, not JSON) or hung up mid-frame."""


class Channel:
    def __init__(self, sock: socket.socket, max_payload: int = 1 << 30) -> None:
        self.sock = sock
        self.max_payload = max_payload

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, document: dict[str, Any], fds: Sequence[int] = (), payload: bytes = b"") -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        if len(body) > MAX_DOCUMENT:
            raise ChannelError(f"a message of {len(body)} bytes is over {MAX_DOCUMENT}")
        frame = _HEADER.pack(len(body), len(payload)) + body
        if fds:
            sent = self.sock.sendmsg(
                [frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
            frame = frame[sent:]
        if frame:
            self.sock.sendall(frame)
        if payload:
            self.sock.sendall(payload)

    def recv(self) -> tuple[dict[str, Any], list[int], int]:
        """The next message, the descriptors sent with it, and the length of its payload, which
        the caller must read next (:meth:`read_payload` or :meth:`skip_payload`).

        Raises :class:`EOFError` when the peer closed the channel between frames."""
        fds: list[int] = []
        head = b""
        while len(head) < _HEADER.size:
            data, ancdata, _flags, _addr = self.sock.recvmsg(
                _HEADER.size - len(head), socket.CMSG_SPACE(MAX_FDS * 4)
            )
            for level, kind, raw in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(raw[: len(raw) - len(raw) % got.itemsize])
                    fds.extend(got)
            if not data:
                _close_all(fds)
                if head:
                    raise ChannelError("the peer hung up in the middle of a message")
                raise EOFError
            head += data
        size, payload = _HEADER.unpack(head)
        if size > MAX_DOCUMENT or payload > self.max_payload:
            _close_all(fds)
            raise ChannelError(f"a message of {size} + {payload} bytes is over the limit")
        try:
            document = json.loads(self._read_exactly(size))
        except (ValueError, RecursionError) as exc:
            _close_all(fds)
            raise ChannelError(f"a message is not JSON: {exc}") from None
        if not isinstance(document, dict):
            _close_all(fds)
            raise ChannelError("a message is not a JSON object")
        return document, fds, payload

    def read_payload(self, size: int, sink: BinaryIO | None = None) -> bytes:
        """Read a payload of ``size`` bytes: into ``sink`` piece by piece (returning b""), or
        whole."""
        if sink is None:
            return self._read_exactly(size)
        left = size
        while left:
            piece = self._read_exactly(min(left, _PIECE))
            sink.write(piece)
            left -= len(piece)
        return b""

    def skip_payload(self, size: int) -> None:
        left = size
        while left:
            left -= len(self._read_exactly(min(left, _PIECE)))

    def _read_exactly(self, size: int) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:], size - got)
            if n == 0:
                raise ChannelError("the peer hung up in the middle of a message")
            got += n
        return bytes(buf)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
