"""Unpack Debian binary packages (ar archive holding data.tar.{xz,gz,zst}) without dpkg.

Unpacked members are kept in the cache under `unpacked/<deb sha256>/` with a manifest; a warm build
re-reads them (re-hashing every file against the manifest) instead of decompressing the package.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reproducible.cache import Cache, sha256_file
from reproducible.errors import ArtifactMismatch, MalformedArtifact
from reproducible.tree import Tree, clean_path

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Member:
    path: str
    kind: str  # file | dir | symlink | hardlink
    mode: int
    target: str = ""
    sha256: str = ""
    size: int = 0


def _ar_members(path: Path) -> dict[str, tuple[int, int]]:
    """Names of an ar archive's members -> (offset, size)."""
    out: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise MalformedArtifact(f"{path.name}: not a Debian package (no ar magic)")
        while True:
            hdr = f.read(60)
            if not hdr:
                break
            if len(hdr) != 60 or hdr[58:60] != b"`\n":
                raise MalformedArtifact(f"{path.name}: corrupt ar header at {f.tell() - len(hdr)}")
            name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(hdr[48:58].decode().strip())
            except ValueError as e:
                raise MalformedArtifact(f"{path.name}: bad ar member size") from e
            out[name] = (f.tell(), size)
            f.seek(size + (size & 1), os.SEEK_CUR)
    return out


def _open_data(path: Path) -> tarfile.TarFile:
    members = _ar_members(path)
    for name, (off, size) in members.items():
        if not name.startswith("data.tar"):
            continue
        with open(path, "rb") as f:
            f.seek(off)
            raw = f.read(size)
        if name.endswith(".zst"):
            raise MalformedArtifact(f"{path.name}: zstd-compressed data.tar is not supported")
        try:
            return tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
        except tarfile.TarError as e:
            raise MalformedArtifact(f"{path.name}: unreadable {name}: {e}") from e
    raise MalformedArtifact(f"{path.name}: no data.tar member")


def unpack(
    cache: Cache, name: str, deb: Path, sha256: str, keep: Callable[[str], bool], filter_id: str
) -> tuple[Path, list[Member]]:
    """Members of `deb` accepted by `keep`, unpacked once into the cache.

    `keep` must be a pure function of the path, named by `filter_id`; a different filter id (a
    changed builder) unpacks again.

    Raises:
        MalformedArtifact: the package cannot be parsed or holds unsafe member names.
        ArtifactMismatch: a previously unpacked file was altered.
    """
    root = cache.root / "unpacked" / sha256
    found = _cached(root, name, filter_id)
    if found is not None:
        return found
    # Unpack beside the final place and rename it in, so a concurrent build never sees half.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=root.parent))
    try:
        members = _extract(deb, name, keep, tmp / "files")
        (tmp / "manifest.json").write_text(json.dumps({
            "version": MANIFEST_VERSION, "filter": filter_id,
            "members": [m.__dict__ for m in members],
        }))
        shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            found = _cached(root, name, filter_id)  # another build won the race
            if found is None:
                raise
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "files", members


def _cached(root: Path, name: str, filter_id: str) -> tuple[Path, list[Member]] | None:
    manifest = root / "manifest.json"
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if doc.get("version") != MANIFEST_VERSION or doc.get("filter") != filter_id:
        return None
    members = [Member(**m) for m in doc["members"]]
    _verify(root, name, members)
    return root / "files", members


def _extract(deb: Path, name: str, keep: Callable[[str], bool], files: Path) -> list[Member]:
    files.mkdir(parents=True)
    members: list[Member] = []
    with _open_data(deb) as tar:
        try:
            for ti in tar:
                path = clean_path(ti.name, where=name)
                if not path or not keep(path):
                    continue
                if ti.isdir():
                    members.append(Member(path, "dir", ti.mode & 0o7777))
                elif ti.issym():
                    members.append(Member(path, "symlink", 0o777, target=ti.linkname))
                elif ti.islnk():
                    members.append(Member(path, "hardlink", 0,
                                          target=clean_path(ti.linkname, where=name)))
                elif ti.isfile():
                    src = tar.extractfile(ti)
                    assert src is not None
                    data = src.read()
                    (files / hashlib.sha256(path.encode()).hexdigest()).write_bytes(data)
                    members.append(Member(path, "file", ti.mode & 0o7777,
                                          sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise MalformedArtifact(f"{name}: corrupt data.tar: {e}") from e
    return members


def _verify(files_root: Path, name: str, members: list[Member]) -> None:
    for m in members:
        if m.kind != "file":
            continue
        p = files_root / "files" / hashlib.sha256(m.path.encode()).hexdigest()
        got = sha256_file(p) if p.is_file() else "(missing)"
        if got != m.sha256:
            raise ArtifactMismatch(f"{name}: {m.path}", m.sha256, got, f"the unpack cache ({p})")


def add_to_tree(tree: Tree, files: Path, members: list[Member], *, where: str,
                rename: Callable[[str], str] = lambda p: p) -> None:
    """Add unpacked members to `tree` (hard links after the files they point at)."""
    for m in members:
        path = rename(m.path)
        if m.kind == "dir":
            tree.add_dir(path, m.mode, where=where)
        elif m.kind == "symlink":
            tree.add_symlink(path, m.target, where=where)
        elif m.kind == "file":
            src = files / hashlib.sha256(m.path.encode()).hexdigest()
            tree.add_file(path, source=src, mode=m.mode, where=where)
    for m in members:
        if m.kind == "hardlink":
            tree.add_hardlink(rename(m.path), rename(m.target), where=where)


def file_path(files: Path, member: Member) -> Path:
    return files / hashlib.sha256(member.path.encode()).hexdigest()
