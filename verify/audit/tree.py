"""Where the audit reads /proc and /sys from: the live host, a captured directory, or a capture tar.

Every read goes through `HostTree`, which remembers each file it returned, so `--capture` can write
exactly what the verdict depended on and nothing else (directories are implied by the files). A file that
is missing, unreadable (no root) or not text is `None` to the checks, which report it as "unknown";
the tree itself never raises for a host-side problem.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from verify.audit.errors import MalformedHostTree

__all__ = ["HostTree", "write_capture"]

logger = logging.getLogger(__name__)

#: Largest file the audit will read; /proc files it needs are tiny, this only bounds hostile input.
MAX_FILE_BYTES = 1 << 20
#: Largest capture tar `--root` accepts, and largest member count (a captured host has a few hundred).
MAX_TAR_BYTES = 64 << 20
MAX_TAR_MEMBERS = 100_000


def _normalize(path: str) -> str:
    """An absolute, '..'-free POSIX path, so a captured tree can never point outside itself."""
    parts = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path escapes the tree: {path!r}")
    return "/" + "/".join(parts)


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, stays under `root` (a captured tree must not reach out)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


class HostTree:
    """Read-only view of a host's /proc and /sys.

    Args:
        root: "/" for the live host, or a directory holding a captured tree (paths below it mirror
            the host's, e.g. ``DIR/proc/cmdline``).
        members: for a tree read from a tar, the file contents by absolute path (see `from_path`).
    """

    def __init__(
        self, root: str | os.PathLike[str] = "/", *, members: dict[str, bytes] | None = None
    ):
        self._root = Path(root)
        self._members = members
        self._read: dict[str, bytes] = {}

    @classmethod
    def live(cls) -> HostTree:
        return cls("/")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> HostTree:
        """A captured tree: a directory, or a tar written by `--capture`.

        Raises:
            MalformedHostTree: the path is neither a directory nor a readable tar.
        """
        p = Path(path)
        if p.is_dir():
            return cls(p)
        if not p.exists():
            raise MalformedHostTree(f"--root {p}: no such file or directory")
        try:
            if p.stat().st_size > MAX_TAR_BYTES:
                raise MalformedHostTree(f"--root {p}: larger than {MAX_TAR_BYTES} bytes")
            members: dict[str, bytes] = {}
            total = 0
            with tarfile.open(p, "r:*") as tar:
                for count, info in enumerate(tar):
                    if count >= MAX_TAR_MEMBERS:
                        raise MalformedHostTree(f"--root {p}: more than {MAX_TAR_MEMBERS} members")
                    if not info.isfile():
                        continue  # directories are implied; links are never followed
                    try:
                        name = _normalize(info.name)
                    except ValueError as e:
                        raise MalformedHostTree(f"--root {p}: member {info.name!r}: {e}") from e
                    if info.size > MAX_FILE_BYTES:
                        continue  # treated as unreadable, like an oversized live file
                    total += info.size
                    if total > MAX_TAR_BYTES:  # a compressed tar can expand far beyond its size
                        raise MalformedHostTree(f"--root {p}: expands beyond {MAX_TAR_BYTES} bytes")
                    fileobj = tar.extractfile(info)
                    if fileobj is not None:
                        members[name] = fileobj.read(MAX_FILE_BYTES)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise MalformedHostTree(f"--root {p}: not a directory or a readable tar ({e})") from e
        return cls("/", members=members)

    @property
    def is_live(self) -> bool:
        return self._members is None and self._root == Path("/")

    def _local(self, path: str) -> Path:
        return self._root / _normalize(path).lstrip("/")

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes, or None when it is missing, unreadable or too large."""
        key = _normalize(path)
        if key in self._read:
            return self._read[key]
        data: bytes | None
        if self._members is not None:
            data = self._members.get(key)
        else:
            try:
                local = self._local(key)
                if not self.is_live and not _inside(local, self._root):
                    raise OSError(f"symlink leaves the captured tree: {local}")
                with open(local, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
            except OSError as e:
                logger.debug("unreadable %s: %s", key, e)
                data = None
            if data is not None and len(data) > MAX_FILE_BYTES:
                data = None
        if data is not None:
            self._read[key] = data
        return data

    def read(self, path: str) -> str | None:
        """The file as stripped text, or None when it cannot be read or is not UTF-8 text."""
        data = self.read_bytes(path)
        if data is None:
            return None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None

    def listdir(self, path: str) -> list[str] | None:
        """Sorted names in a directory, or None when it is missing or unreadable."""
        key = _normalize(path)
        if self._members is not None:
            prefix = key.rstrip("/") + "/"
            children = {
                m[len(prefix) :].split("/", 1)[0] for m in self._members if m.startswith(prefix)
            }
            if not children:
                return None
            return sorted(children)
        try:
            local = self._local(key)
            if not self.is_live and not _inside(local, self._root):
                raise OSError(f"symlink leaves the captured tree: {local}")
            names = sorted(os.listdir(local))
        except OSError as e:
            logger.debug("unlistable %s: %s", key, e)
            return None
        return names

    @property
    def files_read(self) -> dict[str, bytes]:
        """Every file a check has read so far, by absolute path."""
        return dict(self._read)


def write_capture(dest: str | os.PathLike[str], files: dict[str, bytes]) -> int:
    """Write the files as a deterministic tar (sorted names, zero times and owners); returns count.

    The same host state always gives the same bytes, so two captures can be compared with `cmp`.
    """
    names: Iterable[str] = sorted(files)
    with (
        open(dest, "wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name in names:
            data = files[name]
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return len(files)
