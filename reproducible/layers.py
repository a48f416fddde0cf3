"""Apply image layers to a `Tree` as streams: no layer, and no file's contents, is held in memory.

Two ways to read a layer, one way to apply it:

- an **uncompressed layer that is a byte range of a regular file** (a blob of an OCI layout
  directory, or a member of an uncompressed oci-archive / `docker save` tarball): only the tar
  headers are read; every regular file becomes an entry pointing at its bytes inside that file
  (`Entry.source` + `Entry.offset`), which the cpio writer copies once. The layer's digest is
  checked by a hashing thread that reads the range alongside (`Verifier`);
- any other layer (gzip, bzip2, xz through the standard library's readers, zstd through
  `zstandard`; concatenated members or frames all read):
  read once, hashed and decompressed on the fly, each regular file's contents copied into a spool
  directory (small files stay in memory up to a fixed budget).

Whiteouts and opaque directories are applied before the layer's own entries; hard links become
copies, symlinks stay symlinks, device nodes are skipped. Nothing is applied unless the whole layer
read correctly.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import logging
import lzma
import os
import posixpath
import tarfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from reproducible.errors import MalformedArtifact
from reproducible.tree import Tree, clean_path

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Magic numbers of the compressions `_decompressed` reads; anything else is a plain tar.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", ZSTD_MAGIC)
SMALL_FILE = 64 << 10  # spooled files up to this size stay in memory...
SMALL_BUDGET = 32 << 20  # ...until this many bytes are held (keeps tiny files off the disk)


@dataclass(frozen=True)
class ByteRange:
    """`size` bytes at `offset` of the regular file `path`."""

    path: Path
    offset: int
    size: int


@dataclass(frozen=True)
class _FileState:
    """What changes whenever a file is written to (ctime cannot be set back by its owner)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd: int) -> _FileState:
        s = os.fstat(fd)
        return cls(s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def _hash_range(fd: int, offset: int, size: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos, end = offset, offset + size
    while pos < end:
        n = os.preadv(fd, [view[: min(CHUNK, end - pos)]], pos)
        if n <= 0:
            break
        h.update(view[:n])  # hashlib drops the GIL here: the main thread keeps working
        pos += n
    return "sha256:" + h.hexdigest()


class Verifier:
    """Checks, off the main thread, that byte-range layers hash to their digests, and that the
    files they point into do not change until the image has been copied out of them.

    Call `verify()` after the last read of the layers' bytes (the cpio writer's) and before the
    result is trusted; `close()` in every case.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="layer-digest")
        self._checks: list[tuple[str, str, Future[str]]] = []
        self._files: dict[Path, tuple[int, _FileState]] = {}

    def watch(self, path: Path, *, where: str) -> int:
        """An open descriptor of `path` whose state is checked again by `verify()`."""
        if path not in self._files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise MalformedArtifact(f"{where}: cannot read {path}: {e.strerror}") from e
            self._files[path] = (fd, _FileState.of(fd))
        return self._files[path][0]

    def expect(self, blob: ByteRange, digest: str, *, where: str) -> None:
        fd = self.watch(blob.path, where=where)
        self._checks.append((where, digest, self._pool.submit(_hash_range, fd, blob.offset,
                                                              blob.size)))

    def verify(self) -> None:
        """Raises:
            MalformedArtifact: a layer hashes to another digest, or a file it lies in changed.
        """
        for where, digest, fut in self._checks:
            got = fut.result()
            if got != digest:
                raise MalformedArtifact(f"{where}: blob {digest} hashes to {got}")
        self._checks.clear()
        for path, (fd, state) in self._files.items():
            if _FileState.of(fd) != state:
                raise MalformedArtifact(f"{path} changed while the image was being built; "
                                        "build again from a copy nobody writes to")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()


class _Window(io.RawIOBase):
    """A read-only, seekable view of a byte range of an open file (positional reads only, so any
    number of windows and the hashing thread share one descriptor)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._start, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b)[:n]], self._start + self._pos)
        self._pos += got
        return got


