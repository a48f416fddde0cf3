"""The streaming importer against an independent in-memory model (tests/reference_import.py).

For every image the importer tests use, and for seeded random layer stacks, both importers must
give the same tree (paths, kinds, modes, contents, link targets), the same customer ramdisk bytes
and so the same PCR2; an unsafe image is refused by both. One image is also built into an EIF,
whose measured PCR2 must be the reference's.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import posixpath
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from oci_support import compress, docker_save_tar, nest_in_platform_index, oci_layout
from reference_import import load_reference
from test_reproducible_oci import BASE, COMPRESSED, TOP, TRAVERSAL

from reproducible import layers as layers_mod
from reproducible.cpio import write_cpio
from reproducible.errors import MalformedArtifact, UnsafePath
from reproducible.lock import load_lock
from reproducible.oci import load_oci
from reproducible.rootfs import customer_ramdisk
from reproducible.tree import FILE, SYMLINK, Tree
from verify.pcr import extend

EPOCH = load_lock().source_date_epoch  # the mtime every build writes into its cpio


def _snapshot(tree: Tree) -> list[tuple[str, str, int, str, tuple[int, int]]]:
    out = []
    for path, e in tree.items():
        what = (hashlib.sha256(e.read()).hexdigest() + f":{e.size}" if e.kind == FILE
                else e.target if e.kind == SYMLINK else "")
        out.append((path, e.kind, e.mode, what, e.rdev))
    return out


def _ramdisk(tree: Tree, cmd: tuple[str, ...], env: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    write_cpio(customer_ramdisk(tree, cmd, env), buf, mtime=EPOCH)
    return buf.getvalue()


def _pcr2(cpio: bytes) -> bytes:
    return extend(hashlib.sha384(cpio).digest())


def assert_same_import(src: Path, spool: Path) -> bytes:
    """Import `src` both ways, check everything agrees, and return the PCR2 they share."""
    ref = load_reference(src)
    assert all(e.data is not None for _, e in ref.tree.items() if e.kind == FILE)  # in memory
    img = load_oci(src, spool=spool)
    assert _snapshot(img.tree) == _snapshot(ref.tree)
    assert (img.cmd, img.env, img.layers) == (ref.cmd, ref.env, ref.layers)
    streamed = _ramdisk(img.tree, img.cmd, img.env)
    model = _ramdisk(ref.tree, ref.cmd, ref.env)
    assert hashlib.sha256(streamed).hexdigest() == hashlib.sha256(model).hexdigest()
    assert _pcr2(streamed) == _pcr2(model)
    return _pcr2(model)


def _outcome(fn: Callable[[], Any]) -> tuple[type[BaseException] | None, str]:
    try:
        fn()
    except (UnsafePath, MalformedArtifact) as e:
        return type(e), str(e)
    return None, ""


def _image(d: Path, kind: str, layers: list[list[Any]], compression: str | None = None,
           **kw: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if kind == "docker-save":
        return docker_save_tar(d / "img.tar", layers, compression=compression, **kw)
    (d / "layout").mkdir(exist_ok=True)
    return oci_layout(d / ("img.tar" if kind == "oci-tar" else "layout"), layers,
                      as_tar=kind == "oci-tar", compression=compression, **kw)


# --- the images of tests/test_reproducible_oci.py --------------------------------------------

KINDS = ["docker-save", "oci-dir", "oci-tar"]


@pytest.mark.parametrize("kind", KINDS)
def test_base_top_whiteouts_opaque_links(tmp_path: Path, kind: str) -> None:
    src = _image(tmp_path / "i", kind, [BASE, TOP], cmd=["/bin/app", "--x"], env=["A=1"])
    pcr2 = assert_same_import(src, tmp_path / "spool")
    # Not vacuous: the layers did what the fixture is about, and the image moves PCR2.
    tree = load_reference(src).tree
    assert "etc/old.conf" not in tree and "opt/a" not in tree and "usr/lib/libx.so" in tree
    assert pcr2 != assert_same_import(_image(tmp_path / "j", kind, [BASE]), tmp_path / "s2")


def test_entrypoint_precedes_cmd(tmp_path: Path) -> None:
    src = docker_save_tar(tmp_path / "i.tar", [BASE], entrypoint=["/bin/app"], cmd=["serve"])
    assert_same_import(src, tmp_path / "spool")


@pytest.mark.parametrize("kind", KINDS)
def test_absolute_symlink_and_write_through_it(tmp_path: Path, kind: str) -> None:
    layers = [[("etc", "dir", None), ("cfg", "symlink", "/etc")], [("cfg/app.conf", "file", b"k")]]
    assert_same_import(_image(tmp_path / "i", kind, layers), tmp_path / "spool")


@pytest.mark.parametrize(("kind", "compression"), COMPRESSED,
                         ids=[f"{k}-{c}" for k, c in COMPRESSED])
def test_compressed_layers(tmp_path: Path, kind: str, compression: str) -> None:
    big = [("big", "file", random.Random(1).randbytes(300_000))]  # spooled to a file
    plain = assert_same_import(_image(tmp_path / "p", "oci-dir", [BASE + big, TOP]),
                               tmp_path / "s1")
    packed = assert_same_import(_image(tmp_path / "c", kind, [BASE + big, TOP], compression),
                                tmp_path / "s2")
    assert packed == plain


def test_multi_platform_index(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [BASE, TOP])
    nest_in_platform_index(layout)
    assert_same_import(layout, tmp_path / "spool")


@pytest.mark.parametrize("members", list(TRAVERSAL.values()), ids=list(TRAVERSAL))
@pytest.mark.parametrize("kind", KINDS)
def test_traversal_refused_by_both(tmp_path: Path, kind: str, members: list[Any]) -> None:
    src = _image(tmp_path / "i", kind, [BASE, members])
    ref = _outcome(lambda: load_reference(src))
    streamed = _outcome(lambda: load_oci(src, spool=tmp_path / "spool"))
    assert ref[0] is UnsafePath and streamed == ref


def test_escape_through_an_earlier_layers_symlink_refused_by_both(tmp_path: Path) -> None:
    src = docker_save_tar(tmp_path / "i.tar", [[("x", "symlink", "../..")], [("x/y", "file", b"")]])
    ref = _outcome(lambda: load_reference(src))
    assert ref[0] is UnsafePath
    assert _outcome(lambda: load_oci(src, spool=tmp_path / "spool")) == ref


# --- the images of tests/test_reproducible_build.py (same layers as its SOURCES test) -----------

def _build_layers() -> list[list[Any]]:
    rng = random.Random(7)
    top = [("etc", "dir", None), ("etc/.wh.motd", "file", b""), ("opt/.wh..wh..opq", "file", b""),
           ("opt/new", "file", rng.randbytes(300_000)), ("bin/app2", "hardlink", "bin/app"),
           ("lib", "symlink", "usr/lib"), ("usr/lib/big", "file", rng.randbytes(2_000_000))]
    base = [("bin", "dir", None), ("bin/app", "file", b"#!/bin/sh\necho hi\n"),
            ("etc", "dir", None), ("etc/motd", "file", b"hello"), ("opt", "dir", None),
            ("opt/old", "file", b"x" * 100_000), ("usr/lib", "dir", None)]
    return [base, top]


BUILD_SOURCES = [("oci-dir", None), ("oci-tar", None), ("docker-save", None), ("oci-dir", "gzip"),
                 ("docker-save", "zstd")]


def test_build_test_images(tmp_path: Path) -> None:
    pcrs = {assert_same_import(_image(tmp_path / f"{k}-{c}", k, _build_layers(), c,
                                      cmd=["/bin/app"]), tmp_path / f"spool-{k}-{c}")
            for k, c in BUILD_SOURCES}
    assert len(pcrs) == 1
    one = [[("bin", "dir", None), ("bin/app", "file", b"#!/bin/sh\necho hi\n")]]
    assert_same_import(docker_save_tar(tmp_path / "one.tar", one, cmd=["/bin/app", "x"],
                                       env=["K=v"]), tmp_path / "spool-one")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "compression"), [("oci-dir", None), ("docker-save", "gzip")])
def test_built_eif_has_the_references_pcr2(tmp_path: Path, kind: str,
                                           compression: str | None) -> None:
    """The whole build (layers read in place and checked by the Verifier, or streamed and
    spooled; the cpio written from the tree) measures the PCR2 the in-memory model's cpio gives."""
    from rich.console import Console

    from reproducible.build import BuildOptions, run_build

    src = _image(tmp_path / "i", kind, _build_layers(), compression, cmd=["/bin/app"])
    ref = load_reference(src)
    built = run_build(BuildOptions(out=tmp_path / "out", from_oci=src),
                      Console(file=io.StringIO(), width=120))
    assert built.pcrs[2] == _pcr2(_ramdisk(ref.tree, ref.cmd, ref.env))


