"""A deliberately simple, in-memory image importer: the model the streaming importer is checked
against (tests only).

It reads an OCI layout directory, an oci-archive tar or a `docker save` tar whole into memory with
`tarfile`, decompresses each layer whole, and applies the layers in order to a `Tree` whose file
entries all hold their bytes (`Entry.data`). Rules, as the in-memory importer the project shipped
before the streaming one: `.wh.NAME` deletes NAME from lower layers and `.wh..wh..opq` empties its
directory, both before the layer's own entries; hard links become copies; symlinks stay; device
nodes and fifos are skipped; unsafe names and links are refused by `Tree` (`UnsafePath`).

It shares nothing with `reproducible.layers` or `reproducible.oci` on purpose: neither their
archive reading nor their manifest parsing.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproducible.errors import MalformedArtifact, UnsafePath
from reproducible.tree import Tree, clean_path

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


@dataclass(frozen=True)
class ReferenceImage:
    tree: Tree
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    layers: int


class _Files:
    """Every regular file of a layout directory or an archive, by clean path, read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._blobs: dict[str, bytes] = {}
        if path.is_dir():
            return
        try:
            with tarfile.open(path, mode="r:*") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        f = tar.extractfile(m)
                        assert f is not None
                        self._blobs[clean_path(m.name, where=str(path))] = f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise MalformedArtifact(f"{path}: not an image archive ({e})") from e

    def has(self, name: str) -> bool:
        name = clean_path(name, where=str(self.path))
        if self.path.is_dir():
            return (self.path / name).is_file()
        return name in self._blobs

    def read(self, name: str) -> bytes:
        name = clean_path(name, where=str(self.path))
        if self.path.is_dir():
            p = self.path / name
            if not p.resolve().is_relative_to(self.path.resolve()):
                raise UnsafePath(f"{self.path}: {name} resolves outside the layout")
            if not p.is_file():
                raise MalformedArtifact(f"{self.path}: missing {name}")
            return p.read_bytes()
        if name not in self._blobs:
            raise MalformedArtifact(f"{self.path}: missing {name}")
        return self._blobs[name]

    def blob(self, digest: str) -> bytes:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64:
            raise MalformedArtifact(f"malformed digest {digest!r}")
        data = self.read(f"blobs/sha256/{hexd}")
        if hashlib.sha256(data).hexdigest() != hexd:
            raise MalformedArtifact(f"{self.path}: blob {digest} hashes to another digest")
        return data


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedArtifact(f"{what} is not JSON: {e}") from e


def _oci(files: _Files) -> tuple[dict[str, Any], list[bytes]]:
    index = _json(files.read("index.json"), "index.json")
    desc = index["manifests"][0]
    while desc.get("mediaType") in INDEX_TYPES:
        nested = _json(files.blob(desc["digest"]), "nested index")
        desc = next(m for m in nested["manifests"]
                    if m.get("platform", {}).get("architecture") == "amd64"
                    and m.get("platform", {}).get("os", "linux") == "linux")
    manifest = _json(files.blob(desc["digest"]), "manifest")
    config = _json(files.blob(manifest["config"]["digest"]), "config")
    return config, [files.blob(layer["digest"]) for layer in manifest["layers"]]


def _docker(files: _Files) -> tuple[dict[str, Any], list[bytes]]:
    manifest = _json(files.read("manifest.json"), "manifest.json")
    if len(manifest) != 1:
        raise MalformedArtifact(f"{files.path}: holds {len(manifest)} images")
    entry = manifest[0]
    config = _json(files.read(entry["Config"]), "config")
    return config, [files.read(n) for n in entry["Layers"]]


def _decompress(blob: bytes) -> bytes:
    """A layer's tar bytes; gzip, bzip2 and xz are left to `tarfile`, zstd is undone here."""
    if blob[:4] != ZSTD_MAGIC:
        return blob
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return bytes(reader.read())


def apply_layer(tree: Tree, blob: bytes, where: str) -> None:
    """Apply one layer, read whole, to `tree` (file contents kept as `Entry.data`).

    Raises:
        MalformedArtifact: unreadable layer or truncated member.
        UnsafePath: as `Tree`.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(_decompress(blob)), mode="r:*") as tar:
            members: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
            for m in tar.getmembers():
                data = None
                if m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None
                    data = f.read()
                    if len(data) != m.size:
                        raise MalformedArtifact(f"{where}: truncated member {m.name!r}")
                members.append((clean_path(m.name, where=where), m, data))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MalformedArtifact(f"{where}: unreadable layer ({e})") from e
    for path, _, _ in members:
        base = posixpath.basename(path)
        if base == OPAQUE:
            tree.clear_dir(posixpath.dirname(tree.resolve_parent(path, where=where)))
        elif base.startswith(WHITEOUT):
            victim = posixpath.join(posixpath.dirname(path), base[len(WHITEOUT):])
            tree.remove(tree.resolve_parent(clean_path(victim, where=where), where=where))
    for path, m, data in members:
        if not path or posixpath.basename(path).startswith(WHITEOUT):
            continue
        mode = m.mode & 0o7777
        if m.isdir():
            tree.add_dir(path, mode, where=where)
        elif m.issym():
            tree.add_symlink(path, m.linkname, where=where)
        elif m.islnk():
            tree.add_hardlink(path, m.linkname, where=where)
        elif data is not None:
            tree.add_file(path, data, mode=mode, where=where)


def load_reference(path: Path) -> ReferenceImage:
    """Import an OCI layout (dir or tar) or a `docker save` tar entirely in memory.

    Raises:
        MalformedArtifact: unreadable archive or layer, missing or mismatching blob.
        UnsafePath: a layer member escapes the image root.
    """
    files = _Files(path)
    if files.has("manifest.json"):
        config, blobs = _docker(files)
    elif files.has("index.json"):
        config, blobs = _oci(files)
    else:
        raise MalformedArtifact(f"{path}: neither manifest.json nor index.json")
    tree = Tree()
    for i, blob in enumerate(blobs):
        apply_layer(tree, blob, f"{path} layer {i + 1}/{len(blobs)}")
    c = config.get("config") or {}
    cmd = tuple(c.get("Entrypoint") or []) + tuple(c.get("Cmd") or [])
    return ReferenceImage(tree, cmd, tuple(c.get("Env") or []), len(blobs))
