"""Import a container image as the payload's root filesystem.

Sources: an OCI image layout (directory or tar archive), a `docker save` tarball, or an image of a
Docker-compatible API (`docker.from_env()`, so DOCKER_HOST works; podman's `podman system service`
too). Layers are applied in order into a tree (streamed, file contents spooled to disk, with
`spool=`; all in memory without), with OCI whiteouts (`.wh.NAME`) and opaque
directories (`.wh..wh..opq`); hard links become copies, symlinks stay symlinks. Blobs of an OCI
layout are checked against their digests. Nothing is extracted onto the host: a member named with
`..`, an absolute path, or a path through a symlink that leaves the image is refused (`UnsafePath`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reproducible.errors import ImageSourceError, MalformedArtifact, UnsafePath
from reproducible.layers import OPAQUE, WHITEOUT, Spool, apply_layer_stream
from reproducible.tree import Tree, clean_path

log = logging.getLogger(__name__)

MAX_JSON = 16 << 20  # bytes; manifests and configs are small
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


@dataclass(frozen=True)
class ImportedImage:
    name: str
    digest: str  # sha256 of the image config (the image ID)
    tree: Tree
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    layers: int


class _Store:
    """Read named files from a directory or a tar archive (both layouts exist in the wild)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        try:
            self._tar = tarfile.open(path, mode="r:*")
            for m in self._tar.getmembers():
                if m.isfile():
                    self._members[clean_path(m.name, where=str(path))] = m
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise MalformedArtifact(
                f"{path}: not an OCI layout or `docker save` tarball ({e})"
            ) from e

    def exists(self, name: str) -> bool:
        name = clean_path(name, where=str(self.path))
        if self._tar is None:
            return (self.path / name).is_file()
        return name in self._members

    def open(self, name: str) -> BinaryIO:
        name = clean_path(name, where=str(self.path))
        if self._tar is None:
            p = self.path / name
            # A layout is a directory we only read; still refuse links that lead out of it.
            if not p.resolve().is_relative_to(self.path.resolve()):
                raise UnsafePath(f"{self.path}: {name} resolves outside the layout")
            try:
                return open(p, "rb")
            except OSError as e:
                raise MalformedArtifact(f"{self.path}: missing {name}") from e
        m = self._members.get(name)
        if m is None:
            raise MalformedArtifact(f"{self.path}: missing {name}")
        f = self._tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            raw = f.read(MAX_JSON + 1)
        if len(raw) > MAX_JSON:
            raise MalformedArtifact(f"{self.path}: {name} is larger than {MAX_JSON} bytes")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MalformedArtifact(f"{self.path}: {name} is not JSON: {e}") from e

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _blob_name(digest: str) -> str:
    algo, _, hexd = str(digest).partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise MalformedArtifact(f"unsupported or malformed digest {digest!r}")
    return f"blobs/sha256/{hexd}"


def _read_verified(store: _Store, digest: str) -> bytes:
    with store.open(_blob_name(digest)) as f:
        data = f.read()
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise MalformedArtifact(f"{store.path}: blob {digest} hashes to {got}")
    return data


@dataclass(frozen=True)
class _LayerRef:
    name: str  # file in the store
    digest: str | None  # sha256:<hex> to check (OCI layouts), None for `docker save`


def _read_layer(store: _Store, ref: _LayerRef) -> bytes:
    if ref.digest is not None:
        return _read_verified(store, ref.digest)
    with store.open(ref.name) as f:
        return f.read()