# --- layers the repo's fixtures do not make: other tar formats and compressions ---------------

def _tar(members: list[tuple[str, str, Any, int]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload, mode in members:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode = 0, mode
            if kind == "file":
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                       "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                       "chardev": tarfile.CHRTYPE}[kind]
            ti.linkname = payload if kind in ("symlink", "hardlink") else ""
            tar.addfile(ti)
    return buf.getvalue()


def _pack(data: bytes, how: str) -> bytes:
    """A layer blob: `how` in none, gzip, zstd, bzip2, xz, and split-* (the same compression in
    two concatenated members/streams/frames, as parallel compressors and eStargz write)."""
    if how.startswith("split-"):
        cut = len(data) // 2 + 1
        return _pack(data[:cut], how[6:]) + _pack(data[cut:], how[6:])
    if how in ("gzip", "zstd"):
        return compress(data, how)
    return {"none": lambda b: b, "bzip2": bz2.compress, "xz": lzma.compress,
            "bzip2-1": lambda b: bz2.compress(b, 1)}[how](data)


def _write_image(d: Path, kind: str, blobs: list[bytes], cmd: list[str], env: list[str]) -> Path:
    """An image of raw layer blobs: oci-dir, oci-tar, oci-tar-gz (the archive gzipped) or
    docker-save."""
    d.mkdir(parents=True, exist_ok=True)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": cmd, "Env": env}}, sort_keys=True).encode()
    files: list[tuple[str, bytes]] = []
    if kind == "docker-save":
        names = [f"{hashlib.sha256(b).hexdigest()}/layer.tar" for b in blobs]
        files = [("c.json", config), *zip(names, blobs, strict=True),
                 ("manifest.json", json.dumps([{"Config": "c.json", "Layers": names}]).encode())]
    else:
        def blob(data: bytes) -> dict[str, Any]:
            files.append((f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data))
            return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data),
                    "mediaType": "application/octet-stream"}
        manifest = json.dumps({"schemaVersion": 2, "config": blob(config),
                               "layers": [blob(b) for b in blobs]}).encode()
        files.append(("index.json", json.dumps({"schemaVersion": 2,
                                                "manifests": [blob(manifest)]}).encode()))
    if kind == "oci-dir":
        for name, data in files:
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        return d
    path = d / "img.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tar.addfile(ti, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0) if kind == "oci-tar-gz"
                     else buf.getvalue())
    return path


