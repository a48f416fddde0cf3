"""The pieces of `nox -s nitro-qemu` that need no QEMU build: the vhost-user-vsock backend driven by a
front end written here from the protocol text, the build's source derivation and blob patch, the
devboot NSM check without a device, and the `sentinel.nsm=device` kernel flag."""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitro_qemu import build as qbuild
from nitro_qemu import vhost_user as vu
from nitro_qemu import vsock_plane as vsock

from enclave import devboot
from enclave.nsm import NsmUnavailable, device_required, open_nsm


class FrontEnd:
    """The QEMU side of vhost-user, minimal: send a message (with fds), read a reply."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(str(path))

    def send(self, request: int, payload: bytes = b"", fds: list[int] | None = None,
             flags: int = 0x1) -> None:
        msg = struct.pack("<III", request, flags, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"<{len(fds)}i", *fds))] if fds else []
        self.sock.sendmsg([msg], anc)

    def reply(self, request: int) -> bytes:
        header = self._exact(12)
        req, flags, size = struct.unpack("<III", header)
        assert req == request and flags == 0x1 | 0x4
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "backend hung up"
            buf += chunk
        return buf


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[vu.VhostUserVsock]:
    with vu.VhostUserVsock(tmp_path / "vsock.sock", guest_cid=21) as b:
        yield b


def test_control_plane_handshake_as_qemu_sends_it(backend: vu.VhostUserVsock) -> None:
    fe = FrontEnd(backend.path)
    fe.send(vu.GET_FEATURES)
    (features,) = struct.unpack("<Q", fe.reply(vu.GET_FEATURES))
    assert features & vu.F_VERSION_1 and features & vu.F_PROTOCOL_FEATURES
    fe.send(vu.GET_PROTOCOL_FEATURES)
    (proto,) = struct.unpack("<Q", fe.reply(vu.GET_PROTOCOL_FEATURES))
    assert proto & vu.PROTOCOL_F_CONFIG
    fe.send(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", vu.PROTOCOL_F_CONFIG))
    fe.send(vu.SET_OWNER)
    # GET_CONFIG at offset 0, 8 bytes: the guest CID as a little-endian u64.
    fe.send(vu.GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8))
    cfg = fe.reply(vu.GET_CONFIG)
    assert struct.unpack("<IIIQ", cfg) == (0, 8, 0, 21)
    # A partial read (offset 4, 4 bytes) gets the upper half.
    fe.send(vu.GET_CONFIG, struct.pack("<III", 4, 4, 0) + bytes(4))
    assert fe.reply(vu.GET_CONFIG)[12:] == bytes(4)
    fe.send(vu.SET_FEATURES, struct.pack("<Q", vu.F_VERSION_1))
    fe.send(vu.SET_VRING_NUM, struct.pack("<II", 1, 128))
    fe.send(vu.SET_VRING_BASE, struct.pack("<II", 1, 5))
    fe.send(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", 1, 0, 0x1000, 0x2000, 0x3000, 0))
    r, w = os.pipe()
    fe.send(vu.SET_VRING_CALL, struct.pack("<Q", 1), [w])
    fe.send(vu.SET_VRING_ERR, struct.pack("<Q", 1 | vu.VRING_NOFD))
    fe.send(vu.GET_VRING_BASE, struct.pack("<II", 1, 0))
    assert struct.unpack("<II", fe.reply(vu.GET_VRING_BASE)) == (1, 5)
    os.close(r)
    os.close(w)
    ring = backend.state.vrings[1]
    assert (ring.num, ring.base, ring.desc, ring.used, ring.avail) == (128, 5, 0x1000, 0x2000, 0x3000)
    assert ring.call is not None and ring.err is None and not ring.enabled
    assert backend.state.owned and backend.state.features == vu.F_VERSION_1
    assert backend.error is None


def test_need_reply_is_acked(backend: vu.VhostUserVsock) -> None:
    fe = FrontEnd(backend.path)
    fe.send(vu.SET_OWNER, flags=0x1 | vu.FLAG_NEED_REPLY)
    assert fe.reply(vu.SET_OWNER) == struct.pack("<Q", 0)


def test_mem_table_fds_are_mapped_and_readable(backend: vu.VhostUserVsock) -> None:
    fd = os.memfd_create("guest-ram")
    size = 2 * mmap.PAGESIZE
    os.ftruncate(fd, size)
    os.pwrite(fd, b"virtqueue bytes", mmap.PAGESIZE + 7)
    fe = FrontEnd(backend.path)
    region = struct.pack("<QQQQ", 0x100000, size, 0x7F0000000000, 0)
    fe.send(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [fd])
    fe.send(vu.GET_FEATURES)  # a round trip, so the table was processed
    fe.reply(vu.GET_FEATURES)
    os.close(fd)
    assert backend.guest_read(0x100000 + mmap.PAGESIZE + 7, 15) == b"virtqueue bytes"
    with pytest.raises(vu.VhostUserError, match="not shared memory"):
        backend.guest_read(0x100000 + size - 4, 8)


def test_unknown_request_and_bad_version_are_errors(tmp_path: Path) -> None:
    for request, flags, match in ((99, 0x1, "unsupported"), (vu.GET_FEATURES, 0x2, "version 2")):
        with vu.VhostUserVsock(tmp_path / "v.sock") as b:
            fe = FrontEnd(b.path)
            fe.send(request, flags=flags)
            fe.sock.settimeout(5)
            assert fe.sock.recv(1) == b""  # the backend drops a front end it cannot follow
            assert isinstance(b.error, vu.VhostUserError) and match in str(b.error)


def test_mem_table_fd_count_mismatch_is_an_error(backend: vu.VhostUserVsock) -> None:
    fe = FrontEnd(backend.path)
    fe.send(vu.SET_MEM_TABLE, struct.pack("<II", 2, 0) + bytes(64))
    assert fe.sock.recv(1) == b""
    assert backend.error is not None and "2 regions but 0 fds" in str(backend.error)


def test_reserved_cid_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        vu.VhostUserVsock(tmp_path / "x.sock", guest_cid=2)


def test_deb_src_entry_is_derived_from_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: file:///srv/mirror\nSuites: bookworm\nComponents: main\n"
    )
    os_release = tmp_path / "os-release"
    os_release.write_text("VERSION_CODENAME=bookworm\n")
    from reproducible import apt

    real = apt.derive_sources
    monkeypatch.setattr(
        qbuild, "derive_sources", lambda suites: real(suites, etc=etc, os_release=os_release)
    )
    monkeypatch.delenv(apt.SOURCES_ENV, raising=False)
    sources = qbuild.SourceApt(tmp_path / "apt").sources
    assert sources.splitlines()[:3] == ["Types: deb-src", "URIs: file:///srv/mirror", "Suites: trixie"]


def test_edk2_block_removed_exactly_once(tmp_path: Path) -> None:
    meson = tmp_path / "pc-bios" / "meson.build"
    meson.parent.mkdir()
    meson.write_text(
        "a = 1\nif unpack_edk2_blobs\n  foreach f : fds\n  endforeach\nendif\nb = 2\n"
    )
    qbuild.skip_edk2_blobs(tmp_path)
    assert meson.read_text() == "a = 1\nb = 2\n"
    with pytest.raises(qbuild.BuildError, match="found 0"):
        qbuild.skip_edk2_blobs(tmp_path)


def test_nsm_check_without_a_device_says_so(tmp_path: Path) -> None:
    result = devboot.nsm_check(b"n", str(tmp_path / "nsm"))
    assert result["ok"] is False and "cannot open" in str(result["error"])


def test_kernel_flag_forbids_the_emulator(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 sentinel.nsm=device\n")
    assert device_required(cmdline)
    with pytest.raises(NsmUnavailable, match="requires the device"):
        open_nsm(True, device_path=tmp_path / "nsm", cmdline_path=cmdline)
    cmdline.write_text("console=ttyS0 sentinel.nsm=devicex\n")
    assert not device_required(cmdline)
    assert not device_required(tmp_path / "missing")
    nsm = open_nsm(True, device_path=tmp_path / "nsm", cmdline_path=cmdline, fw_cfg_dir=tmp_path)
    assert nsm.describe_nsm().module_id.startswith("i-emulated")


class MiniGuest:
    """The guest's half of virtio-vsock, written here from the virtio spec: split rings in a memfd
    that the backend maps, rx buffers posted, tx packets queued and kicked."""

    NUM = 8
    GPA = 0x40000000
    UADDR = 0x7F1200000000  # the "QEMU user address" of the same memory
    RINGS = {0: 0x0000, 1: 0x1000}  # per queue: desc at +0, avail at +0x200, used at +0x400
    BUFS = 0x4000

    def __init__(self, fe: FrontEnd, cid: int) -> None:
        self.fe, self.cid = fe, cid
        self.fd = os.memfd_create("guest")
        os.ftruncate(self.fd, 0x20000)
        self.mem = mmap.mmap(self.fd, 0x20000)
        region = struct.pack("<QQQQ", self.GPA, 0x20000, self.UADDR, 0)
        fe.send(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [self.fd])
        self.kicks: dict[int, int] = {}
        self.calls: dict[int, int] = {}
        self.avail = {0: 0, 1: 0}
        self.used_seen = {0: 0, 1: 0}
        for q, base in self.RINGS.items():
            fe.send(vu.SET_VRING_NUM, struct.pack("<II", q, self.NUM))
            fe.send(vu.SET_VRING_BASE, struct.pack("<II", q, 0))
            u = self.UADDR + base
            fe.send(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, u, u + 0x400, u + 0x200, 0))
            self.kicks[q], self.calls[q] = os.eventfd(0), os.eventfd(0, os.EFD_NONBLOCK)
            fe.send(vu.SET_VRING_CALL, struct.pack("<Q", q), [self.calls[q]])
            fe.send(vu.SET_VRING_KICK, struct.pack("<Q", q), [self.kicks[q]])
            fe.send(vu.SET_VRING_ENABLE, struct.pack("<II", q, 1))
        for i in range(self.NUM):  # rx: 4 KiB device-writable buffers
            self._post(0, i, self.BUFS + i * 0x1000, 0x1000, write=True)
        self._kick(0)

    def _post(self, q: int, i: int, off: int, n: int, *, write: bool) -> None:
        base = self.RINGS[q]
        struct.pack_into("<QIHH", self.mem, base + 16 * i, self.GPA + off, n, 2 if write else 0, 0)
        struct.pack_into("<H", self.mem, base + 0x200 + 4 + 2 * (self.avail[q] % self.NUM), i)
        self.avail[q] += 1
        struct.pack_into("<H", self.mem, base + 0x200 + 2, self.avail[q])

    def _kick(self, q: int) -> None:
        os.eventfd_write(self.kicks[q], 1)

    def receive(self, timeout: float = 5) -> tuple[tuple[int, ...], bytes]:
        """The next packet the backend put in the rx ring (header fields, payload)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (used,) = struct.unpack_from("<H", self.mem, self.RINGS[0] + 0x400 + 2)
            if used != self.used_seen[0]:
                slot = self.RINGS[0] + 0x400 + 4 + 8 * (self.used_seen[0] % self.NUM)
                head, length = struct.unpack_from("<II", self.mem, slot)
                self.used_seen[0] += 1
                off = self.BUFS + head * 0x1000
                data = bytes(self.mem[off : off + length])
                self._post(0, head, off, 0x1000, write=True)  # recycle the buffer
                self._kick(0)
                return vsock.HDR.unpack_from(data), data[vsock.HDR.size :]
            time.sleep(0.01)
        raise TimeoutError("no rx packet")

    def send(self, src_port: int, dst_port: int, op: int, payload: bytes = b"", flags: int = 0) -> None:
        i = self.avail[1] % self.NUM
        off = self.BUFS + 0x10000 + i * 0x1000
        pkt = vsock.HDR.pack(self.cid, 2, src_port, dst_port, len(payload), 1, op, flags,
                             65536, 0) + payload
        self.mem[off : off + len(pkt)] = pkt
        self._post(1, i, off, len(pkt), write=False)
        self._kick(1)