def _oci_manifest(store: _Store) -> tuple[dict[str, Any], list[_LayerRef], str]:
    """(config, layers, name) from an OCI image layout."""
    index = store.read_json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise MalformedArtifact(f"{store.path}: index.json lists no manifests")
    desc = manifests[0]
    for _ in range(4):  # an index may point at a nested index (multi-platform images)
        if desc.get("mediaType") not in _INDEX_TYPES:
            break
        nested = json.loads(_read_verified(store, desc["digest"]))
        amd64 = [m for m in nested.get("manifests", [])
                 if m.get("platform", {}).get("architecture") == "amd64"
                 and m.get("platform", {}).get("os", "linux") == "linux"]
        if not amd64:
            raise MalformedArtifact(f"{store.path}: no linux/amd64 image in the index")
        desc = amd64[0]
    if len(manifests) > 1:
        log.warning("%s: %d images in index.json; using the first", store.path, len(manifests))
    try:
        manifest = json.loads(_read_verified(store, desc["digest"]))
        config_digest = manifest["config"]["digest"]
        layer_digests = [layer["digest"] for layer in manifest["layers"]]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise MalformedArtifact(f"{store.path}: malformed image manifest: {e}") from e
    config = json.loads(_read_verified(store, config_digest))
    layers = [_LayerRef(_blob_name(d), d) for d in layer_digests]
    name = (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") or config_digest
    return config, layers, name


def _docker_manifest(store: _Store) -> tuple[dict[str, Any], list[_LayerRef], str]:
    """(config, layers, name) from a `docker save` tarball's manifest.json."""
    manifest = store.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise MalformedArtifact(f"{store.path}: manifest.json lists no image")
    if len(manifest) > 1:
        raise MalformedArtifact(f"{store.path}: holds {len(manifest)} images; save exactly one")
    entry = manifest[0]
    try:
        config_name, layer_names = entry["Config"], list(entry["Layers"])
    except (KeyError, TypeError) as e:
        raise MalformedArtifact(f"{store.path}: manifest.json entry lacks {e}") from e
    with store.open(config_name) as f:
        raw_config = f.read(MAX_JSON + 1)
    try:
        config = json.loads(raw_config)
    except json.JSONDecodeError as e:
        raise MalformedArtifact(f"{store.path}: {config_name} is not JSON") from e
    for n in layer_names:
        if not store.exists(n):
            raise MalformedArtifact(f"{store.path}: missing {n}")
    layers = [_LayerRef(n, None) for n in layer_names]
    tags = entry.get("RepoTags") or []
    name = tags[0] if tags else "sha256:" + hashlib.sha256(raw_config).hexdigest()
    return config, layers, name


def _apply_layer(tree: Tree, blob: bytes, where: str) -> None:
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        raise MalformedArtifact(f"{where}: zstd-compressed layer; save the image with gzip or "
                                "uncompressed layers")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MalformedArtifact(f"{where}: unreadable layer ({e})") from e
    with tar:
        # Whiteouts hide what lower layers had; apply them before this layer's own entries.
        for m in members:
            path = clean_path(m.name, where=where)
            base = posixpath.basename(path)
            if base == OPAQUE:
                tree.clear_dir(posixpath.dirname(tree.resolve_parent(path, where=where)))
            elif base.startswith(WHITEOUT):
                victim = posixpath.join(posixpath.dirname(path), base[len(WHITEOUT):])
                tree.remove(tree.resolve_parent(clean_path(victim, where=where), where=where))
        for m in members:
            path = clean_path(m.name, where=where)
            if not path or posixpath.basename(path).startswith(WHITEOUT):
                continue
            mode = m.mode & 0o7777
            if m.isdir():
                tree.add_dir(path, mode, where=where)
            elif m.issym():
                tree.add_symlink(path, m.linkname, where=where)
            elif m.islnk():
                tree.add_hardlink(path, m.linkname, where=where)
            elif m.isfile():
                try:
                    f = tar.extractfile(m)
                    assert f is not None
                    data = f.read()
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise MalformedArtifact(f"{where}: truncated member {path!r}: {e}") from e
                if len(data) != m.size:
                    raise MalformedArtifact(f"{where}: truncated member {path!r}")
                tree.add_file(path, data, mode=mode, where=where)
            else:
                log.info("%s: skipping special file %s (devices come from devtmpfs)", where, path)


def _command(config: dict[str, Any], where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    c = config.get("config") or config.get("container_config") or {}
    if not isinstance(c, dict):
        raise MalformedArtifact(f"{where}: image config has no `config` object")
    entry, cmd, env = c.get("Entrypoint") or [], c.get("Cmd") or [], c.get("Env") or []
    for name, v in (("Entrypoint", entry), ("Cmd", cmd), ("Env", env)):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise MalformedArtifact(f"{where}: image config {name} must be a list of strings")
    if c.get("WorkingDir") not in (None, "", "/"):
        log.warning("%s: WorkingDir %s is ignored (nitro's init starts the command in /)",
                    where, c["WorkingDir"])
    return tuple(entry) + tuple(cmd), tuple(env)


def load_oci(path: Path, *, spool: Path | None = None) -> ImportedImage:
    """Import an OCI layout (dir or tar) or a `docker save` tarball.

    Args:
        spool: a directory for the files' contents: each layer is then streamed once and no file's
            bytes stay in memory (`reproducible.layers`); it must outlive the returned tree. None
            keeps the original in-memory import (every blob and file in memory), which gives the
            same tree and is kept to compare the two.

    Raises:
        MalformedArtifact: unreadable archive, missing or mismatching blob, bad config.
        UnsafePath: a layer member escapes the image root.
    """
    if not path.exists():
        raise MalformedArtifact(f"{path}: no such file or directory")
    store = _Store(path)
    tree = Tree()
    try:
        if store.exists("manifest.json"):
            config, layers, name = _docker_manifest(store)
        elif store.exists("index.json"):
            config, layers, name = _oci_manifest(store)
        else:
            raise MalformedArtifact(
                f"{path}: neither a `docker save` tarball (manifest.json) nor an OCI layout "
                "(index.json)"
            )
        if not isinstance(config, dict):
            raise MalformedArtifact(f"{path}: image config is not a JSON object")
        if spool is None:
            blobs = [_read_layer(store, ref) for ref in layers]
            for i, blob in enumerate(blobs):
                _apply_layer(tree, blob, f"{path} layer {i + 1}/{len(layers)}")
        else:
            files = Spool(spool)
            for i, ref in enumerate(layers):
                with store.open(ref.name) as f:
                    apply_layer_stream(tree, f, files, where=f"{path} layer {i + 1}/{len(layers)}",
                                       digest=ref.digest)
    finally:
        store.close()
    cmd, env = _command(config, str(path))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return ImportedImage(name, digest, tree, cmd, env, len(layers))


def load_from_docker(
    name: str, *, scratch: Path, client_factory: Callable[[], Any] | None = None,
    spool: Path | None = None,
) -> ImportedImage:
    """Save `name` through a Docker-compatible API into `scratch` and import it (`spool`: as
    `load_oci`).

    Raises:
        ImageSourceError: the API is unreachable or has no such image.
        MalformedArtifact / UnsafePath: as `load_oci`.
    """
    try:
        import docker
        import docker.errors
    except ImportError as e:
        from enclave.cli import install_hint

        raise ImageSourceError(f"--from-image needs the docker SDK, the 'build' extra: "
                               f"{install_hint('build')}") from e
    try:
        client = client_factory() if client_factory else docker.from_env()
    except docker.errors.DockerException as e:
        raise ImageSourceError(
            f"cannot reach a Docker-compatible API (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {e}"
        ) from e
    tmp = scratch / ".image-save.tar"
    try:
        try:
            image = client.images.get(name)
        except docker.errors.ImageNotFound as e:
            raise ImageSourceError(f"image {name!r} not found in the Docker-compatible API") from e
        except docker.errors.DockerException as e:
            raise ImageSourceError(f"image {name!r}: {e}") from e
        with open(tmp, "wb") as f:
            for chunk in image.save(named=True):
                f.write(chunk)
        imported = load_oci(tmp, spool=spool)
    except docker.errors.DockerException as e:
        raise ImageSourceError(f"saving image {name!r} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
        client.close()
    return ImportedImage(name, imported.digest, imported.tree, imported.cmd, imported.env,
                         imported.layers)
