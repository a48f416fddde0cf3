"""Fetching pinned inputs with the real clients (apt-get, pip) from local registries.

A flat Debian repository (built with dpkg-deb, indexed by hand) served as `file:` and a pip
find-links directory stand in for the archive and the index: same clients, same code path, no
network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from registry_support import make_repo, make_wheel, use_local_registries

from reproducible.cache import Cache
from reproducible.errors import ArtifactMismatch, OfflineMiss, VersionVanished
from reproducible.fetch import fetch_all
from reproducible.lock import DebPin, WheelPin, load_lock

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="needs apt and dpkg"
)


@pytest.fixture
def registries(tmp_path: Path, monkeypatch):
    deb_sha = make_repo(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel_name, wheel_sha = make_wheel(wheels)
    use_local_registries(monkeypatch, tmp_path / "repo", wheels)
    base = load_lock()
    lock = base.with_pins(
        [DebPin("sentinel-test", "1.0", deb_sha, "runtime")],
        [WheelPin("sentineltestpkg", "1.0", wheel_name, wheel_sha)],
    )
    return lock, Cache(tmp_path / "cache")


def test_fetch_then_offline_from_cache(registries) -> None:
    lock, cache = registries
    got = fetch_all(lock, cache)
    assert got.debs["sentinel-test"].read_bytes()[:8] == b"!<arch>\n"
    assert got.debs["sentinel-test"].parent.parent == cache.root / "sha256"
    again = fetch_all(lock, cache, offline=True)
    assert again == got


def test_tampered_cached_artifact_is_refused_by_name(registries) -> None:
    lock, cache = registries
    got = fetch_all(lock, cache)
    path = got.debs["sentinel-test"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatch, match=r"deb sentinel-test=1\.0: sha256 mismatch in the cache"):
        fetch_all(lock, cache, offline=True)


def test_registry_bytes_differing_from_the_pin_are_refused(registries) -> None:
    lock, cache = registries
    wrong = lock.with_pins([DebPin("sentinel-test", "1.0", "e" * 64, "runtime")], [])
    with pytest.raises(ArtifactMismatch, match="sentinel-test=1.0: sha256 mismatch in the downloaded file"):
        fetch_all(wrong, cache)
    assert not cache.blob_path("e" * 64).exists()


def test_vanished_deb_version_is_named(registries) -> None:
    lock, cache = registries
    gone = lock.with_pins([DebPin("sentinel-test", "0.9~gone", "a" * 64, "runtime")], [])
    with pytest.raises(VersionVanished, match=r"sentinel-test=0\.9~gone"):
        fetch_all(gone, cache)


def test_vanished_wheel_version_is_named(registries) -> None:
    lock, cache = registries
    w = lock.wheels[0]
    gone = lock.with_pins([], [WheelPin(w.name, "7.7", w.filename.replace("1.0", "7.7"), "b" * 64)])
    with pytest.raises(VersionVanished, match=r"sentineltestpkg==7\.7"):
        fetch_all(gone, cache)


def test_offline_names_every_missing_input(registries) -> None:
    lock, cache = registries
    with pytest.raises(OfflineMiss) as e:
        fetch_all(lock, cache, offline=True)
    assert "deb sentinel-test=1.0" in str(e.value)
    assert "wheel sentineltestpkg-1.0-py3-none-any.whl" in str(e.value)


def test_cli_offline_with_empty_cache_is_exit_2_without_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "empty"))
    res = subprocess.run(
        [sys.executable, "-m", "reproducible", "build", "--offline", "--out", str(tmp_path / "b")],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent,
    )
    assert res.returncode == 2
    assert "--offline, but not in the cache" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "b" / "sentinel.eif").exists()


def _roots_lock(tmp_path: Path) -> Path:
    from reproducible.lock import dump_lock

    base = load_lock()
    lock = base.with_pins([], [])
    lock = replace(lock, debian=replace(lock.debian, kernel=(), bootstrap=(), runtime=("sentinel-test",)),
                   python=replace(lock.python, requirements=("sentineltestpkg",)))
    path = tmp_path / "lock.toml"
    path.write_text(dump_lock(lock))
    return path


def test_lock_refresh_pins_what_the_registries_offer(registries, tmp_path: Path) -> None:
    from reproducible.fetch import refresh

    lock, cache = registries
    roots = load_lock(_roots_lock(tmp_path))
    new = refresh(roots, cache)
    assert [(d.name, d.version, d.sha256) for d in new.debs] == [
        ("sentinel-test", "1.0", lock.debs[0].sha256)]
    assert [(w.filename, w.sha256) for w in new.wheels] == [
        (lock.wheels[0].filename, lock.wheels[0].sha256)]


def test_cli_lock_dry_run_prints_changes_and_writes_nothing(registries, tmp_path: Path) -> None:
    path = _roots_lock(tmp_path)
    before = path.read_bytes()
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    res = subprocess.run([sys.executable, "-m", "reproducible", "lock", "--lock", str(path),
                          "--dry-run", "--json"], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    assert "+ deb sentinel-test 1.0" in res.stderr and "+ wheel sentineltestpkg 1.0" in res.stderr
    assert json.loads(res.stdout)["changes"] == ["+ deb sentinel-test 1.0", "+ wheel sentineltestpkg 1.0"]
    assert path.read_bytes() == before
