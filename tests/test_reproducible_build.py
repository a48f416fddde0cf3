"""End-to-end builds from the real pinned inputs (downloaded once into the cache, then warm).

Which PCR moves when which input changes is the point of the published measurements: the payload
moves PCR2 (and PCR0, which covers everything), the kernel command line or bootstrap moves PCR1 (and
PCR0), never PCR2.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oci_support import docker_save_tar
from rich.console import Console

from reproducible.build import BuildOptions, BuildResult, project_version, run_build
from reproducible.cpio import read_cpio
from reproducible.errors import MeasurementsDiffer
from reproducible.lock import LOCK_PATH

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


_SNAPSHOT: dict[str, Path] = {}


def _build(out: Path, **kw) -> BuildResult:
    # Every build of this module uses one snapshot of enclave/, so PCR2 comparisons hold even
    # while someone edits the working tree.
    if "enclave_dir" not in kw and "enclave" in _SNAPSHOT:
        kw["enclave_dir"] = _SNAPSHOT["enclave"]
        kw["policy"] = _SNAPSHOT["enclave"] / "policy.dev.toml"
    return run_build(BuildOptions(out=out, **kw), Console(file=io.StringIO(), width=120))


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> BuildResult:
    snap = tmp_path_factory.mktemp("payload") / "enclave"
    shutil.copytree(ROOT / "enclave", snap, ignore=shutil.ignore_patterns("__pycache__"))
    _SNAPSHOT["enclave"] = snap
    return _build(tmp_path_factory.mktemp("dev") / "build")


def test_same_inputs_same_bytes(dev: BuildResult, tmp_path: Path) -> None:
    again = _build(tmp_path / "again")
    assert again.eif_sha256 == dev.eif_sha256
    assert again.eif.read_bytes() == dev.eif.read_bytes()


def test_verify_pcr_accepts_the_build(dev: BuildResult) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", str(dev.eif), "--measurements", str(dev.measurements)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr


def test_measurements_describe_inputs_and_sections(dev: BuildResult) -> None:
    doc = json.loads(dev.measurements.read_text())
    s = doc["Sentinel"]
    assert s["mode"] == "development" and s["eif_sha256"] == dev.eif_sha256
    assert [x["type"] for x in s["sections"]] == ["kernel", "cmdline", "metadata", "ramdisk", "ramdisk"]
    kinds = {i["kind"] for i in s["inputs"]}
    assert kinds == {"deb", "wheel", "source"}
    assert all(len(i["sha256"]) == 64 for i in s["inputs"])
    assert set(doc["Measurements"]) == {"HashAlgorithm", "PCR0", "PCR1", "PCR2"}


def test_one_payload_byte_moves_pcr2_and_pcr0_only(dev: BuildResult, tmp_path: Path) -> None:
    enclave = tmp_path / "enclave"
    shutil.copytree(_SNAPSHOT["enclave"], enclave)
    init = enclave / "__init__.py"
    init.write_bytes(init.read_bytes() + b"#")
    changed = _build(tmp_path / "b", enclave_dir=enclave, policy=enclave / "policy.dev.toml")
    assert changed.pcrs[1] == dev.pcrs[1]
    assert changed.pcrs[2] != dev.pcrs[2]
    assert changed.pcrs[0] != dev.pcrs[0]


def test_kernel_cmdline_moves_pcr1_and_pcr0_not_pcr2(dev: BuildResult, tmp_path: Path) -> None:
    lock = tmp_path / "lock.toml"
    text = LOCK_PATH.read_text()
    lock.write_text(text.replace('cmdline = "console=ttyS0', 'cmdline = "quiet console=ttyS0', 1))
    changed = _build(tmp_path / "b", lock_path=lock)
    assert changed.pcrs[2] == dev.pcrs[2]
    assert changed.pcrs[1] != dev.pcrs[1]
    assert changed.pcrs[0] != dev.pcrs[0]


def _blobs(d: Path) -> Path:
    d.mkdir()
    (d / "bzImage").write_bytes(b"MZ" + bytes(4094))  # stands in for AWS's kernel
    (d / "cmdline").write_text("reboot=k panic=30 pci=off nomodules console=ttyS0\n")
    (d / "init").write_bytes(b"\x7fELF" + bytes(60))
    (d / "nsm.ko").write_bytes(b"\x7fELF" + bytes(30))
    return d


def test_production_mode_shares_pcr2(dev: BuildResult, tmp_path: Path) -> None:
    prod = _build(tmp_path / "b", blobs=_blobs(tmp_path / "blobs"))
    assert prod.mode == "development-aws-blobs"  # the payload flavour is --payload's
    assert prod.pcrs[2] == dev.pcrs[2]
    assert prod.pcrs[1] != dev.pcrs[1]
    members = read_cpio((tmp_path / "b" / "bootstrap.cpio").read_bytes())
    assert [m.name for m in members] == ["dev", "init", "nsm.ko"]  # nitro-cli's layout
    doc = json.loads((tmp_path / "b" / "measurements.json").read_text())
    assert doc["Sentinel"]["cmdline"] == "reboot=k panic=30 pci=off nomodules console=ttyS0"
    assert {i["name"] for i in doc["Sentinel"]["inputs"] if i["kind"] == "blob"} == {
        "bzImage", "cmdline", "init", "nsm.ko"}


def test_missing_blob_is_named(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path / "blobs")
    (blobs / "nsm.ko").unlink()
    res = subprocess.run([sys.executable, "-m", "reproducible", "build", "--out",
                          str(tmp_path / "o"), "--blobs", str(blobs)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "missing nsm.ko" in res.stderr


def test_check_names_each_differing_pcr(dev: BuildResult, tmp_path: Path) -> None:
    published = tmp_path / "m"
    published.mkdir()
    doc = json.loads(dev.measurements.read_text())
    doc["Measurements"]["PCR1"] = "00" * 48
    (published / f"{project_version()}.json").write_text(json.dumps(doc))
    with pytest.raises(MeasurementsDiffer, match="PCR1: expected 0000") as e:
        _build(tmp_path / "b", check=True, measurements_dir=published)
    assert "PCR2" not in str(e.value) and "PCR0" not in str(e.value)
    res = subprocess.run([sys.executable, "-m", "reproducible", "build", "--out",
                          str(tmp_path / "c"), "--check", "--measurements-dir", str(published)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "PCR1: expected" in res.stderr and "Traceback" not in res.stderr


def test_from_oci_payload(dev: BuildResult, tmp_path: Path) -> None:
    layers = [[("bin", "dir", None), ("bin/app", "file", b"#!/bin/sh\necho hi\n")]]
    src = docker_save_tar(tmp_path / "img.tar", layers, cmd=["/bin/app", "x"], env=["K=v"])
    built = _build(tmp_path / "b", from_oci=src, keep_cpio=True)
    assert built.pcrs[1] == dev.pcrs[1] and built.pcrs[2] != dev.pcrs[2]
    members = {m.name: m for m in read_cpio((tmp_path / "b" / "customer.cpio").read_bytes())}
    assert members["cmd"].data == b"/bin/app\nx\n" and members["env"].data == b"K=v\n"
    assert "rootfs/bin/app" in members
    for d in ("dev", "proc", "run", "sys", "tmp", "var"):  # what AWS's init mounts on
        assert members[f"rootfs/{d}"].mode & 0o170000 == 0o040000


SOURCES = [("oci-dir", None), ("oci-tar", None), ("docker-save", None), ("oci-dir", "gzip"),
           ("docker-save", "zstd")]


def test_every_source_and_compression_gives_the_same_pcrs(dev: BuildResult, tmp_path: Path) -> None:
    """One applier: uncompressed layers read in place (OCI layout, oci-archive, docker-archive)
    and compressed ones streamed and spooled (gzip, zstd) build the same EIF, byte for byte."""
    from oci_support import oci_layout

    top = [("etc", "dir", None), ("etc/.wh.motd", "file", b""), ("opt/.wh..wh..opq", "file", b""),
           ("opt/new", "file", os.urandom(300_000)), ("bin/app2", "hardlink", "bin/app"),
           ("lib", "symlink", "usr/lib"), ("usr/lib/big", "file", os.urandom(2_000_000))]
    base = [("bin", "dir", None), ("bin/app", "file", b"#!/bin/sh\necho hi\n"),
            ("etc", "dir", None), ("etc/motd", "file", b"hello"), ("opt", "dir", None),
            ("opt/old", "file", b"x" * 100_000), ("usr/lib", "dir", None)]
    built = {}
    for kind, compression in SOURCES:
        d = tmp_path / f"{kind}-{compression}"
        d.mkdir()
        if kind == "docker-save":
            src = docker_save_tar(d / "img.tar", [base, top], cmd=["/bin/app"],
                                  compression=compression)
        else:
            (d / "layout").mkdir()
            src = oci_layout(d / ("img.tar" if kind == "oci-tar" else "layout"), [base, top],
                             cmd=["/bin/app"], as_tar=kind == "oci-tar", compression=compression)
        built[kind, compression] = _build(d / "out", from_oci=src)
    first = built["oci-dir", None]
    for key, b in built.items():
        assert (b.pcrs, b.eif_sha256) == (first.pcrs, first.eif_sha256), key
    assert first.pcrs[2] != dev.pcrs[2] and first.pcrs[1] == dev.pcrs[1]
    # The output directory keeps no second copy of the image unless asked.
    out = tmp_path / "oci-dir-None" / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "bootstrap.cpio", "measurements.json", "sentinel.eif"]


def test_layer_digest_mismatch_fails_before_the_eif_is_written(dev: BuildResult,
                                                               tmp_path: Path) -> None:
    from oci_support import oci_layout

    from reproducible.errors import MalformedArtifact

    (tmp_path / "l").mkdir()
    layout = oci_layout(tmp_path / "l", [[("bin/app", "file", b"x" * 4096)]], cmd=["/bin/app"])
    blobs = layout / "blobs/sha256"
    layer = next(p for p in blobs.iterdir() if b"bin/app" in p.read_bytes()[:600])
    data = bytearray(layer.read_bytes())
    data[1000] ^= 1  # inside the file's bytes, which are read in place: the verifier catches it
    layer.write_bytes(bytes(data))
    with pytest.raises(MalformedArtifact, match="hashes to"):
        _build(tmp_path / "out", from_oci=layout)
    assert not (tmp_path / "out" / "sentinel.eif").exists()


def test_from_oci_traversal_writes_nothing_outside_the_build_dir(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = docker_save_tar(src_dir / "img.tar", [[("../../evil", "file", b"x")]])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = subprocess.run([sys.executable, "-m", "reproducible", "build", "--out",
                          str(tmp_path / "out"), "--from-oci", str(src)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "escapes with '..'" in res.stderr
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith(str(tmp_path / "out"))] == []
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("cpio") is None, reason="needs root + cpio")
def test_customer_rootfs_runs_the_enclave_runtime(dev: BuildResult, tmp_path: Path) -> None:
    with open(dev.eif.parent / "customer.cpio", "rb") as f:
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=tmp_path,
                       stdin=f, check=True)
    cmd = (tmp_path / "cmd").read_text().splitlines()
    assert cmd[:4] == ["/usr/bin/python3", "-m", "enclave", "serve"]
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    probe = ("import ssl, hashlib, cbor2, coincurve, cryptography.hazmat.primitives.asymmetric.ec,"
             " Crypto.Hash.keccak, enclave.keys, enclave.policy, enclave.server, boto3;"
             " boto3.client('kms', region_name='eu-west-1', endpoint_url='http://127.0.0.1:9',"
             " aws_access_key_id='k', aws_secret_access_key='s'); print('ok')")
    res = subprocess.run([shutil.which("chroot"), str(tmp_path / "rootfs"), cmd[0], "-c", probe],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    res = subprocess.run([shutil.which("chroot"), str(tmp_path / "rootfs"), *cmd[:4], "--help"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "--listen" in res.stdout, res.stderr


def test_no_host_identity_in_the_image(dev: BuildResult) -> None:
    import getpass
    import socket

    blob = dev.eif.read_bytes() + dev.measurements.read_bytes()
    for marker in (str(dev.eif.parent), str(Path.home()), socket.gethostname(), getpass.getuser()):
        if len(marker) >= 6:  # short names ("root") occur by chance in binaries
            assert marker.encode() not in blob, marker
    meta = json.loads(
        subprocess.run([sys.executable, "-m", "verify", "pcr", str(dev.eif), "--json"],
                       capture_output=True, text=True, cwd=ROOT).stdout or "{}"
    )
    assert meta["Metadata"]["BuildTime"] == "2026-01-01T00:00:00+00:00"  # the lock's epoch
    assert meta["Metadata"]["OperatingSystem"] == "Linux"
