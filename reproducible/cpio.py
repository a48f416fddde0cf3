"""Deterministic newc ("070701") cpio archives, the format the Linux kernel unpacks as initramfs.

Same tree in, same bytes out: entries sorted by path bytes, inode numbers assigned 1..n in that
order, uid/gid 0, modes normalised (directories 0755, files 0755 if any execute bit else 0644,
symlinks 0777, device nodes keep their bits), every mtime = SOURCE_DATE_EPOCH, nlink 1 (2 for
directories), no device numbers of the build host, and the `TRAILER!!!` record. Uncompressed, like
nitro-cli's ramdisks, so the EIF's bytes are the cpio bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reproducible.tree import CHARDEV, DIR, FILE, SYMLINK, Tree

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
CHUNK = 1 << 20


@dataclass(frozen=True)
class CpioStats:
    size: int
    entries: int
    sha256: str


def normalized_mode(kind: str, mode: int) -> int:
    if kind == DIR:
        return stat.S_IFDIR | 0o755
    if kind == SYMLINK:
        return stat.S_IFLNK | 0o777
    if kind == CHARDEV:
        return stat.S_IFCHR | (mode & 0o777)
    return stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
            namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


BATCH = 256 << 10  # headers and small bodies are gathered up to this size before a write
DEPTH = 4  # big-body buffers in flight between the reading thread and the hashing thread


class _Out:
    """The archive's sink: writes on the calling thread, SHA-256 on a worker thread.

    hashlib releases the GIL on big buffers, so copying file bodies and hashing them overlap on
    two cores; small pieces (headers, names, small files) are gathered into one buffer first so
    the worker sees few, large updates, always in file order.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.n = 0
        self.h = hashlib.sha256()
        self._small = bytearray()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cpio-sha256")
        self._free = [bytearray(CHUNK) for _ in range(DEPTH)]
        self._inflight: deque[tuple[bytearray | bytes, Future[None]]] = deque()
        self._fds: dict[Path, int] = {}

    def write(self, b: bytes) -> None:
        self._small += b
        self.n += len(b)
        if len(self._small) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._small:
            data = bytes(self._small)
            self._small.clear()
            self.f.write(data)
            self._inflight.append((data, self._worker.submit(self.h.update, data)))
            self._retire(2 * DEPTH)  # bounded: the hashing thread never lags far behind

    def _retire(self, keep: int) -> None:
        while len(self._inflight) > keep:
            buf, fut = self._inflight.popleft()
            fut.result()
            if isinstance(buf, bytearray):
                self._free.append(buf)

    def _buffer(self) -> bytearray:
        while not self._free:
            self._retire(len(self._inflight) - 1)
        return self._free.pop()

    def copy_from(self, path: Path, offset: int, size: int) -> int:
        """Append `size` bytes of `path` from `offset`; returns how many there were."""
        if size <= BATCH:
            fd = self._fd(path)
            data = os.pread(fd, size, offset)
            self.write(data)
            return len(data)
        self._flush()
        fd = self._fd(path)
        done = 0
        while done < size:
            buf = self._buffer()
            view = memoryview(buf)[: min(CHUNK, size - done)]
            n = os.preadv(fd, [view], offset + done)
            if n <= 0:
                self._free.append(buf)
                break
            self.f.write(view[:n])
            self._inflight.append((buf, self._worker.submit(self.h.update, view[:n])))
            done += n
        self.n += done
        return done

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def file_size(self, path: Path) -> int:
        return os.fstat(self._fd(path)).st_size

    def finish(self) -> str:
        self._flush()
        self.close()
        return self.h.hexdigest()

    def close(self) -> None:
        try:
            while self._inflight:
                self._inflight.popleft()[1].result()
        finally:
            self._worker.shutdown(wait=True)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def write_cpio(
    tree: Tree, dest: BinaryIO, *, mtime: int, progress: Callable[[int], None] | None = None
) -> CpioStats:
    """Serialise `tree` as a newc archive into `dest`.

    Args:
        progress: called with the number of payload bytes written so far (for rich progress).

    Raises:
        OSError: reading a file source or writing `dest` failed.
        ValueError: a file source changed size since it was added.
    """
    if not 0 <= mtime <= 0xFFFFFFFF:
        raise ValueError(f"mtime {mtime} does not fit newc's 32-bit field")
    out = _Out(dest)
    try:
        count = 0
        done = 0
        for ino, (path, e) in enumerate(tree.items(), start=1):
            name = path.encode() + b"\0"
            mode = normalized_mode(e.kind, e.mode)
            if e.kind == SYMLINK:
                target = e.target.encode()
                body: bytes | None = target
                size = len(target)
            elif e.kind == FILE:
                body = e.data
                size = e.size
            else:
                body, size = b"", 0
            out.write(_header(ino, mode, 2 if e.kind == DIR else 1, mtime, size, e.rdev,
                              len(name)))
            out.write(name + _pad(110 + len(name)))
            if body is not None:
                out.write(body)
            else:
                assert e.source is not None
                written = out.copy_from(e.source, e.offset, size)
                # A whole file (offset 0: a range inside a layer never starts at a tar header)
                # must also not have grown.
                if written != size or (e.offset == 0 and out.file_size(e.source) != size):
                    raise ValueError(f"{path}: source {e.source} changed size "
                                     f"({written} != {size})")
            out.write(_pad(size))
            done += size
            count += 1
            if progress is not None and e.kind == FILE:
                progress(done)
        name = TRAILER.encode() + b"\0"
        out.write(_header(0, 0, 1, 0, 0, (0, 0), len(name)))
        out.write(name + _pad(110 + len(name)))
        size_total = out.n
        digest = out.finish()
    finally:
        out.close()
    return CpioStats(size_total, count, digest)


@dataclass(frozen=True)
class CpioMember:
    name: str
    mode: int
    mtime: int
    uid: int
    gid: int
    ino: int
    data: bytes


def read_cpio(blob: bytes) -> list[CpioMember]:
    """Parse a newc archive (for tests and inspection); stops at the trailer.

    Raises:
        ValueError: not a newc archive or truncated.
    """
    members: list[CpioMember] = []
    off = 0
    while True:
        hdr = blob[off : off + 110]
        if len(hdr) < 110 or hdr[:6] != MAGIC:
            raise ValueError(f"bad newc header at offset {off}")
        f = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        name_end = off + 110 + namesize
        name = blob[off + 110 : name_end - 1].decode()
        data_off = name_end + (-(110 + namesize) % 4)
        data = blob[data_off : data_off + size]
        if len(data) != size:
            raise ValueError(f"truncated member {name!r}")
        off = data_off + size + (-size % 4)
        if name == TRAILER:
            return members
        members.append(CpioMember(name, f[1], f[5], f[2], f[3], f[0], data))
