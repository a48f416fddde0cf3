"""Inputs resolved by sha256 from several sources: cache, an exported inputs directory, the
registries, and snapshot-style archives served over loopback HTTP.

The local Debian repository offers a newer `sentinel-test` than the lock pins (the pinned version
left the archive, as Debian's main archive does weeks after an update); the pinned bytes are still
found by their sha256 in the next source, or the error names the input and its sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_support import (
    make_deb,
    make_repo,
    make_wheel,
    oci_inputs_layout,
    serve_archive,
    use_local_registries,
    write_flat_repo,
)

from reproducible.cache import Cache
from reproducible.errors import (
    FetchError,
    InputUnavailable,
    LockError,
    OfflineMiss,
    VersionVanished,
)
from reproducible.fetch import fetch_all
from reproducible.inputs import export_inputs
from reproducible.lock import LOCK_PATH, DebPin, WheelPin, load_lock
from reproducible.sources import URLS_ENV, UrlTemplate, url_templates

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="needs apt and dpkg"
)


def _old_deb(dest: Path) -> tuple[bytes, str]:
    """sentinel-test 0.9: the version the lock pins, no longer in the repository."""
    data = make_deb(dest, "sentinel-test", "0.9").read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(directory served, base URL) of an HTTP server on loopback."""
    with serve_archive(tmp_path / "archive") as a:
        yield a.root, a.base


@pytest.fixture
def moved_on(tmp_path: Path, monkeypatch):
    """A lock pinning sentinel-test 0.9 while the repository only offers 1.0."""
    make_repo(tmp_path)  # 1.0
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel_name, wheel_sha = make_wheel(wheels)
    use_local_registries(monkeypatch, tmp_path / "repo", wheels)
    monkeypatch.setenv(URLS_ENV, "")  # no archive from the user's own configuration
    old, old_sha = _old_deb(tmp_path)
    lock = load_lock().with_pins([DebPin("sentinel-test", "0.9", old_sha, "runtime")],
                                 [WheelPin("sentineltestpkg", "1.0", wheel_name, wheel_sha)])
    return lock, Cache(tmp_path / "cache"), old, old_sha


def test_vanished_version_comes_from_the_archive_by_sha256(moved_on, archive) -> None:
    lock, cache, old, old_sha = moved_on
    root, base = archive
    (root / "by-hash").mkdir()
    (root / "by-hash" / old_sha).write_bytes(old)
    got = fetch_all(lock, cache, archives=[UrlTemplate(base + "/by-hash/{sha256}")])
    assert got.debs["sentinel-test"].read_bytes() == old
    assert got.wheels[lock.wheels[0].filename].is_file()  # the registry still had the wheel
    # Now cached: offline works without any source.
    assert fetch_all(lock, cache, offline=True, archives=[]) == got


def test_archives_are_tried_in_order(moved_on, archive) -> None:
    lock, cache, old, old_sha = moved_on
    root, base = archive
    (root / "second").mkdir()
    (root / "second" / "sentinel-test_0.9_any.deb").write_bytes(old)
    got = fetch_all(lock, cache, archives=[UrlTemplate(base + "/first/{sha256}"),
                                           UrlTemplate(base + "/second/{filename}")])
    assert got.debs["sentinel-test"].read_bytes() == old


def test_no_source_names_the_input_its_sha256_and_every_answer(moved_on, archive) -> None:
    lock, cache, _, old_sha = moved_on
    _, base = archive
    with pytest.raises(InputUnavailable) as e:
        fetch_all(lock, cache, archives=[UrlTemplate(base + "/{sha256}")])
    msg = str(e.value)
    assert f"deb sentinel-test=0.9 (sha256 {old_sha})" in msg
    assert "the Debian mirror" in msg and "HTTP 404" in msg and "cache" in msg
    assert "sentineltestpkg" not in msg  # only what is missing is named


def test_archive_bytes_of_another_version_are_refused(moved_on, archive) -> None:
    lock, cache, _, old_sha = moved_on
    root, base = archive
    newer = (root.parent / "repo" / "sentinel-test_1.0_all.deb").read_bytes()
    (root / old_sha).write_bytes(newer)  # the archive "replaced" the pinned version
    with pytest.raises(InputUnavailable, match="sha256 mismatch") as e:
        fetch_all(lock, cache, archives=[UrlTemplate(base + "/{sha256}")])
    assert old_sha in str(e.value)
    assert not cache.blob_path(old_sha).exists()


