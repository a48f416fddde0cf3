"""Content-addressed cache of downloaded inputs: $XDG_CACHE_HOME/sentinel/sha256/<ab>/<sha256>.

Every read re-hashes the file, so a cached artifact that was altered after download is refused by
name instead of silently flowing into the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reproducible.errors import ArtifactMismatch, BuildError

CHUNK = 1 << 20


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sentinel"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


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

    def put(self, name: str, sha256: str, src: Path) -> Path:
        """Move a downloaded file into the cache after checking its hash.

        Raises:
            ArtifactMismatch: `src` does not hash to the pinned `sha256` (nothing is stored).
        """
        got = sha256_file(src)
        if got != sha256:
            raise ArtifactMismatch(name, sha256, got, "the downloaded file")
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return dest

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