def test_data_plane_carries_a_stream_both_ways(tmp_path: Path) -> None:
    import threading

    with vu.VhostUserVsock(tmp_path / "v.sock", guest_cid=21, data_plane=True) as b:
        guest = MiniGuest(FrontEnd(b.path), 21)
        result: dict[str, socket.socket] = {}
        t = threading.Thread(target=lambda: result.setdefault("s", b.connect(5000, timeout=5)))
        t.start()
        (src_cid, dst_cid, src_port, dst_port, _n, kind, op, *_rest), _ = guest.receive()
        assert (src_cid, dst_cid, dst_port, kind, op) == (2, 21, 5000, 1, vsock.OP_REQUEST)
        guest.send(5000, src_port, vsock.OP_RESPONSE)
        t.join(5)
        host = result["s"]
        host.sendall(b"ping from host")
        hdr, payload = guest.receive()
        assert hdr[6] == vsock.OP_RW and payload == b"ping from host"
        guest.send(5000, src_port, vsock.OP_RW, b"pong from guest")
        host.settimeout(5)
        assert host.recv(100) == b"pong from guest"
        host.close()
        hdr, _ = guest.receive()
        assert hdr[6] == vsock.OP_SHUTDOWN and hdr[7] == vsock.SHUTDOWN_BOTH
        assert b.error is None and b.plane is not None and b.plane.error is None