def test_without_other_sources_the_registry_error_is_kept(moved_on) -> None:
    lock, cache, _, _ = moved_on
    with pytest.raises(VersionVanished, match=r"sentinel-test=0\.9"):
        fetch_all(lock, cache, archives=[])


def test_exported_inputs_serve_an_offline_build_with_an_empty_cache(moved_on, archive,
                                                                    tmp_path: Path) -> None:
    lock, cache, old, old_sha = moved_on
    root, base = archive
    (root / old_sha).write_bytes(old)
    lock_path = tmp_path / "lock.toml"
    lock_path.write_bytes(LOCK_PATH.read_bytes())
    fetch_all(lock, cache, archives=[UrlTemplate(base + "/{sha256}")])
    done = export_inputs(lock, lock_path, cache, tmp_path / "inputs", offline=True)
    doc = json.loads(done.manifest.read_text())
    assert {(e["kind"], e["name"], e["sha256"]) for e in doc["inputs"]} == {
        ("deb", "sentinel-test", old_sha), ("wheel", "sentineltestpkg", lock.wheels[0].sha256)}
    for e in doc["inputs"]:
        assert hashlib.sha256((tmp_path / "inputs" / e["filename"]).read_bytes()).hexdigest() == e["sha256"]
    fresh = Cache(tmp_path / "fresh")
    got = fetch_all(lock, fresh, offline=True, inputs=tmp_path / "inputs")
    assert got.debs["sentinel-test"].read_bytes() == old
    empty = tmp_path / "empty-inputs"
    empty.mkdir()
    (empty / "manifest.json").write_text('{"inputs": []}')
    with pytest.raises(OfflineMiss, match="or --inputs"):
        fetch_all(lock, Cache(tmp_path / "other"), offline=True, inputs=empty)


def test_inputs_dir_without_manifest_is_named(moved_on, tmp_path: Path) -> None:
    lock, cache, _, _ = moved_on
    (tmp_path / "nomanifest").mkdir()
    with pytest.raises(FetchError, match="no readable manifest.json"):
        fetch_all(lock, cache, offline=True, inputs=tmp_path / "nomanifest")


@pytest.mark.parametrize("template, match", [
    ("http://127.0.0.1/{nope}", "unknown placeholder"),
    ("http://127.0.0.1/fixed", "names no input"),
    ("ftp://127.0.0.1/{sha256}", "not http"),
])
def test_bad_url_templates_are_refused(monkeypatch, template: str, match: str) -> None:
    monkeypatch.setenv(URLS_ENV, template)
    with pytest.raises(LockError, match=match):
        url_templates()


def test_url_templates_from_the_user_config(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(URLS_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "sentinel").mkdir()
    (tmp_path / "sentinel" / "inputs.toml").write_text('urls = ["http://127.0.0.1:1/{sha256}"]\n')
    assert [t.template for t in url_templates()] == ["http://127.0.0.1:1/{sha256}"]


# --- an OCI artifact of inputs, and where a release's inputs are ---------------------------------


def test_oci_layout_of_inputs_serves_an_offline_build(moved_on, tmp_path: Path) -> None:
    lock, _, old, old_sha = moved_on
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "sentinel-test_0.9_any.deb").write_bytes(old)
    wheel = tmp_path / "wheels" / lock.wheels[0].filename
    layout = oci_inputs_layout(tmp_path / "artifact",
                               [tmp_path / "files" / "sentinel-test_0.9_any.deb", wheel])
    got = fetch_all(lock, Cache(tmp_path / "fresh"), offline=True, inputs=layout)
    assert got.debs["sentinel-test"].read_bytes() == old
    assert got.wheels[lock.wheels[0].filename].read_bytes() == wheel.read_bytes()


def test_oci_layout_blob_that_is_not_its_digest_is_refused(moved_on, tmp_path: Path) -> None:
    lock, _, old, old_sha = moved_on
    (tmp_path / "f.deb").write_bytes(old)
    layout = oci_inputs_layout(tmp_path / "artifact",
                               [tmp_path / "f.deb", tmp_path / "wheels" / lock.wheels[0].filename])
    (layout / "blobs/sha256" / old_sha).write_bytes(old[:-1] + b"\0")  # tampered in place
    fresh = Cache(tmp_path / "fresh")
    with pytest.raises(OfflineMiss, match=r"deb sentinel-test=0\.9"):
        fetch_all(lock, fresh, offline=True, inputs=layout)
    assert not fresh.blob_path(old_sha).exists()


