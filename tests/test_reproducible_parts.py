"""Builder parts on hand-made inputs: kernel modules, .deb unpacking, wheels, blobs, cmd/env."""

from __future__ import annotations

import io
import lzma
import shutil
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from reproducible import deb, kmod
from reproducible.cache import Cache, sha256_file
from reproducible.errors import ArtifactMismatch, BuildError, MalformedArtifact, UnsafePath
from reproducible.rootfs import customer_ramdisk, install_wheel, load_blobs
from reproducible.tree import Tree


def fake_module(depends: str, extra: bytes = b"") -> bytes:
    """A minimal ELF64 LE relocatable with .modinfo and .shstrtab sections."""
    modinfo = b"license=GPL\0" + f"depends={depends}\0".encode() + b"vermagic=6.12\0" + extra
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body)
    shoff += -shoff % 8
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", hdr, 0x28, shoff)
    struct.pack_into("<HHH", hdr, 0x3A, 64, 3, 2)
    out = bytearray(hdr + body)
    out += bytes(shoff - len(out))

    def sh(name: int, off: int, size: int) -> bytes:
        b = bytearray(64)
        struct.pack_into("<I", b, 0, name)
        struct.pack_into("<QQ", b, 0x18, off, size)
        return bytes(b)

    out += sh(0, 0, 0) + sh(1, 64, len(modinfo)) + sh(10, 64 + len(modinfo), len(shstrtab))
    return bytes(out)


def test_modinfo_depends_are_read() -> None:
    info = kmod.modinfo("x.ko", fake_module("vsock,vmw_vsock_virtio_transport_common"))
    assert info["depends"] == ["vsock,vmw_vsock_virtio_transport_common"]


def test_load_order_puts_dependencies_first_and_decompresses() -> None:
    avail = {
        "vsock": ("k/vsock.ko.xz", lzma.compress(fake_module(""))),
        "common": ("k/common.ko.xz", lzma.compress(fake_module("vsock"))),
        "loop": ("k/vsock-loop.ko", fake_module("common,vsock")),
        "nsm": ("k/nsm.ko.xz", lzma.compress(fake_module(""))),
    }
    order = kmod.load_order(("loop", "nsm"), avail)
    assert [m.name for m in order] == ["vsock", "common", "loop", "nsm"]
    assert order[0].data[:4] == b"\x7fELF"
    assert kmod.canonical("drivers/x/virtio-rng.ko.xz") == "virtio_rng"


def test_missing_module_names_who_needs_it() -> None:
    avail = {"a": ("a.ko", fake_module("ghost"))}
    with pytest.raises(BuildError, match="'ghost' \\(needed by a\\)"):
        kmod.load_order(("a",), avail)


def test_module_dependency_loop() -> None:
    avail = {"a": ("a.ko", fake_module("b")), "b": ("b.ko", fake_module("a"))}
    with pytest.raises(BuildError, match="loop a -> b -> a"):
        kmod.load_order(("a",), avail)


@pytest.mark.parametrize("blob", [b"not an elf", b"\x7fELF\x02\x01" + bytes(10)], ids=["text", "short"])
def test_malformed_module(blob: bytes) -> None:
    with pytest.raises(MalformedArtifact, match="module m.ko"):
        kmod.modinfo("m.ko", blob)


def test_bad_xz_module() -> None:
    with pytest.raises(MalformedArtifact, match="bad xz"):
        kmod.decompress("m.ko.xz", b"garbage")


# --- .deb unpacking ---------------------------------------------------------------------------


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        hdr = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += hdr + data + (b"\n" if len(data) % 2 else b"")
    return out


