"""Misbehaving peers for the signer client, on real Unix sockets: a frame-aware relay in front of
real signers that can stall, answer late, or send each opcode to a different signer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from signer_support import recv_exact

from enclave import wire
from enclave.transport import connect, listen

#: (opcode, connection index) -> upstream address, or None to never answer that request.
Route = Callable[[int, int], str | None]
#: connection index -> seconds to hold each answer back.
Delay = Callable[[int], float]


def _read_frame(sock: socket.socket) -> bytes:
    head = recv_exact(sock, wire.HEADER_SIZE)
    n = wire.HEADER.unpack(head)[4]
    return head + recv_exact(sock, n)


class FrameRelay:
    """Accepts clients on `unix:PATH` and relays each request frame to the upstream `route` picks,
    answering after `delay`; a request routed to None is read and never answered. Records every
    request (connection index, opcode, request id) and when each client connection closed."""

    def __init__(self, path: Path, route: Route, delay: Delay = lambda i: 0.0) -> None:
        self.address = f"unix:{path}"
        self._route = route
        self._delay = delay
        self._listener = listen(self.address)
        self._closing = threading.Event()
        self.requests: list[tuple[int, int, int]] = []
        self.closed: set[int] = set()
        self.late_answers_sent: list[int] = []  # connection indices an answer went to after a delay
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        index = 0
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()
            index += 1

    def _serve(self, conn: socket.socket, index: int) -> None:
        upstreams: dict[str, socket.socket] = {}
        try:
            while True:
                try:
                    frame = _read_frame(conn)
                except (EOFError, OSError):
                    self.closed.add(index)
                    return
                _, _, op, rid, _ = wire.HEADER.unpack_from(frame)
                self.requests.append((index, op, rid))
                target = self._route(op, index)
                if target is None:
                    continue  # swallowed: the client waits for an answer that never comes
                up = upstreams.get(target)
                if up is None:
                    up = upstreams[target] = connect(target)
                up.sendall(frame)
                answer = _read_frame(up)
                delay = self._delay(index)
                if delay:
                    time.sleep(delay)
                try:
                    conn.sendall(answer)
                except OSError:
                    self.closed.add(index)
                    return
                if delay:
                    self.late_answers_sent.append(index)
        finally:
            for up in upstreams.values():
                up.close()
            conn.close()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def frame_relay(path: Path, route: Route, delay: Delay = lambda i: 0.0) -> Iterator[FrameRelay]:
    relay = FrameRelay(path, route, delay)
    try:
        yield relay
    finally:
        relay.close()
