"""Content-addressed cache of downloaded inputs: $XDG_CACHE_HOME/sentinel/sha256/<ab>/<sha256>.

Every read re-hashes the file, so a cached artifact that was altered after download is refused by
name instead of silently flowing into the image.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reproducible.errors import ArtifactMismatch, BuildError
from verify.signed_release import sha256_file

# sha256_file is re-exported: the builder modules hash through the cache module.
__all__ = ["CHUNK", "Cache", "default_root", "sha256_file"]

CHUNK = 1 << 20


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sentinel"


class Cache:
    """The cache directory; blobs are named by their sha256 and verified on every access."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def get(self, name: str, sha256: str) -> Path | None:
        """The cached blob for `sha256`, or None if absent.

        Raises:
            ArtifactMismatch: the cached file no longer hashes to `sha256`.
        """
        path = self.blob_path(sha256)
        if not path.is_file():
            return None
        got = sha256_file(path)
        if got != sha256:
            raise ArtifactMismatch(
                name, sha256, got, f"the cache ({path}; delete it to download it again)"
            )
        return path

    def put(self, name: str, sha256: str, src: Path, *, where: str = "the downloaded file") -> Path:
        """Move a downloaded file into the cache after checking its hash.

        Raises:
            ArtifactMismatch: `src` does not hash to the pinned `sha256` (nothing is stored).
        """
        got = sha256_file(src)
        if got != sha256:
            raise ArtifactMismatch(name, sha256, got, where)
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A unique temp name per writer: concurrent builds may store the same blob at once.
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256[:12]}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """An exclusive lock between builds sharing this cache (e.g. the private APT state)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary directory inside the cache (same filesystem, removed afterwards)."""
        base = self.root / "tmp"
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BuildError(f"cannot create cache directory {base}: {e.strerror}") from e
        with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as d:
            yield Path(d)
