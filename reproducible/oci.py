"""Import a container image as the payload's root filesystem.

Sources: an OCI image layout (directory or tar archive), a `docker save` tarball, or an image of a
Docker-compatible API (`docker.from_env()`, so DOCKER_HOST works; podman's `podman system service`
too). Layers are applied in order into a tree by `reproducible.layers` (uncompressed layers in
place, compressed ones streamed and spooled), with OCI whiteouts (`.wh.NAME`) and opaque
directories (`.wh..wh..opq`); hard links become copies, symlinks stay symlinks. Blobs of an OCI
layout are checked against their digests. Nothing is extracted onto the host: a member named with
`..`, an absolute path, or a path through a symlink that leaves the image is refused (`UnsafePath`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reproducible.errors import ImageSourceError, MalformedArtifact, UnsafePath
from reproducible.layers import ByteRange, Spool, Verifier, apply_layer, is_compressed
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
        self._plain = False  # an uncompressed archive: its members are byte ranges of it
        if path.is_dir():
            return
        try:
            with open(path, "rb") as f:
                self._plain = not is_compressed(f.read(6))
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

    def locate(self, name: str) -> ByteRange | None:
        """Where `name`'s bytes lie in a regular file, if they lie in one.

        Raises:
            MalformedArtifact: the archive ends inside the member.
            UnsafePath: a layout's file resolves outside the layout.
        """
        name = clean_path(name, where=str(self.path))
        if self._tar is None:
            p = self.path / name
            if not p.resolve().is_relative_to(self.path.resolve()):
                raise UnsafePath(f"{self.path}: {name} resolves outside the layout")
            if not p.is_file():
                raise MalformedArtifact(f"{self.path}: missing {name}")
            return ByteRange(p, 0, p.stat().st_size)
        m = self._members.get(name)
        if m is None:
            raise MalformedArtifact(f"{self.path}: missing {name}")
        if not self._plain or m.sparse is not None:
            return None
        if m.offset_data + m.size > self.path.stat().st_size:
            raise MalformedArtifact(f"{self.path}: truncated member {name}")
        return ByteRange(self.path, m.offset_data, m.size)

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
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:  # only manifests, indexes and configs are read whole
        raise MalformedArtifact(f"{store.path}: blob {digest} is larger than {MAX_JSON} bytes")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise MalformedArtifact(f"{store.path}: blob {digest} hashes to {got}")
    return data


@dataclass(frozen=True)
class _LayerRef:
    name: str  # file in the store
    digest: str | None  # sha256:<hex> to check (OCI layouts), None for `docker save`


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


def load_oci(path: Path, *, spool: Path, verifier: Verifier | None = None) -> ImportedImage:
    """Import an OCI layout (dir or tar) or a `docker save` tarball.

    Args:
        spool: a directory for the contents of compressed layers' files; it must outlive the
            returned tree. Files of uncompressed layers are not copied: the tree points into
            `path`, which must not change until the tree's contents are read.
        verifier: checks uncompressed OCI layers' digests on another thread while the caller goes
            on; the caller must then call `verifier.verify()` after reading the tree's contents
            (and `close()`). None: every digest is checked before this returns.

    Raises:
        MalformedArtifact: unreadable archive, missing or mismatching blob, bad config.
        UnsafePath: a layer member escapes the image root.
    """
    if not path.exists():
        raise MalformedArtifact(f"{path}: no such file or directory")
    own = verifier is None
    checks = Verifier() if verifier is None else verifier
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
        files = Spool(spool)
        for i, ref in enumerate(layers):
            where = f"{path} layer {i + 1}/{len(layers)}"
            located = store.locate(ref.name)
            if located is not None:
                apply_layer(tree, where=where, spool=files, verifier=checks, digest=ref.digest,
                            blob=located)
            else:
                with store.open(ref.name) as f:
                    apply_layer(tree, where=where, spool=files, verifier=checks,
                                digest=ref.digest, stream=f)
        if own:
            checks.verify()
    finally:
        store.close()
        if own:
            checks.close()
    cmd, env = _command(config, str(path))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return ImportedImage(name, digest, tree, cmd, env, len(layers))


def load_from_docker(
    name: str, *, scratch: Path, spool: Path, verifier: Verifier | None = None,
    client_factory: Callable[[], Any] | None = None,
) -> ImportedImage:
    """Save `name` through a Docker-compatible API into `scratch` and import it (`spool`,
    `verifier`: as `load_oci`). The saved tarball, `scratch/.image-save.tar`, stays: the tree
    points into it; the caller removes `scratch` when done with the tree.

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
        imported = load_oci(tmp, spool=spool, verifier=verifier)
    except docker.errors.DockerException as e:
        tmp.unlink(missing_ok=True)
        raise ImageSourceError(f"saving image {name!r} failed: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        client.close()
    return ImportedImage(name, imported.digest, imported.tree, imported.cmd, imported.env,
                         imported.layers)
