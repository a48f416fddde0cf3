"""`inputs export --oci`: the pinned inputs as one OCI artifact in an image layout (or an
oci-archive), read back by `--inputs` with an empty cache, checked here by a second reader of our
own (index.json -> manifest -> every blob's digest and size), and recorded in the release
provenance by its manifest digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from registry_support import make_deb, make_wheel

from reproducible.cache import Cache
from reproducible.errors import BuildError, FetchError, OfflineMiss
from reproducible.fetch import fetch_all
from reproducible.inputs import (
    ARTIFACT_TYPE,
    export_inputs,
    export_oci,
    read_inputs_manifest,
)
from reproducible.lock import DebPin, Lock, WheelPin, dump_lock, load_lock
from reproducible.sources import export_name

ROOT = Path(__file__).resolve().parents[1]
TITLE = "org.opencontainers.image.title"
REF = "org.opencontainers.image.ref.name"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


@pytest.fixture
def small(tmp_path: Path) -> tuple[Lock, Path, Cache]:
    """A lock of one deb (with an epoch, so its exported name is escaped) and one wheel, both
    in a cache of their own; the lock written to a file as `inputs export` reads it."""
    src = tmp_path / "src"
    src.mkdir()
    deb = make_deb(src, "sentinel-test", "1:0.9", files={"usr/share/t.txt": "pinned"})
    wheel_name, wheel_sha = make_wheel(src)
    deb_sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    lock = load_lock().with_pins([DebPin("sentinel-test", "1:0.9", deb_sha, "runtime")],
                                 [WheelPin("sentineltestpkg", "1.0", wheel_name, wheel_sha)])
    cache = Cache(tmp_path / "cache")
    cache.put("deb", deb_sha, deb)
    cache.put("wheel", wheel_sha, src / wheel_name)
    lock_path = tmp_path / "lock.toml"
    lock_path.write_text(dump_lock(lock), encoding="utf-8")
    return lock, lock_path, cache


def read_layout(root: Path) -> dict[str, Any]:
    """An independent reader: index.json -> the manifest -> every descriptor's blob, each checked
    for size and sha256. Returns the manifest, its digest and the layers' titles by digest."""
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"

    def blob(d: dict[str, Any]) -> bytes:
        algo, hexdigest = d["digest"].split(":")
        assert algo == "sha256"
        data = (root / "blobs" / "sha256" / hexdigest).read_bytes()
        assert len(data) == d["size"], d
        assert hashlib.sha256(data).hexdigest() == hexdigest, d
        return data

    [entry] = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["artifactType"] == ARTIFACT_TYPE
    manifest = json.loads(blob(entry))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == entry["mediaType"]
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json",
                                  "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
                                  "size": 2}
    assert blob(manifest["config"]) == b"{}"
    layers = {}
    for d in manifest["layers"]:
        layers[d["annotations"][TITLE]] = (d, blob(d))
    referenced = {entry["digest"], manifest["config"]["digest"],
                  *(d["digest"] for d, _ in layers.values())}
    on_disk = {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}
    assert on_disk == referenced  # no stray or missing blob
    return {"entry": entry, "manifest": manifest, "layers": layers}