PACKINGS = ["none", "gzip", "zstd", "bzip2", "bzip2-1", "xz", "split-gzip", "split-zstd",
            "split-bzip2", "split-xz"]


@pytest.mark.parametrize("how", PACKINGS)
def test_every_compression_including_concatenated_streams(tmp_path: Path, how: str) -> None:
    rng = random.Random(3)
    files = [(f"d/f{i:03d}", "file", rng.randbytes(rng.choice([0, 9, 700, 5000])), 0o644)
             for i in range(60)]
    blob = _pack(_tar([("d", "dir", None, 0o755), *files], tarfile.PAX_FORMAT), how)
    src = _write_image(tmp_path / "i", "oci-dir", [blob], ["/x"], [])
    assert_same_import(src, tmp_path / "spool")
    assert len(load_reference(src).tree) == 61  # every member, not only the first stream's


@pytest.mark.parametrize("how", ["gzip", "bzip2", "xz", "zstd"])
@pytest.mark.parametrize("kind", ["oci-dir", "docker-save"])
def test_second_stream_starting_at_a_member_is_not_dropped(tmp_path: Path, how: str,
                                                           kind: str) -> None:
    """The failing case found by this module: a gzip (bzip2, xz) layer in two members split
    between tar entries imported only the first member's files, silently, digest and all."""
    raw = _tar([(f"f{i}", "file", bytes([i]) * 1000, 0o644) for i in range(4)],
               tarfile.GNU_FORMAT)
    cut = 2 * (512 + 1024)  # after two entries: header block + data padded to 1024
    blob = _pack(raw[:cut], how) + _pack(raw[cut:], how)
    src = _write_image(tmp_path / "i", kind, [blob], ["/f0"], [])
    img = load_oci(src, spool=tmp_path / "spool")
    assert [p for p, _ in img.tree.items()] == ["f0", "f1", "f2", "f3"]
    assert img.tree.get("f3").read() == bytes([3]) * 1000
    assert_same_import(src, tmp_path / "spool2")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT],
                         ids=["gnu", "pax", "ustar"])