def _data_tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as t:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _deb(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar.xz", _data_tar(entries))]))
    return path


def test_unpack_keeps_filtered_members_and_reuses_the_cache(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    p = _deb(tmp_path / "x.deb", [("./usr/bin/tool", b"T"), ("./usr/share/doc/x", b"D")])
    sha = sha256_file(p)
    keep = lambda path: not path.startswith("usr/share/doc")  # noqa: E731
    files, members = deb.unpack(cache, "deb x", p, sha, keep, "f1")
    assert [m.path for m in members] == ["usr/bin/tool"]
    p.write_bytes(b"gone")  # a warm unpack no longer reads the package
    _, again = deb.unpack(cache, "deb x", p, sha, keep, "f1")
    assert again == members
    tree = Tree()
    deb.add_to_tree(tree, files, members, where="deb x")
    assert tree.get("usr/bin/tool").read() == b"T"


def test_tampered_unpack_cache_is_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    p = _deb(tmp_path / "x.deb", [("./usr/bin/tool", b"T")])
    sha = sha256_file(p)
    files, members = deb.unpack(cache, "deb x", p, sha, lambda _: True, "f1")
    deb.file_path(files, members[0]).write_bytes(b"evil")
    with pytest.raises(ArtifactMismatch, match="deb x: usr/bin/tool: sha256 mismatch in the unpack cache"):
        deb.unpack(cache, "deb x", p, sha, lambda _: True, "f1")


def test_deb_with_traversal_member(tmp_path: Path) -> None:
    p = _deb(tmp_path / "x.deb", [("../../etc/evil", b"x")])
    with pytest.raises(UnsafePath, match="deb evil"):
        deb.unpack(Cache(tmp_path / "c"), "deb evil", p, sha256_file(p), lambda _: True, "f")
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("content", [b"not ar at all", b"!<arch>\nshort"], ids=["no-magic", "cut"])
def test_not_a_deb(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.deb"
    p.write_bytes(content)
    with pytest.raises(MalformedArtifact, match="x.deb"):
        deb.unpack(Cache(tmp_path / "c"), "deb x", p, sha256_file(p), lambda _: True, "f")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_unpack_a_real_dpkg_built_package(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/bin/alias").symlink_to("tool")
    (root / "DEBIAN/control").write_text(
        "Package: t\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: t\n")
    out = tmp_path / "t.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True,
                   capture_output=True)
    files, members = deb.unpack(Cache(tmp_path / "c"), "deb t", out, sha256_file(out),
                                lambda _: True, "all")
    by = {m.path: m for m in members}
    assert by["usr/bin/tool"].mode == 0o755 and by["usr/bin/alias"].target == "tool"


# --- wheels, blobs, cmd/env -------------------------------------------------------------------


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return path


def test_wheel_install_layout(tmp_path: Path) -> None:
    w = _wheel(tmp_path / "p-1-py3-none-any.whl", {
        "p/__init__.py": b"",
        "p-1.dist-info/METADATA": b"Name: p\n",
        "p-1.dist-info/RECORD": b"",
        "p-1.data/purelib/extra.py": b"x",
        "p-1.data/scripts/tool": b"#!python",
    })
    tree = Tree()
    install_wheel(tree, w, "wheel p")
    paths = {p for p, e in tree.items() if e.kind == "file"}
    site = "usr/lib/python3/dist-packages"
    assert paths == {f"{site}/p/__init__.py", f"{site}/p-1.dist-info/METADATA", f"{site}/extra.py"}


def test_wheel_with_traversal(tmp_path: Path) -> None:
    w = _wheel(tmp_path / "e-1-py3-none-any.whl", {"../../evil.py": b""})
    with pytest.raises(UnsafePath, match="wheel e"):
        install_wheel(Tree(), w, "wheel e")


def test_not_a_wheel(tmp_path: Path) -> None:
    w = tmp_path / "w.whl"
    w.write_bytes(b"nope")
    with pytest.raises(MalformedArtifact, match="not a wheel"):
        install_wheel(Tree(), w, "wheel w")


def test_blobs_cmdline_newline_is_dropped_and_inner_newline_refused(tmp_path: Path) -> None:
    for f in ("bzImage", "init", "nsm.ko"):
        (tmp_path / f).write_bytes(b"x")
    (tmp_path / "cmdline").write_bytes(b"console=ttyS0 pci=off\n")
    assert load_blobs(tmp_path).cmdline == b"console=ttyS0 pci=off"
    (tmp_path / "cmdline").write_bytes(b"a\nb\n")
    with pytest.raises(MalformedArtifact, match="one line"):
        load_blobs(tmp_path)


@pytest.mark.parametrize("cmd,env", [((), ()), (("a\nb",), ()), (("a",), ("K=v\nX=y",))],
                         ids=["empty", "newline-in-cmd", "newline-in-env"])
def test_customer_ramdisk_refuses_unrepresentable_cmd_env(cmd, env) -> None:
    with pytest.raises(BuildError):
        customer_ramdisk(Tree(), cmd, env)


def test_wheel_drop_and_keep_patterns(tmp_path: Path) -> None:
    w = _wheel(tmp_path / "b-1-py3-none-any.whl", {
        "b/data/endpoints.json": b"{}",
        "b/data/kms/2014/service.json": b"{}",
        "b/data/s3/2006/service.json": b"{}",
    })
    tree = Tree()
    install_wheel(tree, w, "wheel b", drop=("b/data/*/*",), keep=("b/data/kms/*",))
    site = "usr/lib/python3/dist-packages"
    assert {p for p, e in tree.items() if e.kind == "file"} == {
        f"{site}/b/data/endpoints.json", f"{site}/b/data/kms/2014/service.json"}
