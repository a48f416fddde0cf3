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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reproducible.errors import RamdiskLimit
from reproducible.tree import CHARDEV, DIR, FILE, SYMLINK, Entry, Tree
from verify.eif.sink import ByteSink, HashingSink

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX_FILE = 0xFFFFFFFF  # newc's c_filesize is 8 hex digits


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


def _entry_body(e: Entry) -> tuple[bytes | None, int]:
    """(in-memory body or None for a file source, size) of one entry."""
    if e.kind == SYMLINK:
        target = e.target.encode()
        return target, len(target)
    if e.kind == FILE:
        return e.data, e.size
    return b"", 0


def _check_size(path: str, size: int) -> None:
    if size > MAX_FILE:
        raise RamdiskLimit(f"{path}: {size:,} bytes; an initramfs (newc cpio, 32-bit sizes) "
                           f"holds files of at most {MAX_FILE:,} bytes, so this image cannot "
                           "boot as an enclave ramdisk")


def cpio_size(tree: Tree) -> int:
    """The size `write_cpio` will give `tree`, without reading any file (an EIF section's size
    goes into its header before the body is written).

    Raises:
        RamdiskLimit: a file of 4 GiB or more, which a newc header cannot describe.
    """
    total = 0
    for path, e in tree.items():
        namesize = len(path.encode()) + 1
        _, size = _entry_body(e)
        _check_size(path, size)
        total += 110 + namesize + (-(110 + namesize) % 4) + size + (-size % 4)
    namesize = len(TRAILER) + 1
    return total + 110 + namesize + (-(110 + namesize) % 4)


def stream_cpio(
    tree: Tree, sink: ByteSink, *, mtime: int, progress: Callable[[int], None] | None = None
) -> int:
    """Serialise `tree` as a newc archive into `sink` (which may be an EIF section being
    written); returns the number of entries.

    Args:
        progress: called with the number of payload bytes written so far (for rich progress).

    Raises:
        OSError: reading a file source failed.
        ValueError: a file source changed size since it was added.
        RamdiskLimit: a file of 4 GiB or more.
    """
    if not 0 <= mtime <= 0xFFFFFFFF:
        raise ValueError(f"mtime {mtime} does not fit newc's 32-bit field")
    fds: dict[Path, int] = {}
    try:
        count = 0
        done = 0
        for ino, (path, e) in enumerate(tree.items(), start=1):
            name = path.encode() + b"\0"
            body, size = _entry_body(e)
            _check_size(path, size)
            mode = normalized_mode(e.kind, e.mode)
            sink.write(_header(ino, mode, 2 if e.kind == DIR else 1, mtime, size, e.rdev,
                               len(name)) + name + _pad(110 + len(name)))
            if body is not None:
                sink.write(body)
            else:
                assert e.source is not None
                fd = fds.get(e.source)
                if fd is None:
                    fd = fds[e.source] = os.open(e.source, os.O_RDONLY | os.O_CLOEXEC)
                written = sink.copy_range(fd, e.offset, size)
                # A whole file (offset 0: a range inside a layer never starts at a tar header)
                # must also not have grown.
                if written != size or (e.offset == 0 and os.fstat(fd).st_size != size):
                    raise ValueError(f"{path}: source {e.source} changed size "
                                     f"({written} != {size})")
            sink.write(_pad(size))
            done += size
            count += 1
            if progress is not None and e.kind == FILE:
                progress(done)
        name = TRAILER.encode() + b"\0"
        sink.write(_header(0, 0, 1, 0, 0, (0, 0), len(name)) + name + _pad(110 + len(name)))
    finally:
        for fd in fds.values():
            os.close(fd)
    return count


def write_cpio(
    tree: Tree, dest: BinaryIO, *, mtime: int, progress: Callable[[int], None] | None = None
) -> CpioStats:
    """Serialise `tree` as a newc archive into the file `dest`, hashing it on a worker thread.

    Raises:
        As `stream_cpio`; OSError also when writing `dest` fails.
    """
    h = hashlib.sha256()
    with HashingSink(dest, lanes=1) as sink:
        sink.route([h.update])
        count = stream_cpio(tree, sink, mtime=mtime, progress=progress)
        sink.drain()
        size = sink.position
    return CpioStats(size, count, h.hexdigest())


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
