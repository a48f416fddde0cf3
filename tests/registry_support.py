"""Local package sources for the input-fetching tests: a flat Debian repository read by apt through
`file:`, a wheel directory pip reads with `--no-index --find-links`, and an HTTP "archive" on
loopback. Nothing here reaches beyond this machine.
"""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def make_deb(dest: Path, name: str, version: str, *, files: dict[str, str] | None = None) -> Path:
    """A minimal `.deb` (architecture all) built with dpkg-deb into `dest`."""
    pkg = dest / f".pkg-{name}-{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    for rel, text in (files or {}).items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: t <t@example.invalid>\nDescription: test\n"
    )
    deb = dest / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(pkg), str(deb)],
                   check=True, capture_output=True)
    return deb


def write_flat_repo(repo: Path, debs: list[Path]) -> None:
    """`Packages` and `Release` of a flat repository (`Suites: ./`) listing `debs` in `repo`."""
    stanzas = []
    for deb in debs:
        data = deb.read_bytes()
        fields = dict(line.split(": ", 1) for line in subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True, capture_output=True,
            text=True).stdout.splitlines())
        stanzas.append(
            f"Package: {fields['Package']}\nVersion: {fields['Version']}\nArchitecture: all\n"
            f"Maintainer: t <t@example.invalid>\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription: test\n\n")
    packages = "".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(
        "Origin: test\nSuite: ./\nArchitectures: amd64 all\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )


def make_repo(root: Path) -> str:
    """`root/repo`: a flat repository offering sentinel-test 1.0; returns that deb's sha256."""
    repo = root / "repo"
    repo.mkdir()
    deb = make_deb(repo, "sentinel-test", "1.0",
                   files={"usr/share/sentinel-test/hello": "hello\n"})
    write_flat_repo(repo, [deb])
    return hashlib.sha256(deb.read_bytes()).hexdigest()


def make_wheel(dirpath: Path) -> tuple[str, str]:
    """A pure-Python wheel sentineltestpkg 1.0 in `dirpath`: (file name, sha256)."""
    name = "sentineltestpkg-1.0-py3-none-any.whl"
    path = dirpath / name
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in (
            ("sentineltestpkg/__init__.py", "VALUE = 1\n"),
            ("sentineltestpkg-1.0.dist-info/METADATA",
             "Metadata-Version: 2.1\nName: sentineltestpkg\nVersion: 1.0\n"),
            ("sentineltestpkg-1.0.dist-info/WHEEL",
             "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
            ("sentineltestpkg-1.0.dist-info/RECORD", ""),
        ):
            zi = zipfile.ZipInfo(arc, (1980, 1, 1, 0, 0, 0))
            z.writestr(zi, text)
    return name, hashlib.sha256(path.read_bytes()).hexdigest()


def use_local_registries(monkeypatch: pytest.MonkeyPatch, repo: Path, wheels: Path) -> None:
    """Point the builder's apt at the flat repository `repo` and pip at the directory `wheels`."""
    sources = repo.parent / "local.sources"
    sources.write_text(f"Types: deb\nURIs: file:{repo}\nSuites: ./\nTrusted: yes\n")
    monkeypatch.setenv("SENTINEL_APT_SOURCES", str(sources))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))


@dataclass(frozen=True)
class Archive:
    root: Path  # the directory served
    base: str  # its URL, http://127.0.0.1:<port>


@contextmanager
def serve_archive(root: Path) -> Iterator[Archive]:
    """Serve `root` over HTTP on loopback until the block ends."""
    root.mkdir(parents=True, exist_ok=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield Archive(root, f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
        srv.server_close()


def oci_inputs_layout(dest: Path, files: list[Path]) -> Path:
    """`files` as an OCI artifact in an image layout at `dest` (what `oras push` of the exported
    inputs, pulled back with `oras pull --oci-layout`, looks like): an empty config, one layer per
    file titled by its name, every blob under `blobs/sha256/<hex>`."""
    import json

    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers = [dict(put(f.read_bytes()), mediaType="application/octet-stream",
                   annotations={"org.opencontainers.image.title": f.name}) for f in files]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.sentinel.inputs.v1",
        "config": dict(put(b"{}"), mediaType="application/vnd.oci.empty.v1+json"),
        "layers": layers}, sort_keys=True).encode()
    index = {"schemaVersion": 2, "manifests": [
        dict(put(manifest), mediaType="application/vnd.oci.image.manifest.v1+json")]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest
