"""Apply one image layer to a `Tree` as a stream: the layer is never held in memory.

The layer blob is read once, in chunks: hashed on the way (OCI digests), decompressed on the fly
(gzip, bzip2 and xz through `tarfile`'s stream mode, zstd through the optional `zstandard`
package), and each regular file's contents are copied into a spool directory; the tree records the
spooled file (`Entry.source`) that the cpio writer streams later. Whiteouts and opaque directories
are applied before the layer's own entries, exactly as the in-memory importer does, so both give
the same tree. Nothing is applied unless the whole layer read and (when known) hashed correctly.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from reproducible.errors import MalformedArtifact
from reproducible.tree import Tree, clean_path

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Hashing(io.RawIOBase):
    """A raw reader that hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.h = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self.h.update(data)
        self.n += n
        return n


class Spool:
    """A directory of numbered files, one per regular file of the imported layers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count()

    def copy(self, src: IO[bytes], size: int, *, where: str, name: str) -> Path:
        """Copy exactly `size` bytes of `src` into a new spool file.

        Raises:
            MalformedArtifact: `src` ends early (a truncated layer).
        """
        n = next(self._ids)
        dest = self.root / f"{n // 4096:04x}" / f"{n:08x}"
        dest.parent.mkdir(exist_ok=True)
        left = size
        with open(dest, "wb") as out:
            while left:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise MalformedArtifact(f"{where}: truncated member {name!r}")
                out.write(chunk)
                left -= len(chunk)
        return dest


@dataclass(frozen=True)
class _Member:
    path: str
    info: tarfile.TarInfo
    spooled: Path | None


def _decompressed(raw: io.BufferedReader[_Hashing], where: str) -> IO[bytes]:
    if raw.peek(4)[:4] != ZSTD_MAGIC:
        return raw
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise MalformedArtifact(
            f"{where}: zstd-compressed layer; install the `zstandard` package, or save the image "
            "with gzip or uncompressed layers"
        ) from None
    return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))


def apply_layer_stream(tree: Tree, blob: BinaryIO, spool: Spool, *, where: str,
                       digest: str | None = None) -> None:
    """Read the layer `blob` once and apply it to `tree`, spooling file contents.

    Args:
        digest: `sha256:<hex>` the blob must hash to (OCI layouts), or None (`docker save`).

    Raises:
        MalformedArtifact: unreadable or truncated layer, or a digest mismatch.
        UnsafePath: a member escapes the image root.
    """
    hashing = _Hashing(blob)
    raw = io.BufferedReader(hashing, CHUNK)
    members: list[_Member] = []
    try:
        stream = _decompressed(raw, where)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                path = clean_path(m.name, where=where)
                spooled = None
                if m.isfile() and not posixpath.basename(path).startswith(WHITEOUT) and path:
                    f = tar.extractfile(m)
                    assert f is not None
                    spooled = spool.copy(f, m.size, where=where, name=path)
                members.append(_Member(path, m, spooled))
        while raw.read(CHUNK):  # the rest (tar padding, compressed trailer) is hashed too
            pass
    except MalformedArtifact:
        raise
    except Exception as e:  # tarfile, gzip, lzma and zstandard each raise their own types
        raise MalformedArtifact(f"{where}: unreadable layer ({e})") from e
    if digest is not None:
        got = "sha256:" + hashing.h.hexdigest()
        if got != digest:
            raise MalformedArtifact(f"{where}: blob {digest} hashes to {got}")
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
        elif mem.spooled is not None:
            tree.add_file(path, source=mem.spooled, mode=mode, where=where)
        else:
            log.info("%s: skipping special file %s (devices come from devtmpfs)", where, path)
