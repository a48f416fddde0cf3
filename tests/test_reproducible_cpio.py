"""The deterministic newc writer and the in-memory tree it serialises."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from reproducible.cpio import MAX_FILE, TRAILER, cpio_size, read_cpio, write_cpio
from reproducible.errors import RamdiskLimit, UnsafePath
from reproducible.tree import Tree

EPOCH = 1767225600


def _tree(order: list[int], src: Path) -> Tree:
    adds = [
        lambda t: t.add_file("usr/bin/tool", b"\x7fELF...", mode=0o700),
        lambda t: t.add_file("etc/conf", b"k=v\n", mode=0o600),
        lambda t: t.add_symlink("bin", "usr/bin"),
        lambda t: t.add_dir("tmp", 0o1777),
        lambda t: t.add_file("big", source=src, mode=0o640),
        lambda t: t.add_chardev("dev/console", 5, 1),
    ]
    t = Tree()
    for i in order:
        adds[i](t)
    return t


def _bytes(t: Tree) -> bytes:
    buf = io.BytesIO()
    write_cpio(t, buf, mtime=EPOCH)
    return buf.getvalue()


def test_same_tree_same_bytes_whatever_the_insertion_order(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(bytes(range(256)) * 300)
    a = _bytes(_tree([0, 1, 2, 3, 4, 5], src))
    b = _bytes(_tree([5, 4, 3, 2, 1, 0], src))
    assert a == b
    src.chmod(0o777)  # host file modes never leak: the tree's mode is what counts
    assert _bytes(_tree([0, 1, 2, 3, 4, 5], src)) == a


def test_header_fields_are_normalised(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(b"x" * 1001)
    members = read_cpio(_bytes(_tree([0, 1, 2, 3, 4, 5], src)))
    names = [m.name for m in members]
    assert names == sorted(names, key=str.encode)
    assert [m.ino for m in members] == list(range(1, len(members) + 1))
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, EPOCH)}
    modes = {m.name: m.mode for m in members}
    assert modes["usr/bin/tool"] == stat.S_IFREG | 0o755
    assert modes["etc/conf"] == stat.S_IFREG | 0o644
    assert modes["big"] == stat.S_IFREG | 0o644
    assert modes["tmp"] == stat.S_IFDIR | 0o755
    assert modes["bin"] == stat.S_IFLNK | 0o777
    assert modes["dev/console"] == stat.S_IFCHR | 0o600
    assert next(m for m in members if m.name == "big").data == b"x" * 1001


def test_trailer_and_alignment(tmp_path: Path) -> None:
    t = Tree()
    t.add_file("a", b"123")
    blob = _bytes(t)
    assert len(blob) % 4 == 0
    assert TRAILER.encode() + b"\0" in blob[-(len(TRAILER) + 8):]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_it_back(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(b"payload")
    archive = tmp_path / "x.cpio"
    archive.write_bytes(_bytes(_tree([0, 1, 2, 3, 4, 5], src)))
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(archive, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == [m.name for m in read_cpio(archive.read_bytes())]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], cwd=out,
                   stdin=open(archive, "rb"), check=True)
    assert (out / "big").read_bytes() == b"payload"
    assert (out / "bin").is_symlink() and str((out / "bin").readlink()) == "usr/bin"


def test_source_that_changed_size_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    t = Tree()
    t.add_file("f", source=src)
    src.write_bytes(b"abcdef")
    with pytest.raises(ValueError, match="changed size"):
        write_cpio(t, io.BytesIO(), mtime=0)


def test_cpio_size_is_the_written_size(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x" * 300_001)
    t = Tree()
    t.add_file("a/small", b"hello")
    t.add_file("big", source=src)
    t.add_symlink("ln", "a/small")
    t.add_dir("d/e")
    out = io.BytesIO()
    stats = write_cpio(t, out, mtime=7)
    assert cpio_size(t) == stats.size == len(out.getvalue())


def test_file_of_4_gib_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:  # sparse: no 4 GiB on disk
        f.truncate(MAX_FILE + 1)
    t = Tree()
    t.add_file("data/huge", source=big)
    with pytest.raises(RamdiskLimit, match=r"data/huge: 4,294,967,296 bytes.*at most 4,294,967,295"):
        cpio_size(t)
    out = io.BytesIO()
    with pytest.raises(RamdiskLimit):
        write_cpio(t, out, mtime=0)
    assert out.getvalue() == b""


def test_mtime_must_fit() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        write_cpio(Tree(), io.BytesIO(), mtime=1 << 33)


UNSAFE = {
    "dotdot": lambda t: t.add_file("../x", b""),
    "absolute": lambda t: t.add_file("/etc/x", b""),
    "nul": lambda t: t.add_file("a\0b", b""),
    "through-escaping-symlink": lambda t: (t.add_dir("d"), t.add_symlink("d/up", "../.."),
                                           t.add_file("d/up/x", b"")),
    "relative-symlink-escape": lambda t: t.add_symlink("a/b", "../../../etc"),
    "hardlink-to-nothing": lambda t: t.add_hardlink("h", "missing"),
    "file-under-a-file": lambda t: (t.add_file("f", b""), t.add_file("f/g", b"")),
}


@pytest.mark.parametrize("action", list(UNSAFE.values()), ids=list(UNSAFE))
def test_unsafe_paths_are_refused(action) -> None:
    with pytest.raises(UnsafePath):
        action(Tree())


def test_symlink_loop_is_refused() -> None:
    t = Tree()
    t.add_symlink("a", "b")
    t.add_symlink("b", "a")
    with pytest.raises(UnsafePath, match="loop"):
        t.add_file("a/x", b"")


def test_directory_over_symlink_keeps_the_symlink() -> None:
    t = Tree()
    t.add_symlink("lib64", "usr/lib64")
    t.add_dir("lib64")
    t.add_file("lib64/ld.so", b"x")
    assert t.get("lib64").kind == "symlink"
    assert t.get("usr/lib64/ld.so") is not None


def test_whiteout_helpers() -> None:
    t = Tree()
    for p in ("a/1", "a/2", "ab"):
        t.add_file(p, b"")
    t.clear_dir("a")
    assert "a" in t and "a/1" not in t and "ab" in t
    t.remove("a")
    assert "a" not in t and "ab" in t