class _Hashing(io.RawIOBase):
    """A raw reader that hashes every byte read through it (no extra copy)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if n:
            self.h.update(memoryview(b)[:n])
        return int(n or 0)


class Spool:
    """Where a compressed layer's file contents go: numbered files in a directory, except small
    ones, kept in memory up to `SMALL_BUDGET` bytes in all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count()
        self._small = 0

    def copy(self, src: IO[bytes], size: int, *, where: str, name: str) -> Path | bytes:
        """Copy exactly `size` bytes of `src`: into memory (small files) or a new spool file.

        Raises:
            MalformedArtifact: `src` ends early (a truncated layer).
        """
        if size <= SMALL_FILE and self._small + size <= SMALL_BUDGET:
            data = src.read(size)
            if len(data) != size:
                raise MalformedArtifact(f"{where}: truncated member {name!r}")
            self._small += size
            return data
        n = next(self._ids)
        dest = self.root / f"{n // 4096:04x}" / f"{n:08x}"
        dest.parent.mkdir(exist_ok=True)
        left = size
        buf = bytearray(min(CHUNK, size))
        with open(dest, "wb") as out:
            while left:
                view = memoryview(buf)[: min(CHUNK, left)]
                got = src.readinto(view)  # type: ignore[attr-defined]
                if not got:
                    raise MalformedArtifact(f"{where}: truncated member {name!r}")
                out.write(view[:got])
                left -= got
        return dest


@dataclass(frozen=True)
class _Member:
    path: str
    info: tarfile.TarInfo
    content: Path | bytes | ByteRange | None  # regular files only


def _is_regular(path: str, m: tarfile.TarInfo) -> bool:
    return bool(path) and m.isfile() and not posixpath.basename(path).startswith(WHITEOUT)


def _members_in_range(blob: ByteRange, fd: int, spool: Spool, where: str) -> list[_Member]:
    """The members of an uncompressed layer in `blob`, files as byte ranges of it."""
    members: list[_Member] = []
    raw = io.BufferedReader(_Window(fd, blob.offset, blob.size), 16 << 10)
    with tarfile.open(fileobj=raw, mode="r:") as tar:
        for m in tar:
            path = clean_path(m.name, where=where)
            content: Path | bytes | ByteRange | None = None
            if _is_regular(path, m):
                if m.offset_data + m.size > blob.size:
                    raise MalformedArtifact(f"{where}: truncated member {path!r}")
                if m.sparse is not None:  # GNU sparse: holes are not in the archive
                    f = tar.extractfile(m)
                    assert f is not None
                    content = spool.copy(f, m.size, where=where, name=path)
                else:
                    content = ByteRange(blob.path, blob.offset + m.offset_data, m.size)
            members.append(_Member(path, m, content))
    return members


def _decompressed(raw: io.BufferedReader[Any], where: str) -> IO[bytes]:
    """The layer's tar bytes. Every compressed stream may be several concatenated members
    (parallel compressors, eStargz): all are read, as `gzip -d` would. `tarfile`'s own stream
    mode stops after the first and would silently drop the files of the others."""
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if head.startswith(b"BZh"):
        return cast(IO[bytes], bz2.BZ2File(raw, mode="rb"))
    if head.startswith(b"\xfd7zXZ\x00"):
        return cast(IO[bytes], lzma.LZMAFile(raw, mode="rb"))
    if head[:4] != ZSTD_MAGIC:
        return raw
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from enclave.cli import install_hint

        raise MalformedArtifact(
            f"{where}: zstd-compressed layer needs the `zstandard` package ({install_hint('build')}"
            "), or save the image with gzip or uncompressed layers"
        ) from None
    return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(
        raw, read_size=CHUNK, read_across_frames=True))