def test_oci_layout_of_another_version_is_named(tmp_path: Path, moved_on) -> None:
    lock, cache, _, _ = moved_on
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(FetchError, match="OCI layout version '2.0.0'"):
        fetch_all(lock, cache, offline=True, inputs=tmp_path / "bad")


def test_inputs_location_is_checked_and_recorded(moved_on, tmp_path: Path) -> None:
    from reproducible.errors import BuildError
    from reproducible.provenance import check_inputs_location, provenance_statement
    from verify.measurements import PublishedMeasurements

    lock, cache, old, _ = moved_on
    (tmp_path / "f.deb").write_bytes(old)
    layout = oci_inputs_layout(tmp_path / "artifact", [tmp_path / "f.deb"])
    for ok in ("https://releases.example.invalid/0.3.0/inputs/", "oci://registry.invalid/x:1",
               str(layout)):
        assert check_inputs_location(ok) == ok
    for bad, match in (("", "empty"), ("a b", "whitespace"), (str(tmp_path / "nowhere"),
                                                               "not an inputs directory")):
        with pytest.raises(BuildError, match=match):
            check_inputs_location(bad)
    sentinel = {"version": "9.9.9", "mode": "development", "source_date_epoch": 1,
                "eif_sha256": "ab" * 32, "inputs": []}
    m = PublishedMeasurements({0: bytes(48)}, "SHA384", sentinel, "m.json")
    with_loc = provenance_statement(m, eif_name="sentinel.eif", builder_version="9.9.9",
                                    source_commit=None, inputs_location="inputs/")
    params = with_loc["predicate"]["buildDefinition"]["externalParameters"]
    assert params == {"version": "9.9.9", "mode": "development", "inputsLocation": "inputs/"}
    without = provenance_statement(m, eif_name="sentinel.eif", builder_version="9.9.9",
                                   source_commit=None)
    assert "inputsLocation" not in without["predicate"]["buildDefinition"]["externalParameters"]


def test_cli_release_refuses_a_bad_inputs_location(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "reproducible", "release", "--build",
                          str(tmp_path), "--inputs-location", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 2 and "--inputs-location" in res.stderr
    assert "Traceback" not in res.stderr


# --- a whole image from the second source -----------------------------------------------------


@pytest.mark.slow
def test_full_image_from_a_loopback_archive_with_an_empty_cache(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Every pinned .deb has moved on in the mirror (a newer version of each, and nothing else)
    and the package index has no wheel at all: with an empty cache, the build finds every input
    by sha256 in the archive on loopback and gives the same image as a build from the cache."""
    import io

    from rich.console import Console

    from reproducible.build import BuildOptions, run_build

    lock = load_lock()
    user = Cache()
    pins = [*lock.debs, *lock.wheels]
    have = {p.sha256: user.get(p.label, p.sha256) for p in pins}
    if any(v is None for v in have.values()):
        pytest.skip("the pinned inputs are not in the cache (nox -s build-eif fetches them)")
    repo = tmp_path / "repo"
    repo.mkdir()
    write_flat_repo(repo, [make_deb(repo, d.name, d.version + "+newer1") for d in lock.debs])
    (tmp_path / "no-wheels").mkdir()
    use_local_registries(monkeypatch, repo, tmp_path / "no-wheels")
    with serve_archive(tmp_path / "archive") as archive:
        for sha, path in have.items():
            assert path is not None
            shutil.copyfile(path, archive.root / sha)
        monkeypatch.setenv(URLS_ENV, archive.base + "/{sha256}")
        console = Console(file=io.StringIO(), width=200)
        fresh = run_build(BuildOptions(out=tmp_path / "fresh", cache_root=tmp_path / "cache"),
                          console)
    log = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"archive {archive.base}/{{sha256}} ({len(pins)} inputs)" in log  # all from there
    monkeypatch.delenv(URLS_ENV)
    cached = run_build(BuildOptions(out=tmp_path / "cached", offline=True),
                       Console(file=io.StringIO()))
    assert fresh.pcrs == cached.pcrs and fresh.eif_sha256 == cached.eif_sha256
    for sha in have:
        assert (tmp_path / "cache" / "sha256" / sha[:2] / sha).is_file()
