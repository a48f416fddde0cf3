"""An in-memory file tree: what a ramdisk will contain, before it is serialised to cpio.

Every path is checked on the way in: archives (debs, wheels, OCI layers) are hostile input, so a
name with `..`, an absolute path, or a path through a symlink that points outside the tree is refused
(`UnsafePath`) rather than normalised into something else.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reproducible.errors import UnsafePath

FILE, DIR, SYMLINK, CHARDEV = "file", "dir", "symlink", "chardev"
MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int  # permission bits only; normalised by the cpio writer
    data: bytes | None = None  # small file contents
    source: Path | None = None  # or a file read when the archive is written...
    offset: int = 0  # ...from this offset (a file inside an uncompressed image layer)
    size: int = 0
    target: str = ""  # symlink target
    rdev: tuple[int, int] = (0, 0)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.source is not None
        with open(self.source, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def clean_path(name: str, *, where: str = "archive") -> str:
    """Validate a member name and return it relative, without `./` or trailing `/`.

    Raises:
        UnsafePath: absolute, contains `..`, NUL, or is empty after cleaning.
    """
    if "\x00" in name:
        raise UnsafePath(f"{where}: member name contains NUL: {name!r}")
    if name.startswith("/"):
        raise UnsafePath(f"{where}: absolute member path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{where}: member path escapes with '..': {name!r}")
    return "/".join(parts)


class Tree:
    """Paths (relative, '/'-separated) to entries; parents are created as 0755 directories."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def items(self) -> Iterator[tuple[str, Entry]]:
        """Entries sorted by the bytes of their path (parents before children)."""
        for k in sorted(self._entries, key=lambda p: p.encode()):
            yield k, self._entries[k]

    def resolve_parent(self, path: str, *, where: str) -> str:
        """`path` with every symlink in its parent chain resolved inside the tree.

        Raises:
            UnsafePath: a symlink on the way points outside the tree (or loops).
        """
        parts = path.split("/")
        resolved: list[str] = []
        hops = 0
        i = 0
        while i < len(parts) - 1:
            cur = "/".join([*resolved, parts[i]])
            e = self._entries.get(cur)
            if e is not None and e.kind == SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafePath(f"{where}: symlink loop at {cur!r}")
                base = "" if e.target.startswith("/") else "/".join(resolved)
                joined = posixpath.normpath(posixpath.join("/", base, e.target))
                # normpath clamps "/.." to "/", so check the raw walk for escapes.
                if _escapes(base, e.target):
                    raise UnsafePath(
                        f"{where}: {path!r} goes through symlink {cur!r} -> {e.target!r}, "
                        "which points outside the image"
                    )
                new = [p for p in joined.split("/") if p]
                parts = new + parts[i + 1 :]
                resolved, i = [], 0
                continue
            resolved.append(parts[i])
            i += 1
        return "/".join([*resolved, parts[-1]])

    def _mkparents(self, path: str, where: str) -> None:
        parent = posixpath.dirname(path)
        chain = []
        while parent:
            chain.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(chain):
            e = self._entries.get(p)
            if e is None:
                self._entries[p] = Entry(DIR, 0o755)
            elif e.kind != DIR:
                raise UnsafePath(f"{where}: {path!r} needs {p!r} to be a directory, it is a {e.kind}")

    def _put(self, path: str, entry: Entry, where: str) -> str:
        path = clean_path(path, where=where)
        if not path:
            return path
        path = self.resolve_parent(path, where=where)
        self._mkparents(path, where)
        old = self._entries.get(path)
        if old is not None and old.kind == SYMLINK and entry.kind == DIR:
            return path  # like dpkg: a directory over a symlink keeps the symlink (merged /usr)
        if old is not None and old.kind == DIR and entry.kind != DIR:
            self.remove(path)
        if old is not None and old.kind == DIR and entry.kind == DIR:
            entry = Entry(DIR, entry.mode)
        self._entries[path] = entry
        return path

    def add_dir(self, path: str, mode: int = 0o755, *, where: str = "tree") -> str:
        return self._put(path, Entry(DIR, mode), where)

    def add_file(
        self, path: str, data: bytes | None = None, *, source: Path | None = None,
        offset: int = 0, size: int | None = None, mode: int = 0o644, where: str = "tree",
    ) -> str:
        """A regular file: `data`, or `size` bytes (default: all) of `source` from `offset`."""
        if data is not None and source is None:
            size = len(data)
        elif source is not None and data is None:
            size = source.stat().st_size - offset if size is None else size
        else:
            raise ValueError("give exactly one of data or source")
        entry = Entry(FILE, mode, data=data, source=source, offset=offset, size=size)
        return self._put(path, entry, where)

    def add_symlink(self, path: str, target: str, *, where: str = "tree") -> str:
        if not target or "\x00" in target:
            raise UnsafePath(f"{where}: bad symlink target {target!r} for {path!r}")
        clean = clean_path(path, where=where)
        if not target.startswith("/") and _escapes(posixpath.dirname(clean), target):
            raise UnsafePath(
                f"{where}: symlink {path!r} -> {target!r} points outside the image root"
            )
        return self._put(path, Entry(SYMLINK, 0o777, target=target), where)

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> str:
        return self._put(path, Entry(CHARDEV, mode, rdev=(major, minor)), "tree")

    def add_hardlink(self, path: str, target: str, *, where: str = "tree") -> str:
        """A hard link is stored as a copy of its target (cpio stays simple and deterministic).

        Raises:
            UnsafePath: the target is unsafe or not a regular file already in the tree.
        """
        t = self.resolve_parent(clean_path(target, where=where), where=where)
        e = self._entries.get(t)
        if e is None or e.kind != FILE:
            raise UnsafePath(f"{where}: hard link {path!r} -> {target!r}: target is not a file in the image")
        return self._put(path, e, where)

    def remove(self, path: str) -> None:
        """Delete a path and everything below it (an OCI whiteout); absent paths are fine."""
        prefix = path + "/"
        for k in [k for k in self._entries if k == path or k.startswith(prefix)]:
            del self._entries[k]

    def clear_dir(self, path: str) -> None:
        """Delete a directory's contents but keep it (an OCI opaque whiteout)."""
        prefix = path + "/" if path else ""
        for k in [k for k in self._entries if k.startswith(prefix) and k != path]:
            del self._entries[k]

    def merge(self, other: Tree, prefix: str = "") -> None:
        for path, e in other.items():
            full = f"{prefix}/{path}" if prefix else path
            self._put(full, e, "merge")

    def total_size(self) -> int:
        return sum(e.size for e in self._entries.values() if e.kind == FILE)


def _escapes(base: str, target: str) -> bool:
    """Whether resolving `target` from directory `base` ever climbs above the root."""
    depth = 0 if target.startswith("/") else len([p for p in base.split("/") if p])
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False