def test_data_plane_refused_and_guest_initiated(tmp_path: Path) -> None:
    import threading

    with vu.VhostUserVsock(tmp_path / "v.sock", guest_cid=21, data_plane=True) as b:
        guest = MiniGuest(FrontEnd(b.path), 21)
        errors: list[BaseException] = []

        def dial() -> None:
            try:
                b.connect(6000, timeout=5)
            except ConnectionRefusedError as e:
                errors.append(e)

        t = threading.Thread(target=dial)
        t.start()
        hdr, _ = guest.receive()
        guest.send(6000, hdr[2], vsock.OP_RST)
        t.join(5)
        assert len(errors) == 1 and "refused" in str(errors[0])
        guest.send(1234, 9999, vsock.OP_REQUEST)  # the guest dials the host: not supported
        hdr, _ = guest.receive()
        assert hdr[6] == vsock.OP_RST and (hdr[2], hdr[3]) == (9999, 1234)


def test_connect_without_data_plane_is_an_error(backend: vu.VhostUserVsock) -> None:
    with pytest.raises(vu.VhostUserError, match="no data plane"):
        backend.connect(5000)


def test_exercise_nsm_on_the_emulator() -> None:
    """The guest's nsm-check, run here on the emulator: what the QEMU test compares against."""
    import base64

    from enclave.nsm.emulator import EmulatedNsm
    from verify.attestation.document import parse_document

    nsm = EmulatedNsm(pcrs={0: b"\x01" * 48, 1: b"\x02" * 48, 2: b"\x03" * 48})
    r = devboot.exercise_nsm(nsm, b"host nonce")
    assert r["ok"] is True, r.get("error")
    assert r["pcrs"]["0"] == {"value": "01" * 48, "locked": True}  # type: ignore[index]
    p = r["pcr16"]
    assert isinstance(p, dict)
    assert p["extend_is_sha384_of_old_and_data"] is True and p["locked_after_lock"] is True
    assert (p["extend_after_lock"], p["extend_locked_pcr0"], p["describe_pcr_32"]) == (
        "ReadOnlyIndex", "ReadOnlyIndex", "InvalidIndex"
    )
    doc = parse_document(base64.b64decode(str(r["attestation"]))).document
    assert doc.nonce == b"host nonce" and doc.pcrs[16] == bytes.fromhex(str(p["extended"]))
    # A second run on the same module finds PCR16 locked: the report says where it stopped.
    again = devboot.exercise_nsm(nsm, b"n")
    assert again["ok"] is False and str(again["error"]).startswith("ExtendPCR 16")
