"""A vhost-user-vsock backend for tests: what `-M nitro-enclave,vsock=CHARDEV` connects to.

QEMU's machine always creates a `vhost-user-vsock` device and refuses to start without a backend on
the chardev's Unix socket. This one implements the vhost-user control plane (the front end's
messages: features, protocol features, owner, memory table — whose fds are mmapped — vring
num/addr/base/kick/call/err, GET_VRING_BASE and GET_CONFIG answering the guest CID), enough for the
guest's `vmw_vsock_virtio_transport` to bind the device. With `data_plane=True` it also moves
vsock packets (`vsock_plane`), so `connect(port)` reaches a listener in the guest (the signer).

Wire format (QEMU docs/interop/vhost-user.rst): a 12-byte little-endian header
`u32 request, u32 flags, u32 size`, then `size` payload bytes; fds travel as SCM_RIGHTS.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nitro_qemu import NitroQemuError

if TYPE_CHECKING:
    from nitro_qemu.vsock_plane import VsockDataPlane

HEADER = struct.Struct("<III")
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
SET_CONFIG = 25

NAMES = {v: k for k, v in globals().items() if k.isupper() and k.startswith(("GET_", "SET_", "RESET_"))}

F_VERSION_1 = 1 << 32
F_PROTOCOL_FEATURES = 1 << 30
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9
QUEUES = 3  # virtio-vsock: rx, tx, event
VRING_NOFD = 1 << 8
MAX_FDS = 8
REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset


class VhostUserError(NitroQemuError):
    """The front end sent something this backend does not understand or cannot honour."""


@dataclass
class Region:
    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int
    mapping: mmap.mmap


@dataclass
class Vring:
    num: int = 0
    base: int = 0
    desc: int = 0  # front end's user addresses (translate with userspace_addr)
    used: int = 0
    avail: int = 0
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    enabled: bool = False


@dataclass
class BackendState:
    """What the front end configured, for tests to inspect."""

    features: int = 0
    protocol_features: int = 0
    owned: bool = False
    regions: list[Region] = field(default_factory=list)
    vrings: list[Vring] = field(default_factory=lambda: [Vring() for _ in range(QUEUES)])
    requests: list[str] = field(default_factory=list)  # names, in arrival order


class VhostUserVsock:
    """Listen on `path`; serve one front end (QEMU) at a time on a daemon thread.

    Args:
        path: the Unix socket QEMU's `-chardev socket,path=...` connects to.
        guest_cid: the CID GET_CONFIG reports (the enclave's CID; Nitro uses 4 upwards).
    """

    def __init__(self, path: Path, guest_cid: int = 16, *, data_plane: bool = False) -> None:
        if guest_cid < 3 or guest_cid >= 0xFFFFFFFF:
            raise ValueError(f"guest CID {guest_cid} is reserved or out of range")
        self.path = path
        self.guest_cid = guest_cid
        self.state = BackendState()
        self.error: Exception | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, name="vhost-user-vsock", daemon=True)
        self._closed = False
        self._want_plane = data_plane
        self._conn: socket.socket | None = None
        self.plane: VsockDataPlane | None = None

    def __enter__(self) -> VhostUserVsock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._want_plane:
            from nitro_qemu.vsock_plane import VsockDataPlane

            self.plane = VsockDataPlane(self.state, self.guest_cid)
        self._thread.start()

    def connect(self, port: int, timeout: float = 30.0) -> socket.socket:
        """A stream socket to the guest's vsock `port` through the data plane.

        Raises:
            VhostUserError: the backend was made without a data plane.
            ConnectionRefusedError: nothing listens on `port` in the guest.
            TimeoutError: the guest did not answer.
        """
        if self.plane is None:
            raise VhostUserError("this backend has no data plane (data_plane=False)")
        return self.plane.connect(port, timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvmsg
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(5)
        if self.plane is not None:
            self.plane.close()
        self._release()
        self.path.unlink(missing_ok=True)

    def _release(self) -> None:
        for r in self.state.regions:
            r.mapping.close()
        self.state.regions = []
        for v in self.state.vrings:
            for fd in (v.kick, v.call, v.err):
                if fd is not None:
                    os.close(fd)
            v.kick = v.call = v.err = None

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conn = conn
            with conn:
                try:
                    while self.handle_one(conn):
                        pass
                except (OSError, VhostUserError) as e:
                    if not self._closed:
                        self.error = e

    # -- protocol -------------------------------------------------------------------------------

    def handle_one(self, conn: socket.socket) -> bool:
        """Read and answer one message; False when the front end hung up."""
        header, fds = _recv_with_fds(conn, HEADER.size)
        if not header:
            return False
        request, flags, size = HEADER.unpack(header)
        if flags & 0x3 != VERSION:
            raise VhostUserError(f"vhost-user version {flags & 0x3}, expected {VERSION}")
        payload = _recv_exact(conn, size) if size else b""
        name = NAMES.get(request, f"request {request}")
        self.state.requests.append(name)
        reply = self._dispatch(request, payload, fds)
        if reply is not None:
            conn.sendall(HEADER.pack(request, VERSION | FLAG_REPLY, len(reply)) + reply)
        elif flags & FLAG_NEED_REPLY:
            # REPLY_ACK: u64 0 means success.
            conn.sendall(HEADER.pack(request, VERSION | FLAG_REPLY, 8) + struct.pack("<Q", 0))
        return True

    def _dispatch(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        s = self.state
        if request == GET_FEATURES:
            return struct.pack("<Q", F_VERSION_1 | F_PROTOCOL_FEATURES)
        if request == SET_FEATURES:
            (s.features,) = struct.unpack_from("<Q", payload)
            return None
        if request == GET_PROTOCOL_FEATURES:
            return struct.pack("<Q", PROTOCOL_F_CONFIG | PROTOCOL_F_REPLY_ACK)
        if request == SET_PROTOCOL_FEATURES:
            (s.protocol_features,) = struct.unpack_from("<Q", payload)
            return None
        if request == SET_OWNER:
            s.owned = True
            return None
        if request == RESET_OWNER:
            s.owned = False
            return None
        if request == GET_QUEUE_NUM:
            return struct.pack("<Q", QUEUES)
        if request == SET_MEM_TABLE:
            self._set_mem_table(payload, fds)
            return None
        if request in (SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ENABLE):
            index, num = struct.unpack_from("<II", payload)
            ring = self._ring(index)
            if request == SET_VRING_NUM:
                ring.num = num
            elif request == SET_VRING_BASE:
                ring.base = num
            else:
                ring.enabled = bool(num)
            return None
        if request == GET_VRING_BASE:
            index, _ = struct.unpack_from("<II", payload)
            ring = self._ring(index)
            ring.enabled = False  # the front end stops the ring with this message
            return struct.pack("<II", index, ring.base)
        if request == SET_VRING_ADDR:
            index, _flags, desc, used, avail, _log = struct.unpack_from("<IIQQQQ", payload)
            ring = self._ring(index)
            ring.desc, ring.used, ring.avail = desc, used, avail
            return None
        if request in (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR):
            (u64,) = struct.unpack_from("<Q", payload)
            ring = self._ring(u64 & 0xFF)
            fd = None if u64 & VRING_NOFD else (fds.pop(0) if fds else None)
            attr = {SET_VRING_KICK: "kick", SET_VRING_CALL: "call", SET_VRING_ERR: "err"}[request]
            old = getattr(ring, attr)
            if old is not None:
                os.close(old)
            setattr(ring, attr, fd)
            if request == SET_VRING_KICK and fd is not None:
                ring.enabled = True  # without PROTOCOL_FEATURES a kick fd starts the ring
            return None
        if request == GET_CONFIG:
            offset, size, flags = struct.unpack_from("<III", payload)
            config = struct.pack("<Q", self.guest_cid).ljust(max(size + offset, 8), b"\0")
            return struct.pack("<III", offset, size, flags) + config[offset : offset + size]
        if request == SET_CONFIG:
            return None  # the vsock config is read-only for the driver
        for fd in fds:
            os.close(fd)
        raise VhostUserError(f"unsupported vhost-user request {NAMES.get(request, request)}")

    def _ring(self, index: int) -> Vring:
        if index >= QUEUES:
            raise VhostUserError(f"vring {index} does not exist (vsock has {QUEUES})")
        return self.state.vrings[index]

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        (count,) = struct.unpack_from("<I", payload)
        if count != len(fds):
            for fd in fds:
                os.close(fd)
            raise VhostUserError(f"SET_MEM_TABLE: {count} regions but {len(fds)} fds")
        for r in self.state.regions:
            r.mapping.close()
        regions = []
        for i, fd in enumerate(fds):
            gpa, size, uaddr, offset = REGION.unpack_from(payload, 8 + i * REGION.size)
            try:
                mapping = mmap.mmap(fd, size + offset, mmap.MAP_SHARED)
            finally:
                os.close(fd)
            regions.append(Region(gpa, size, uaddr, offset, mapping))
        self.state.regions = regions

    def guest_read(self, guest_phys_addr: int, n: int) -> bytes:
        """Bytes of guest memory through the shared mappings (what a data plane would read).

        Raises:
            VhostUserError: the range is not in any region the front end shared.
        """
        for r in self.state.regions:
            if r.guest_phys_addr <= guest_phys_addr and guest_phys_addr + n <= r.guest_phys_addr + r.size:
                start = r.mmap_offset + guest_phys_addr - r.guest_phys_addr
                return bytes(r.mapping[start : start + n])
        raise VhostUserError(f"guest address 0x{guest_phys_addr:x}+{n} is not shared memory")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise VhostUserError(f"front end closed mid-message ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def _recv_with_fds(conn: socket.socket, n: int) -> tuple[bytes, list[int]]:
    """Read n bytes (the header) and any fds that came with them; b'' at end of stream."""
    fds: list[int] = []
    data, ancdata, _flags, _addr = conn.recvmsg(n, socket.CMSG_SPACE(MAX_FDS * 4))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % 4
            fds += list(struct.unpack(f"<{usable // 4}i", cdata[:usable]))
    if data and len(data) < n:
        data += _recv_exact(conn, n - len(data))
    return data, fds