def _members_streamed(blob: BinaryIO, spool: Spool, where: str, digest: str | None
                      ) -> list[_Member]:
    hashing = _Hashing(blob)
    raw = io.BufferedReader(hashing, CHUNK)
    members: list[_Member] = []
    stream = _decompressed(raw, where)
    with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
        for m in tar:
            path = clean_path(m.name, where=where)
            content = None
            if _is_regular(path, m):
                f = tar.extractfile(m)
                assert f is not None
                content = spool.copy(f, m.size, where=where, name=path)
            members.append(_Member(path, m, content))
    while raw.read(CHUNK):  # the rest (tar padding, compressed trailer) is hashed too
        pass
    if digest is not None:
        got = "sha256:" + hashing.h.hexdigest()
        if got != digest:
            raise MalformedArtifact(f"{where}: blob {digest} hashes to {got}")
    return members


def is_compressed(head: bytes) -> bool:
    return any(head.startswith(m) for m in COMPRESSED_MAGIC)


def apply_layer(tree: Tree, *, where: str, spool: Spool, verifier: Verifier,
                digest: str | None = None, blob: ByteRange | None = None,
                stream: BinaryIO | None = None) -> None:
    """Read one layer and apply it to `tree`: the one applier of every import.

    Args:
        digest: `sha256:<hex>` the blob must hash to (OCI layouts), or None (`docker save`).
        blob: where the layer's bytes lie in a regular file, when they do; an uncompressed one is
            then not copied at all (its digest is checked by `verifier`, see `Verifier.verify`).
        stream: the layer as a stream, when `blob` is None.

    Raises:
        MalformedArtifact: unreadable or truncated layer, or a digest mismatch.
        UnsafePath: a member escapes the image root.
    """
    try:
        if blob is not None:
            fd = verifier.watch(blob.path, where=where)
            head = os.pread(fd, 6, blob.offset)
            if not is_compressed(head):
                members = _members_in_range(blob, fd, spool, where)
                if digest is not None:
                    verifier.expect(blob, digest, where=where)
            else:
                with io.BufferedReader(_Window(fd, blob.offset, blob.size), CHUNK) as f:
                    members = _members_streamed(cast(BinaryIO, f), spool, where, digest)
        elif stream is not None:
            members = _members_streamed(stream, spool, where, digest)
        else:
            raise ValueError("give blob or stream")
    except MalformedArtifact:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
        raise MalformedArtifact(f"{where}: unreadable layer ({e})") from e
    except Exception as e:  # zstandard raises its own ZstdError
        if type(e).__module__.startswith("zstandard"):
            raise MalformedArtifact(f"{where}: unreadable layer ({e})") from e
        raise
    _apply_members(tree, members, where)


def _apply_members(tree: Tree, members: list[_Member], where: str) -> None:
    # Whiteouts hide what lower layers had; apply them before this layer's own entries.
    for mem in members:
        base = posixpath.basename(mem.path)
        if base == OPAQUE:
            tree.clear_dir(posixpath.dirname(tree.resolve_parent(mem.path, where=where)))
        elif base.startswith(WHITEOUT):
            victim = posixpath.join(posixpath.dirname(mem.path), base[len(WHITEOUT):])
            tree.remove(tree.resolve_parent(clean_path(victim, where=where), where=where))
    for mem in members:
        path, m = mem.path, mem.info
        if not path or posixpath.basename(path).startswith(WHITEOUT):
            continue
        mode = m.mode & 0o7777
        if m.isdir():
            tree.add_dir(path, mode, where=where)
        elif m.issym():
            tree.add_symlink(path, m.linkname, where=where)
        elif m.islnk():
            tree.add_hardlink(path, m.linkname, where=where)
        elif isinstance(mem.content, bytes):
            tree.add_file(path, mem.content, mode=mode, where=where)
        elif isinstance(mem.content, ByteRange):
            tree.add_file(path, source=mem.content.path, offset=mem.content.offset,
                          size=mem.content.size, mode=mode, where=where)
        elif isinstance(mem.content, Path):
            tree.add_file(path, source=mem.content, mode=mode, where=where)
        else:
            log.info("%s: skipping special file %s (devices come from devtmpfs)", where, path)
