"""The vhost-user-vsock data plane: host-initiated stream connections into the guest.

The host cannot open AF_VSOCK to a QEMU guest here (no vhost-vsock; the vsock device belongs to our
vhost-user backend), so the backend carries the packets itself: `connect(port)` returns one end of a
socketpair whose bytes travel as virtio-vsock packets (struct virtio_vsock_hdr, 44 bytes, stream
type) through the split virtqueues in the guest memory QEMU shared (SET_MEM_TABLE): queue 0 (rx)
carries packets to the guest, queue 1 (tx) from it. The host side's CID is 2 (VMADDR_CID_HOST), as
the guest expects of its parent. Only connections the host opens are supported; a guest-initiated
REQUEST is answered with RST.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from nitro_qemu.vhost_user import BackendState, Region, VhostUserError, Vring

HDR = struct.Struct("<QQIIIHHIII")  # src_cid dst_cid src_port dst_port len type op flags buf_alloc fwd_cnt
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
SHUTDOWN_BOTH = 3
HOST_CID = 2
RX, TX = 0, 1
DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
BUF_ALLOC = 256 * 1024
# Linux fills the rx ring with 4 KiB buffers that hold the header too.
_CHUNK = 4096 - HDR.size


class Memory:
    """Guest memory through the regions QEMU shared, addressed by guest-physical or QEMU-user address."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = regions

    def _locate(self, addr: int, n: int, user: bool) -> tuple[Region, int]:
        for r in self.regions:
            base = r.userspace_addr if user else r.guest_phys_addr
            if base <= addr and addr + n <= base + r.size:
                return r, r.mmap_offset + addr - base
        kind = "user" if user else "guest"
        raise VhostUserError(f"{kind} address 0x{addr:x}+{n} is outside shared memory")

    def read(self, addr: int, n: int, *, user: bool = False) -> bytes:
        r, off = self._locate(addr, n, user)
        return bytes(r.mapping[off : off + n])

    def write(self, addr: int, data: bytes, *, user: bool = False) -> None:
        r, off = self._locate(addr, len(data), user)
        r.mapping[off : off + len(data)] = data


class Virtqueue:
    """A split virtqueue (virtio 1.x, no indirect descriptors, no event index)."""

    def __init__(self, mem: Memory, ring: Vring) -> None:
        self.mem, self.ring = mem, ring
        self.last_avail = ring.base
        self.used_idx = ring.base

    def _u16(self, addr: int) -> int:
        return int(struct.unpack("<H", self.mem.read(addr, 2, user=True))[0])

    def pop(self) -> tuple[int, list[tuple[int, int, bool]]] | None:
        """(head, [(guest address, length, device-writable)]) of the next available chain."""
        ring = self.ring
        if self.last_avail == self._u16(ring.avail + 2):
            return None
        head = self._u16(ring.avail + 4 + 2 * (self.last_avail % ring.num))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        ring.base = self.last_avail
        chain, index = [], head
        for _ in range(ring.num):
            addr, length, flags, nxt = struct.unpack(
                "<QIHH", self.mem.read(ring.desc + 16 * index, 16, user=True)
            )
            if flags & DESC_F_INDIRECT:
                raise VhostUserError("indirect descriptors were not negotiated")
            chain.append((addr, length, bool(flags & DESC_F_WRITE)))
            if not flags & DESC_F_NEXT:
                return head, chain
            index = nxt
        raise VhostUserError("descriptor chain loops")

    def push(self, head: int, written: int) -> None:
        ring = self.ring
        slot = ring.used + 4 + 8 * (self.used_idx % ring.num)
        self.mem.write(slot, struct.pack("<II", head, written), user=True)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.mem.write(ring.used + 2, struct.pack("<H", self.used_idx), user=True)

    def notify(self) -> None:
        if self.ring.call is not None:
            os.write(self.ring.call, struct.pack("<Q", 1))


@dataclass
class _Conn:
    local_port: int
    peer_port: int
    host: socket.socket  # our end of the socketpair
    established: threading.Event
    refused: bool = False
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0  # bytes sent to the guest
    fwd_cnt: int = 0  # bytes of the guest's delivered to the host
    announced_fwd: int = 0
    host_eof: bool = False

    def credit(self) -> int:
        return self.peer_buf_alloc - (self.tx_cnt - self.peer_fwd_cnt)


