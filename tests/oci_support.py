"""Hand-made container images for the importer tests: `docker save` tarballs and OCI layouts.

Layers are described as lists of `(name, kind, payload)` with kind in file, dir, symlink, hardlink;
everything is deterministic (fixed mtimes, sorted JSON) so a fixture's bytes never vary.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

Member = tuple[str, str, object]


def layer_tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            if kind == "file":
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                ti.size = len(data)
                ti.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(payload)
            else:
                raise ValueError(kind)
            tar.addfile(ti)
    return buf.getvalue()


MEDIA = {None: "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def compress(data: bytes, compression: str | None) -> bytes:
    """A layer blob as stored: uncompressed, gzip (mtime 0) or zstd."""
    if compression is None:
        return data
    if compression == "gzip":
        import gzip

        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    raise ValueError(compression)


def _config(cmd: list[str], env: list[str], entrypoint: list[str] | None,
            blobs: list[bytes]) -> bytes:
    cfg = {"architecture": "amd64", "os": "linux",
           "config": {"Cmd": cmd, "Env": env, "Entrypoint": entrypoint},
           "rootfs": {"type": "layers",
                      "diff_ids": ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]}}
    return json.dumps(cfg, sort_keys=True).encode()


def docker_save_tar(
    dest: Path, layers: list[list[Member]], *, cmd: list[str] | None = None,
    env: list[str] | None = None, entrypoint: list[str] | None = None, tag: str = "sentinel-test:1",
    compression: str | None = None,
) -> Path:
    """A `docker save` tarball (legacy layout: <id>/layer.tar, <config>.json, manifest.json)."""
    tars = [layer_tar(layer) for layer in layers]
    config = _config(cmd or ["/bin/app"], env or ["PATH=/bin"], entrypoint, tars)
    blobs = [compress(t, compression) for t in tars]
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files: list[tuple[str, bytes]] = [(config_name, config)]
    names = []
    for blob in blobs:
        lid = hashlib.sha256(blob).hexdigest()
        files.append((f"{lid}/layer.tar", blob))
        names.append(f"{lid}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
    files.append(("manifest.json", json.dumps(manifest).encode()))
    _write_tar(dest, files)
    return dest


def oci_layout(
    dest: Path, layers: list[list[Member]], *, cmd: list[str] | None = None,
    env: list[str] | None = None, as_tar: bool = False, compression: str | None = None,
) -> Path:
    """An OCI image layout (directory, or a tar of it); layers compressed with `compression`."""
    files: list[tuple[str, bytes]] = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]

    def blob(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        files.append((f"blobs/sha256/{d}", data))
        return "sha256:" + d

    tars = [layer_tar(layer) for layer in layers]
    config = _config(cmd or ["/bin/app"], env or ["PATH=/bin"], None, tars)
    layer_descs = []
    for data in (compress(t, compression) for t in tars):
        layer_descs.append({"mediaType": MEDIA[compression],
                            "digest": blob(data), "size": len(data)})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config), "size": len(config)},
        "layers": layer_descs}, sort_keys=True).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "oci-test"}}]}
    files.append(("index.json", json.dumps(index).encode()))
    if as_tar:
        _write_tar(dest, files)
    else:
        for name, data in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data)
    return dest


def nest_in_platform_index(layout: Path) -> Path:
    """Put the layout's single manifest (as linux/amd64) in a nested image index beside an
    arm64 entry whose blob does not exist: an importer must pick amd64 without touching arm64."""
    index = json.loads((layout / "index.json").read_text())
    amd64 = dict(index["manifests"][0], platform={"architecture": "amd64", "os": "linux"})
    arm64 = dict(amd64, digest="sha256:" + "0" * 64,
                 platform={"architecture": "arm64", "os": "linux"})
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": [arm64, amd64]}).encode()
    ndig = hashlib.sha256(nested).hexdigest()
    (layout / "blobs/sha256" / ndig).write_bytes(nested)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + ndig,
        "size": len(nested)}]}))
    return layout


def _write_tar(dest: Path, files: list[tuple[str, bytes]]) -> None:
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tar.addfile(ti, io.BytesIO(data))
