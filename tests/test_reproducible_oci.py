"""Container image importers: layers, whiteouts, links, traversal, broken archives, podman."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from oci_support import docker_save_tar, layer_tar, nest_in_platform_index, oci_layout

from reproducible.boot.qemu import stop_process
from reproducible.errors import ImageSourceError, MalformedArtifact, UnsafePath
from reproducible.oci import load_from_docker, load_oci

BASE = [
    ("bin", "dir", None),
    ("bin/app", "file", b"#!/bin/sh\necho app\n"),
    ("etc", "dir", None),
    ("etc/passwd", "file", b"root:x:0:0::/:/bin/sh\n"),
    ("etc/old.conf", "file", b"old"),
    ("opt", "dir", None),
    ("opt/a", "file", b"a"),
    ("opt/b", "file", b"b"),
    ("usr", "dir", None),
    ("usr/lib", "dir", None),
    ("lib", "symlink", "usr/lib"),
]
TOP = [
    ("etc/.wh.old.conf", "file", b""),
    ("opt/.wh..wh..opq", "file", b""),
    ("opt/c", "file", b"c"),
    ("lib/libx.so", "file", b"ELF"),  # written through the lib -> usr/lib symlink
    ("bin/app2", "hardlink", "bin/app"),
    ("bin/sh", "symlink", "/bin/app"),
]


@pytest.fixture
def load(tmp_path_factory):
    """The importer with a spool directory outside tmp_path (tests check that stays untouched)."""
    spool = tmp_path_factory.mktemp("spool")
    return lambda src: load_oci(src, spool=spool / f"{len(list(spool.iterdir()))}")


def _paths(tree) -> dict[str, str]:
    return {p: e.kind for p, e in tree.items()}


@pytest.mark.parametrize("kind", ["docker-save", "oci-dir", "oci-tar"])
def test_layers_apply_in_order_with_whiteouts_and_links(tmp_path: Path, kind: str, load) -> None:
    if kind == "docker-save":
        src = docker_save_tar(tmp_path / "img.tar", [BASE, TOP], cmd=["/bin/app", "--x"],
                              env=["A=1"])
    else:
        (tmp_path / "layout").mkdir()
        src = oci_layout(tmp_path / ("img.tar" if kind == "oci-tar" else "layout"), [BASE, TOP],
                         cmd=["/bin/app", "--x"], env=["A=1"], as_tar=kind == "oci-tar")
    img = load(src)
    paths = _paths(img.tree)
    assert "etc/old.conf" not in paths  # whiteout
    assert "opt/a" not in paths and "opt/b" not in paths and paths["opt/c"] == "file"  # opaque
    assert paths["usr/lib/libx.so"] == "file" and paths["lib"] == "symlink"
    assert img.tree.get("bin/app2").read() == img.tree.get("bin/app").read()  # hardlink -> copy
    assert img.tree.get("bin/sh").target == "/bin/app"
    assert img.cmd == ("/bin/app", "--x") and img.env == ("A=1",)
    assert img.layers == 2


def test_entrypoint_precedes_cmd(tmp_path: Path, load) -> None:
    src = docker_save_tar(tmp_path / "i.tar", [BASE], entrypoint=["/bin/app"], cmd=["serve"])
    assert load(src).cmd == ("/bin/app", "serve")


TRAVERSAL = {
    "dotdot": [("../escape", "file", b"x")],
    "dotdot-nested": [("a/../../escape", "file", b"x")],
    "absolute": [("/etc/evil", "file", b"x")],
    "symlink-escape-write": [("up", "symlink", "../../.."), ("up/etc/evil", "file", b"x")],
    "symlink-relative-escape": [("d", "dir", None), ("d/link", "symlink", "../../outside")],
    "hardlink-outside": [("h", "hardlink", "../../etc/shadow")],
    "hardlink-absent": [("h", "hardlink", "no/such/file")],
    "whiteout-dotdot": [("a/.wh...", "file", b"")],
}


@pytest.mark.parametrize("members", list(TRAVERSAL.values()), ids=list(TRAVERSAL))
def test_traversal_is_refused_and_nothing_is_written(tmp_path: Path, members, load) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = docker_save_tar(work / "img.tar", [BASE, members])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafePath) as e:
        load(src)
    assert "layer 2/2" in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not Path("/etc/evil").exists() and not (tmp_path / "escape").exists()


def test_escape_in_a_later_layer_through_an_earlier_symlink(tmp_path: Path, load) -> None:
    src = docker_save_tar(tmp_path / "i.tar", [[("x", "symlink", "../..")], [("x/y", "file", b"")]])
    with pytest.raises(UnsafePath, match="symlink"):
        load(src)


def test_absolute_symlink_resolves_inside_the_image(tmp_path: Path, load) -> None:
    layers = [[("etc", "dir", None), ("cfg", "symlink", "/etc")], [("cfg/app.conf", "file", b"k")]]
    img = load(docker_save_tar(tmp_path / "i.tar", layers))
    assert img.tree.get("etc/app.conf").read() == b"k"


BROKEN = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
    "not-a-tar": lambda p: p.write_bytes(b"garbage" * 100),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_tarball_is_a_clear_error(tmp_path: Path, damage, load) -> None:
    src = docker_save_tar(tmp_path / "img.tar", [BASE, TOP])
    damage(src)
    with pytest.raises(MalformedArtifact, match=str(src.name)):
        load(src)


def test_corrupt_layer_inside_valid_tarball(tmp_path: Path, load) -> None:
    import io
    import tarfile

    src = docker_save_tar(tmp_path / "img.tar", [BASE])
    rebuilt = tmp_path / "bad.tar"
    with tarfile.open(src) as old, tarfile.open(rebuilt, "w") as new:
        for m in old.getmembers():
            data = old.extractfile(m).read()
            if m.name.endswith("layer.tar"):
                data = b"\x1f\x8b" + data[2:200]  # looks gzipped, is not
                m.size = len(data)
            new.addfile(m, io.BytesIO(data))
    with pytest.raises(MalformedArtifact, match="layer 1/1"):
        load(rebuilt)


def test_oci_blob_digest_mismatch(tmp_path: Path, load) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE])
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]  # the layer
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    with pytest.raises(MalformedArtifact, match="hashes to"):
        load(layout)


def test_neither_layout(tmp_path: Path, load) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(MalformedArtifact, match="neither"):
        load(tmp_path / "d")


def test_multiple_images_in_docker_save_refused(tmp_path: Path, load) -> None:
    import io
    import json
    import tarfile

    src = docker_save_tar(tmp_path / "img.tar", [BASE])
    out = tmp_path / "two.tar"
    with tarfile.open(src) as old, tarfile.open(out, "w") as new:
        for m in old.getmembers():
            data = old.extractfile(m).read()
            if m.name == "manifest.json":
                data = json.dumps(json.loads(data) * 2).encode()
                m.size = len(data)
            new.addfile(m, io.BytesIO(data))
    with pytest.raises(MalformedArtifact, match="2 images"):
        load(out)


def test_layer_tar_fixture_is_deterministic() -> None:
    assert layer_tar(BASE) == layer_tar(BASE)


# --- the real docker SDK against podman's Docker-compatible API ---------------------------------


@pytest.fixture(scope="module")
def podman_api(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (nox -s tests installs it)")
    d = tmp_path_factory.mktemp("podman")
    sock = d / "api.sock"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(d))
    proc = subprocess.Popen(
        ["podman", "--root", str(d / "root"), "--runroot", str(d / "run"),
         "--storage-driver", "vfs", "system", "service",
         "--time=60", f"unix://{sock}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(sock))
                    break
                except OSError:
                    pass
            if proc.poll() is not None:
                pytest.fail(f"podman system service exited: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        else:
            pytest.fail("podman system service did not open its socket in 30 s")
        yield f"unix://{sock}"
    finally:
        stop_process(proc)


def test_from_image_through_docker_sdk_and_podman(tmp_path: Path, podman_api: str) -> None:
    import docker

    src = docker_save_tar(tmp_path / "img.tar", [BASE, TOP], cmd=["/bin/app"], env=["A=1"],
                          tag="localhost/sentinel-import:1")
    client = docker.DockerClient(base_url=podman_api)
    try:
        with open(src, "rb") as f:
            client.images.load(f.read())
    finally:
        client.close()
    out = tmp_path / "build"
    out.mkdir()
    img = load_from_docker("localhost/sentinel-import:1", scratch=out, spool=tmp_path / "s1",
                           client_factory=lambda: docker.DockerClient(base_url=podman_api))
    direct = load_oci(src, spool=tmp_path / "s2")
    assert _paths(img.tree) == _paths(direct.tree)
    assert img.tree.get("bin/app").read() == direct.tree.get("bin/app").read()
    assert img.cmd == ("/bin/app",) and "A=1" in img.env
    # Only the saved tarball, which the tree reads from; nothing extracted next to it.
    assert [p.name for p in out.iterdir()] == [".image-save.tar"]


def test_from_image_missing_image(tmp_path: Path, podman_api: str) -> None:
    import docker

    with pytest.raises(ImageSourceError, match="not found"):
        load_from_docker("localhost/no-such-image:0", scratch=tmp_path, spool=tmp_path / "s",
                         client_factory=lambda: docker.DockerClient(base_url=podman_api))


def test_from_image_unreachable_api(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(ImageSourceError, match="DOCKER_HOST"):
        load_from_docker("x", scratch=tmp_path, spool=tmp_path / "s")


@pytest.mark.slow
def test_cli_build_from_image_via_docker_host(tmp_path: Path, podman_api: str) -> None:
    import docker

    src = docker_save_tar(tmp_path / "img.tar", [BASE], cmd=["/bin/app"], tag="localhost/cli-img:1")
    client = docker.DockerClient(base_url=podman_api)
    try:
        client.images.load(src.read_bytes())
    finally:
        client.close()
    out = tmp_path / "out"
    env = dict(os.environ, DOCKER_HOST=podman_api)
    res = subprocess.run(
        [sys.executable, "-m", "reproducible", "build", "--out", str(out), "--from-image",
         "localhost/cli-img:1", "--json"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (out / "sentinel.eif").is_file() and summary["mode"] == "development"
    doc = json.loads((out / "measurements.json").read_text())
    assert {"kind": "image", "name": "localhost/cli-img:1"}.items() <= next(
        i for i in doc["Sentinel"]["inputs"] if i["kind"] == "image").items()


def test_gzip_layers_in_an_oci_layout(tmp_path: Path, load) -> None:
    import gzip
    import hashlib

    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE])
    index = json.loads((layout / "index.json").read_text())
    mdig = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdig).read_bytes())
    raw_dig = manifest["layers"][0]["digest"].split(":")[1]
    gz = gzip.compress((layout / "blobs/sha256" / raw_dig).read_bytes(), mtime=0)
    gz_dig = hashlib.sha256(gz).hexdigest()
    (layout / "blobs/sha256" / gz_dig).write_bytes(gz)
    manifest["layers"][0].update(digest="sha256:" + gz_dig, size=len(gz),
                                 mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    mbytes = json.dumps(manifest).encode()
    new_mdig = hashlib.sha256(mbytes).hexdigest()
    (layout / "blobs/sha256" / new_mdig).write_bytes(mbytes)
    index["manifests"][0].update(digest="sha256:" + new_mdig, size=len(mbytes))
    (layout / "index.json").write_text(json.dumps(index))
    assert load(layout).tree.get("bin/app").read() == b"#!/bin/sh\necho app\n"


def test_multi_platform_index_picks_linux_amd64(tmp_path: Path, load) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE])
    nest_in_platform_index(layout)
    assert "bin/app" in load(layout).tree


COMPRESSED = [("oci-dir", "gzip"), ("oci-dir", "zstd"), ("oci-tar", "zstd"),
              ("docker-save", "gzip"), ("docker-save", "zstd")]


def _image(tmp_path: Path, kind: str, layers, compression: str | None) -> Path:
    tmp_path.mkdir(exist_ok=True)
    if kind == "docker-save":
        return docker_save_tar(tmp_path / "img.tar", layers, compression=compression)
    (tmp_path / "layout").mkdir(exist_ok=True)
    return oci_layout(tmp_path / ("img.tar" if kind == "oci-tar" else "layout"), layers,
                      as_tar=kind == "oci-tar", compression=compression)


def _contents(tree) -> dict[str, tuple[str, bytes | str | None]]:
    return {p: (e.kind, e.read() if e.kind == "file" else e.target or None)
            for p, e in tree.items()}


@pytest.mark.parametrize(("kind", "compression"), COMPRESSED, ids=[f"{k}-{c}" for k, c in COMPRESSED])
def test_compressed_layers_stream_to_the_same_tree(tmp_path: Path, kind: str, compression: str,
                                                   load) -> None:
    big = [("big", "file", os.urandom(300_000))]  # spooled to a file, not kept in memory
    plain = load(_image(tmp_path / "p", "oci-dir", [BASE + big, TOP], None))
    packed = load(_image(tmp_path / "c", kind, [BASE + big, TOP], compression))
    assert _contents(packed.tree) == _contents(plain.tree)
    assert plain.tree.get("big").source is not None and plain.tree.get("big").offset > 0
    assert packed.tree.get("big").source is not None and packed.tree.get("big").offset == 0


def test_zstd_layer_without_zstandard_names_the_package(tmp_path: Path, load, monkeypatch) -> None:
    import sys as _sys

    src = docker_save_tar(tmp_path / "img.tar", [BASE], compression="zstd")
    monkeypatch.setitem(_sys.modules, "zstandard", None)  # as if not installed
    with pytest.raises(MalformedArtifact, match="zstandard"):
        load(src)


def test_corrupt_zstd_layer_is_a_clear_error(tmp_path: Path, load) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE], compression="zstd")
    victim = _layer_blob(layout)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    _repin(layout, victim, bytes(data))  # digests match: the damage is found by zstd itself
    with pytest.raises(MalformedArtifact, match="layer 1/1: unreadable layer"):
        load(layout)


def test_uncompressed_layer_changed_after_import_is_refused(tmp_path: Path) -> None:
    from reproducible.layers import Verifier

    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE])
    verifier = Verifier()
    try:
        img = load_oci(layout, spool=tmp_path / "spool", verifier=verifier)
        layer = img.tree.get("bin/app").source
        with open(layer, "r+b") as f:  # same bytes, but written: the file is not what was hashed
            first = f.read(1)
            f.seek(0)
            f.write(first)
        with pytest.raises(MalformedArtifact, match="changed while"):
            verifier.verify()
    finally:
        verifier.close()


def test_truncated_member_of_an_uncompressed_layer(tmp_path: Path, load) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [[("big", "file", b"x" * 5000)]])
    # Rewrite the layer cut inside the file's data and re-pin every digest on the way up.
    blob = _layer_blob(layout)
    cut = blob.read_bytes()[:2048]
    _repin(layout, blob, cut)
    with pytest.raises(MalformedArtifact, match="truncated member 'big'"):
        load(layout)


def _layer_blob(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    mdig = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdig).read_bytes())
    return layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]


def _repin(layout: Path, old: Path, data: bytes) -> None:
    import hashlib

    new = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / new).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    mdig = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdig).read_bytes())
    manifest["layers"][0].update(digest="sha256:" + new, size=len(data))
    mbytes = json.dumps(manifest).encode()
    new_m = hashlib.sha256(mbytes).hexdigest()
    (layout / "blobs/sha256" / new_m).write_bytes(mbytes)
    index["manifests"][0].update(digest="sha256:" + new_m, size=len(mbytes))
    (layout / "index.json").write_text(json.dumps(index))


def test_layout_symlink_leading_out_is_refused(tmp_path: Path, load) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE])
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (layout / "index.json").unlink()
    (layout / "index.json").symlink_to(secret)
    with pytest.raises(UnsafePath, match="outside the layout"):
        load(layout)