class VsockDataPlane:
    """Moves packets between the guest's virtqueues and host socketpairs on one thread."""

    def __init__(self, state: BackendState, guest_cid: int) -> None:
        self.state, self.guest_cid = state, guest_cid
        self._conns: dict[tuple[int, int], _Conn] = {}  # (local port, peer port)
        self._pending: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self._next_port = 49152
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._queues: dict[int, Virtqueue] = {}
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="vsock-data", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for c in self._conns.values():
            c.host.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def connect(self, port: int, timeout: float = 30.0) -> socket.socket:
        """A stream to the guest's `port` (the signer: 5000).

        Raises:
            ConnectionRefusedError: the guest answered RST (nothing listens).
            TimeoutError: no answer (driver not up, or the data plane stopped).
        """
        ours, theirs = socket.socketpair()
        with self._lock:
            local = self._next_port
            self._next_port += 1
            conn = _Conn(local, port, ours, threading.Event())
            self._conns[(local, port)] = conn
            self._pending.append(self._packet(conn, OP_REQUEST))
        os.write(self._wake_w, b"x")
        if not conn.established.wait(timeout):
            raise TimeoutError(f"guest vsock port {port}: no answer in {timeout:.0f} s ({self.error})")
        if conn.refused:
            raise ConnectionRefusedError(f"guest vsock port {port} refused the connection")
        return theirs

    def _packet(self, c: _Conn, op: int, payload: bytes = b"", flags: int = 0) -> bytes:
        c.announced_fwd = c.fwd_cnt
        return HDR.pack(HOST_CID, self.guest_cid, c.local_port, c.peer_port, len(payload),
                        TYPE_STREAM, op, flags, BUF_ALLOC, c.fwd_cnt) + payload

    def _queue(self, index: int) -> Virtqueue | None:
        ring = self.state.vrings[index]
        if not ring.enabled or ring.kick is None or not ring.num or not self.state.regions:
            self._queues.pop(index, None)
            return None
        q = self._queues.get(index)
        if q is None or q.ring is not ring or q.mem.regions is not self.state.regions:
            q = Virtqueue(Memory(self.state.regions), ring)
            self._queues[index] = q
        return q

    def _run(self) -> None:
        try:
            while not self._stop:
                fds = [self._wake_r]
                for i in (RX, TX):
                    kick = self.state.vrings[i].kick
                    if kick is not None:
                        fds.append(kick)
                with self._lock:
                    fds += [c.host.fileno() for c in self._conns.values()
                            if c.established.is_set() and not c.refused and not c.host_eof
                            and c.credit() > 0]
                ready, _, _ = select.select(fds, [], [], 0.1)
                for fd in ready:
                    if fd in (self._wake_r, self.state.vrings[RX].kick, self.state.vrings[TX].kick):
                        try:
                            os.read(fd, 8)
                        except BlockingIOError:
                            pass
                self._drain_tx()
                self._read_hosts(ready)
                self._fill_rx()
        except (OSError, VhostUserError) as e:
            if not self._stop:
                self.error = e

    def _drain_tx(self) -> None:
        q = self._queue(TX)
        if q is None:
            return
        popped = False
        while (item := q.pop()) is not None:
            head, chain = item
            data = b"".join(q.mem.read(a, n) for a, n, w in chain if not w)
            q.push(head, 0)
            popped = True
            if len(data) >= HDR.size:
                self._from_guest(data)
        if popped:
            q.notify()

    def _from_guest(self, data: bytes) -> None:
        (src_cid, _dst_cid, src_port, dst_port, length, kind, op, flags, buf_alloc,
         fwd_cnt) = HDR.unpack_from(data)
        payload = data[HDR.size : HDR.size + length]
        with self._lock:
            c = self._conns.get((dst_port, src_port))
            if c is None:
                if op != OP_RST:
                    # Nothing of ours: refuse (guest-initiated connections are not supported).
                    self._pending.append(HDR.pack(HOST_CID, src_cid, dst_port, src_port, 0,
                                                  TYPE_STREAM, OP_RST, 0, 0, 0))
                return
            c.peer_buf_alloc, c.peer_fwd_cnt = buf_alloc, fwd_cnt
            if op == OP_RESPONSE:
                c.established.set()
            elif op == OP_RST:
                c.refused = not c.established.is_set()
                c.established.set()
                self._drop(c)
            elif op == OP_RW:
                try:
                    c.host.sendall(payload)
                except OSError:
                    self._drop(c)
                    return
                c.fwd_cnt += len(payload)
                if c.fwd_cnt - c.announced_fwd > BUF_ALLOC // 2:
                    self._pending.append(self._packet(c, OP_CREDIT_UPDATE))
            elif op == OP_CREDIT_REQUEST:
                self._pending.append(self._packet(c, OP_CREDIT_UPDATE))
            elif op == OP_SHUTDOWN:
                try:
                    c.host.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH:
                    self._pending.append(self._packet(c, OP_RST))
                    self._drop(c)

    def _drop(self, c: _Conn) -> None:
        self._conns.pop((c.local_port, c.peer_port), None)
        c.host.close()

    def _read_hosts(self, ready: list[int]) -> None:
        with self._lock:
            for c in list(self._conns.values()):
                if c.host_eof or c.refused or c.host.fileno() not in ready:
                    continue
                n = min(_CHUNK, c.credit())
                if n <= 0:
                    continue
                try:
                    data = c.host.recv(n)
                except OSError:
                    data = b""
                if not data:
                    c.host_eof = True
                    self._pending.append(self._packet(c, OP_SHUTDOWN, flags=SHUTDOWN_BOTH))
                    continue
                c.tx_cnt += len(data)
                self._pending.append(self._packet(c, OP_RW, data))

    def _fill_rx(self) -> None:
        q = self._queue(RX)
        if q is None:
            return
        delivered = False
        while True:
            with self._lock:
                if not self._pending:
                    break
                packet = self._pending[0]
            item = q.pop()
            if item is None:
                break
            head, chain = item
            room = sum(n for _a, n, w in chain if w)
            if room < len(packet):
                raise VhostUserError(f"rx buffer of {room} bytes for a {len(packet)}-byte packet")
            with self._lock:
                self._pending.popleft()
            view, written = memoryview(packet), 0
            for addr, n, w in chain:
                if not w or written == len(packet):
                    continue
                part = view[written : written + n]
                q.mem.write(addr, bytes(part))
                written += len(part)
            q.push(head, written)
            delivered = True
        if delivered:
            q.notify()


def wait_for_driver(state: BackendState, timeout: float) -> bool:
    """True once the guest driver has started the rx and tx rings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(state.vrings[i].enabled and state.vrings[i].kick is not None for i in (RX, TX)):
            return True
        time.sleep(0.1)
    return False