@pytest.mark.parametrize("kind", ["oci-dir", "oci-tar", "oci-tar-gz", "docker-save"])
def test_tar_formats_long_names_and_special_files(tmp_path: Path, fmt: int, kind: str) -> None:
    deep = "/".join(["segment-of-a-long-path"] * 5) if fmt != tarfile.USTAR_FORMAT else "deep"
    long = "n" * (150 if fmt != tarfile.USTAR_FORMAT else 90)
    uni = "caf\u00e9-\u00fc" if fmt != tarfile.USTAR_FORMAT else "plain"
    members = [
        ("./", "dir", None, 0o755), (f"./{deep}/", "dir", None, 0o700),
        (f"{deep}/{long}", "file", b"L" * 1000, 0o4755), (uni, "file", b"u", 0o600),
        ("dev", "dir", None, 0o755), ("dev/null", "chardev", None, 0o666),
        ("fifo", "fifo", None, 0o644), ("empty", "file", b"", 0o444),
        (f"hl-{long}", "hardlink", f"./{deep}/{long}", 0o644),
        ("sl", "symlink", f"{deep}/{long}", 0o777),
    ]
    blob = _tar(members, fmt)
    src = _write_image(tmp_path / "i", kind, [blob], ["/sl", "a b"], ["X=1"])
    assert_same_import(src, tmp_path / "spool")


# --- seeded random layer stacks ---------------------------------------------------------------

# Separate pools so a path is never meant as both a file and a directory.
FILE_NAMES = ["a", "b", "c.so", ".hidden", "\u00e9t\u00e9", "f" * 110]
DIR_NAMES = ["sub", "..dots", "sp ace", "d" * 110]
LINK_NAMES = ["lnk", "abs"]
SIZES = [0, 1, 100, 511, 512, 513, 4096, 70_000, 150_000]