def test_layout_holds_every_input_as_a_layer(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    done = export_oci(lock, lock_path, cache, tmp_path / "oci", ref_name="9.9.9", offline=True)
    got = read_layout(tmp_path / "oci")
    assert got["entry"]["annotations"] == {REF: "9.9.9"}
    assert got["entry"]["digest"] == f"sha256:{done.manifest_sha256}"
    deb, wheel = lock.debs[0], lock.wheels[0]
    assert export_name(deb) == "sentinel-test_1%3a0.9_any.deb"
    layers = got["layers"]
    assert set(layers) == {export_name(deb), wheel.filename, "manifest.json"}
    d, data = layers[export_name(deb)]
    assert d["mediaType"] == "application/vnd.debian.binary-package"
    assert hashlib.sha256(data).hexdigest() == deb.sha256
    assert layers[wheel.filename][0]["digest"] == f"sha256:{wheel.sha256}"
    # The directory format's manifest, as a layer: the same document `inputs export` writes.
    doc = json.loads(layers["manifest.json"][1])
    assert {(e["kind"], e["filename"], e["sha256"]) for e in doc["inputs"]} == {
        ("deb", export_name(deb), deb.sha256), ("wheel", wheel.filename, wheel.sha256)}
    plain = export_inputs(lock, lock_path, cache, tmp_path / "plain", offline=True)
    assert layers["manifest.json"][1] == plain.manifest.read_bytes()
    assert done.count == 2 and done.size == sum(e["size"] for e in doc["inputs"])


def test_same_lock_same_bytes(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    export_oci(lock, lock_path, cache, tmp_path / "a", ref_name="9.9.9", offline=True)
    other = Cache(tmp_path / "other-cache")  # another machine's cache, filled from the first
    fetch_all(lock, other, offline=True, inputs=tmp_path / "a")
    os.utime(lock_path, (1, 1))
    export_oci(lock, lock_path, other, tmp_path / "b", ref_name="9.9.9", offline=True)
    for rel in ("index.json", "oci-layout"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a/blobs/sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/blobs/sha256").iterdir())
    # Another ref changes index.json only, not the artifact's manifest.
    c = export_oci(lock, lock_path, cache, tmp_path / "c", ref_name="other", offline=True)
    assert (tmp_path / "c" / "index.json").read_bytes() != (tmp_path / "a" / "index.json").read_bytes()
    assert c.manifest_sha256 == read_layout(tmp_path / "a")["entry"]["digest"].split(":")[1]


def test_empty_cache_fetches_every_pin_from_the_layout(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    export_oci(lock, lock_path, cache, tmp_path / "oci", ref_name="9.9.9", offline=True)
    fresh = Cache(tmp_path / "fresh")
    got = fetch_all(lock, fresh, offline=True, inputs=tmp_path / "oci")
    assert hashlib.sha256(got.debs["sentinel-test"].read_bytes()).hexdigest() == lock.debs[0].sha256
    assert got.wheels[lock.wheels[0].filename] == fresh.blob_path(lock.wheels[0].sha256)


def test_corrupted_blob_is_named_with_its_sha256(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    export_oci(lock, lock_path, cache, tmp_path / "oci", ref_name="9.9.9", offline=True)
    sha = lock.debs[0].sha256
    blob = tmp_path / "oci/blobs/sha256" / sha
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only hashing can tell
    blob.write_bytes(bytes(data))
    fresh = Cache(tmp_path / "fresh")
    with pytest.raises(OfflineMiss) as e:
        fetch_all(lock, fresh, offline=True, inputs=tmp_path / "oci")
    msg = str(e.value)
    assert f"deb sentinel-test=1:0.9 (sha256 {sha})" in msg and "sha256 mismatch" in msg
    assert lock.wheels[0].filename not in msg  # the intact input was taken
    assert not fresh.blob_path(sha).exists()


def test_missing_blob_is_named_with_its_sha256(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    export_oci(lock, lock_path, cache, tmp_path / "oci", ref_name="9.9.9", offline=True)
    sha = lock.wheels[0].sha256
    (tmp_path / "oci/blobs/sha256" / sha).unlink()
    with pytest.raises(OfflineMiss) as e:
        fetch_all(lock, Cache(tmp_path / "fresh"), offline=True, inputs=tmp_path / "oci")
    msg = str(e.value)
    assert f"wheel {lock.wheels[0].filename} (sha256 {sha}): --inputs {tmp_path / 'oci'}: absent" in msg
    assert "sentinel-test" not in msg
    with pytest.raises(BuildError, match=rf"layer {lock.wheels[0].filename} \(sha256 {sha}\): "
                                         "blob missing"):
        read_inputs_manifest(tmp_path / "oci")


def test_oci_archive_is_deterministic_and_reads_back(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    a = export_oci(lock, lock_path, cache, tmp_path / "a.tar", ref_name="9.9.9", offline=True)
    export_oci(lock, lock_path, cache, tmp_path / "b" / "b.tar", ref_name="9.9.9", offline=True)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b" / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[:2] == ["blobs", "blobs/sha256"] and names[-2:] == ["index.json", "oci-layout"]
        assert names[2:-2] == sorted(names[2:-2])
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
            (lock.source_date_epoch, 0, 0, "", "")}
        for m in members:  # by hand: tarfile's extraction filters are not in every 3.11
            target = tmp_path / "x" / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                src = tar.extractfile(m)
                assert m.isfile() and src is not None and ".." not in m.name
                target.write_bytes(src.read())
    got = read_layout(tmp_path / "x")
    assert got["entry"]["digest"] == f"sha256:{a.manifest_sha256}"
    export_oci(lock, lock_path, cache, tmp_path / "dir", ref_name="9.9.9", offline=True)
    assert (tmp_path / "x/index.json").read_bytes() == (tmp_path / "dir/index.json").read_bytes()
    fetch_all(lock, Cache(tmp_path / "fresh"), offline=True, inputs=tmp_path / "x")
    # --inputs takes the archive itself, unpacking only the blobs a build still needs.
    got = fetch_all(lock, Cache(tmp_path / "fresh2"), offline=True, inputs=tmp_path / "a.tar")
    assert hashlib.sha256(got.debs["sentinel-test"].read_bytes()).hexdigest() == lock.debs[0].sha256
    assert not list((tmp_path / "fresh2" / "tmp").iterdir())  # the unpacked blobs are gone


def test_oci_archive_with_a_corrupted_blob_or_no_layout_is_named(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    export_oci(lock, lock_path, cache, tmp_path / "a.tar", ref_name="9.9.9", offline=True)
    sha = lock.debs[0].sha256
    raw = bytearray((tmp_path / "a.tar").read_bytes())
    with tarfile.open(tmp_path / "a.tar") as tar:
        m = tar.getmember(f"blobs/sha256/{sha}")
        raw[m.offset_data + m.size // 2] ^= 0xFF
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(OfflineMiss) as e:
        fetch_all(lock, Cache(tmp_path / "fresh"), offline=True, inputs=tmp_path / "bad.tar")
    assert f"(sha256 {sha})" in str(e.value) and "sha256 mismatch" in str(e.value)

    with tarfile.open(tmp_path / "evil.tar", "w") as tar:  # names outside the layout: ignored
        for name, data in (("../escape", b"x"), ("/abs", b"x"), ("oci-layout", b"{}")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    with pytest.raises(FetchError, match="unreadable oci-layout"):
        fetch_all(lock, Cache(tmp_path / "f2"), offline=True, inputs=tmp_path / "evil.tar")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "f2" / "escape").exists()

    (tmp_path / "dir.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(FetchError, match="not a readable oci-archive"):
        fetch_all(lock, Cache(tmp_path / "f3"), offline=True, inputs=tmp_path / "dir.tar")


def test_existing_layout_keeps_other_refs_and_other_dirs_are_refused(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    dest = tmp_path / "oci"
    export_oci(lock, lock_path, cache, dest, ref_name="1.0.0", offline=True)
    export_oci(lock, lock_path, cache, dest, ref_name="2.0.0", offline=True)
    export_oci(lock, lock_path, cache, dest, ref_name="2.0.0", offline=True)  # replaced, not added
    index = json.loads((dest / "index.json").read_text())
    assert [m["annotations"][REF] for m in index["manifests"]] == ["1.0.0", "2.0.0"]
    with pytest.raises(BuildError, match="2 manifests"):
        read_inputs_manifest(dest)
    assert read_inputs_manifest(dest, ref_name="2.0.0").sha256 == index["manifests"][1]["digest"][7:]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an OCI layout; refusing"):
        export_oci(lock, lock_path, cache, tmp_path / "junk", ref_name="1", offline=True)
    with pytest.raises(BuildError, match="whitespace"):
        export_oci(lock, lock_path, cache, tmp_path / "y", ref_name="a b", offline=True)


def test_read_inputs_manifest_of_both_formats(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    plain = export_inputs(lock, lock_path, cache, tmp_path / "plain", offline=True)
    m = read_inputs_manifest(tmp_path / "plain")
    assert m.sha256 == hashlib.sha256(plain.manifest.read_bytes()).hexdigest()
    assert set(m.inputs) == {lock.debs[0].sha256, lock.wheels[0].sha256}
    oci = export_oci(lock, lock_path, cache, tmp_path / "oci", ref_name="9.9.9", offline=True)
    o = read_inputs_manifest(tmp_path / "oci", ref_name="9.9.9")
    assert (o.sha256, o.inputs) == (oci.manifest_sha256, m.inputs)
    assert o.media_type == "application/vnd.oci.image.manifest.v1+json"
    # The release reader re-hashes the small blobs (inputs are re-hashed when a build takes them).
    layer = read_layout(tmp_path / "oci")["layers"]["manifest.json"][0]
    blob = tmp_path / "oci/blobs/sha256" / layer["digest"].split(":")[1]
    blob.write_bytes(blob.read_bytes().replace(b'"schema"', b'"scheme"'))
    with pytest.raises(BuildError, match=r"layer manifest.json \(sha256 [0-9a-f]{64}\): its "
                                         "bytes hash to something else"):
        read_inputs_manifest(tmp_path / "oci")
    (tmp_path / "neither").mkdir()
    with pytest.raises(BuildError, match="neither manifest.json"):
        read_inputs_manifest(tmp_path / "neither")


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "reproducible", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_cli_export_oci(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    # The CLI's cache is $XDG_CACHE_HOME/sentinel.
    (tmp_path / "xdg").mkdir()
    shutil.copytree(cache.root, tmp_path / "xdg" / "sentinel")
    res = _cli("inputs", "export", "--oci", "--offline", "--lock", str(lock_path), "--ref", "t1",
               str(tmp_path / "oci"), "--json", cache=tmp_path / "xdg")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    got = read_layout(tmp_path / "oci")
    assert out["manifest"] == got["entry"]["digest"] and out["ref"] == "t1" and out["count"] == 2
    res = _cli("inputs", "export", "--ref", "t1", "--offline", "--lock", str(lock_path),
               str(tmp_path / "d"), cache=tmp_path / "xdg")
    assert res.returncode == 2 and "needs --oci" in res.stderr and "Traceback" not in res.stderr


# --- release provenance ---------------------------------------------------------------------


def _measurements(build: Path, lock: Lock) -> tuple[Path, Path]:
    from test_release import build_output

    build_output(build)
    from verify.measurements import dump_measurements, load_measurements

    published = load_measurements((build / "measurements.json").read_bytes())
    assert published.sentinel is not None
    sentinel = dict(published.sentinel)
    sentinel["inputs"] = [
        *({"kind": "deb", "role": d.role, "name": d.name, "version": d.version,
           "sha256": d.sha256} for d in lock.debs),
        *({"kind": "wheel", "name": w.name, "version": w.version, "filename": w.filename,
           "sha256": w.sha256} for w in lock.wheels),
        {"kind": "source", "name": "enclave/", "sha256": "ef" * 32},
    ]
    from verify.measurements import measurements_document

    doc = measurements_document(dict(published.pcrs), sentinel=sentinel)
    dump_measurements(doc, build / "measurements.json")
    return build / "sentinel.eif", build / "measurements.json"


@pytest.mark.parametrize("fmt", ["dir", "oci"])
def test_release_records_the_inputs_manifest_digest(small, tmp_path: Path, fmt: str) -> None:
    from reproducible.release import ReleaseError, publish_release
    from reproducible.release_keys import LocalReleaseKey

    lock, lock_path, cache = small
    eif, measurements = _measurements(tmp_path / "build", lock)
    if fmt == "oci":
        digest = export_oci(lock, lock_path, cache, tmp_path / "inputs", ref_name="9.9.9",
                            offline=True).manifest_sha256
    else:
        digest = hashlib.sha256(export_inputs(lock, lock_path, cache, tmp_path / "inputs",
                                              offline=True).manifest.read_bytes()).hexdigest()
    key = LocalReleaseKey.generate(tmp_path / "key.pem")
    location = "https://releases.example.invalid/9.9.9/inputs"
    art = publish_release(eif=eif, measurements=measurements, out_dir=tmp_path / "m", signer=key,
                          builder_version="9.9.9", source_commit="a" * 40,
                          inputs_location=location, inputs=tmp_path / "inputs")
    definition = json.loads(art.provenance.read_text())["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["inputsLocation"] == location
    deps = definition["resolvedDependencies"]
    assert deps[0]["digest"] == {"gitCommit": "a" * 40}
    assert deps[1] == {"name": "sentinel inputs manifest", "digest": {"sha256": digest},
                       "uri": location, "mediaType": read_inputs_manifest(tmp_path / "inputs").media_type}
    # A reader holding only the provenance and the fetched inputs can check them.
    assert read_inputs_manifest(tmp_path / "inputs").sha256 == deps[1]["digest"]["sha256"]

    # Inputs of another lock are refused, naming what differs.
    other = lock.with_pins([], list(lock.wheels))
    export_inputs(other, lock_path, cache, tmp_path / "partial", offline=True)
    with pytest.raises(ReleaseError, match=rf"missing deb sentinel-test=1:0.9 \(sha256 "
                                           rf"{lock.debs[0].sha256}\)"):
        publish_release(eif=eif, measurements=measurements, out_dir=tmp_path / "m2", signer=key,
                        builder_version="9.9.9", source_commit="a" * 40,
                        inputs_location=location, inputs=tmp_path / "partial")


def test_inputs_manifest_entry_has_a_uri_only_for_a_url() -> None:
    from reproducible.inputs import InputsManifest
    from reproducible.provenance import inputs_manifest_dependency

    m = InputsManifest("ab" * 32, "application/json", {})
    assert "uri" not in inputs_manifest_dependency(m, "build/inputs")  # a path is no URI
    assert inputs_manifest_dependency(m, "oci://registry.invalid/x:1")["uri"].startswith("oci:")


def test_cli_release_digests_the_inputs_location_path(small, tmp_path: Path) -> None:
    lock, lock_path, cache = small
    eif, _ = _measurements(tmp_path / "build", lock)
    export_oci(lock, lock_path, cache, tmp_path / "inputs", ref_name="9.9.9", offline=True)
    res = _cli("release", "--build", str(tmp_path / "build"), "--out", str(tmp_path / "m"),
               "--generate-dev-key", "--inputs-location", str(tmp_path / "inputs"), "--json",
               cache=tmp_path / "xdg")
    assert res.returncode == 0, res.stderr
    prov = json.loads(Path(json.loads(res.stdout)["provenance"]).read_text())
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    entry = next(d for d in deps if d["name"] == "sentinel inputs manifest")
    assert entry["digest"]["sha256"] == read_inputs_manifest(tmp_path / "inputs").sha256
    assert "uri" not in entry


# --- a whole image from the OCI export ----------------------------------------------------------


@pytest.mark.slow
def test_full_image_from_an_oci_export_with_an_empty_cache(tmp_path: Path) -> None:
    """The real lock's inputs exported as an OCI layout from the user's cache; a build offline
    with an empty cache takes every pin from the layout and gives the image a cached build does."""
    import io

    from rich.console import Console

    from reproducible.build import BuildOptions, run_build
    from reproducible.lock import LOCK_PATH

    lock = load_lock()
    user = Cache()
    if any(user.get(p.label, p.sha256) is None for p in [*lock.debs, *lock.wheels]):
        pytest.skip("the pinned inputs are not in the cache (nox -s build-eif fetches them)")
    done = export_oci(lock, LOCK_PATH, user, tmp_path / "oci", ref_name="test", offline=True)
    got = read_layout(tmp_path / "oci")
    assert len(got["layers"]) == done.count + 1 == len(lock.debs) + len(lock.wheels) + 1
    console = Console(file=io.StringIO(), width=200)
    fresh = run_build(BuildOptions(out=tmp_path / "fresh", offline=True, inputs=tmp_path / "oci",
                                   cache_root=tmp_path / "cache"), console)
    for p in [*lock.debs, *lock.wheels]:
        assert (tmp_path / "cache" / "sha256" / p.sha256[:2] / p.sha256).is_file()
    cached = run_build(BuildOptions(out=tmp_path / "cached", offline=True),
                       Console(file=io.StringIO()))
    assert fresh.pcrs == cached.pcrs and fresh.eif_sha256 == cached.eif_sha256