def _random_stack(rng: random.Random) -> list[list[tuple[str, str, Any, int]]]:
    """Layers of files, dirs, symlinks (relative and absolute, to files or to dirs that later
    members write through), whiteouts, opaque dirs and hard links over each other. A model of
    what exists steers the choices towards valid stacks; when one is unsafe anyway (say, a hard
    link to a file this layer whites out), both importers must refuse it alike."""
    real = [""]  # directories (not through symlinks)
    through = []  # symlinks to directories: later members write through them
    files: list[str] = []

    def drop(victim: str, keep_self: bool) -> None:
        for pool in (real, through, files):
            pool[:] = [p for p in pool if not (p.startswith(victim + "/")
                                               or (p == victim and not keep_self))]

    stack = []
    for _ in range(rng.randint(2, 5)):
        layer: list[tuple[str, str, Any, int]] = []
        for _ in range(rng.randint(3, 14)):
            op = rng.choices(["file", "dir", "symlink", "whiteout", "opaque", "hardlink"],
                             [6, 3, 2, 2, 1, 2])[0]
            parent = rng.choice(real + through) if op in ("file", "hardlink") else rng.choice(real)
            pool = {"dir": DIR_NAMES, "symlink": LINK_NAMES}.get(op, FILE_NAMES)
            path = posixpath.join(parent, rng.choice(pool))
            name = rng.choice([path, "./" + path])
            if op == "file":
                size = rng.choice(SIZES)  # distinct contents, cheap to bzip2 and xz
                data = (rng.randbytes(997) * (size // 997 + 1))[:size]
                layer.append((name, "file", data,
                              rng.choice([0o644, 0o755, 0o600, 0o4755, 0o444])))
                files.append(path)
            elif op == "dir":
                layer.append((name + rng.choice(["", "/"]), "dir", None,
                              rng.choice([0o755, 0o700, 0o1777])))
                real.append(path)
            elif op == "symlink" and len(real) + len(files) > 1:
                target = rng.choice(real[1:] + files)
                rel = posixpath.relpath(target, posixpath.dirname(path) or ".")
                layer.append((name, "symlink", rng.choice([rel, "/" + target]), 0o777))
                drop(path, keep_self=False)  # a symlink replaces what was there
                if target in real:
                    through.append(path)
            elif op == "whiteout" and len(real) + len(files) > 1:
                victim = rng.choice(real[1:] + files)
                layer.append((posixpath.join(posixpath.dirname(victim),
                                             ".wh." + posixpath.basename(victim)), "file", b"",
                              0o644))
                drop(victim, keep_self=False)
            elif op == "opaque" and len(real) > 1:
                victim = rng.choice(real[1:])
                layer.append((victim + "/.wh..wh..opq", "file", b"", 0o644))
                drop(victim, keep_self=True)
            elif op == "hardlink" and files:
                layer.append((name, "hardlink", rng.choice(files), 0o644))
                files.append(path)
        if rng.random() < 0.3:
            rng.shuffle(layer)  # whiteouts after the entries they precede in effect
        stack.append(layer)
    return stack


SEEDS = range(40)


@pytest.mark.parametrize("small_files", ["memory", "spooled"])
def test_random_layer_stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             small_files: str) -> None:
    if small_files == "spooled":  # every compressed layer's file goes through a spool file
        monkeypatch.setattr(layers_mod, "SMALL_BUDGET", 0)
    imported = refused = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        stack = _random_stack(rng)
        kind = rng.choice(["oci-dir", "oci-tar", "oci-tar-gz", "docker-save"])
        blobs = [_pack(_tar(layer, rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])),
                       rng.choice(PACKINGS)) for layer in stack]
        src = _write_image(tmp_path / str(seed), kind, blobs, ["/a", str(seed)], [f"S={seed}"])
        ref = _outcome(lambda src=src: load_reference(src))
        if ref[0] is None:
            assert_same_import(src, tmp_path / f"spool-{seed}")
            imported += 1
        else:
            assert _outcome(lambda src=src, seed=seed: load_oci(
                src, spool=tmp_path / f"spool-{seed}")) == ref, seed
            refused += 1
    assert imported >= len(SEEDS) // 2, (imported, refused)  # the stacks are mostly valid


def test_reference_is_independent_of_the_streaming_code() -> None:
    """The model may share `Tree` and the errors, never the streaming readers or appliers."""
    import ast

    tree = ast.parse(Path(__file__).with_name("reference_import.py").read_text())
    used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in used if m and m.split(".")[0] in ("reproducible", "verify")}
    assert ours == {"reproducible.errors", "reproducible.tree"}
