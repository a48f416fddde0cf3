"""The lock file: parsing, validation errors, stable dump, change report, apt source derivation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reproducible.apt import derive_sources
from reproducible.errors import LockError
from reproducible.lock import LOCK_PATH, DebPin, diff_locks, dump_lock, load_lock, parse_lock


def test_committed_lock_is_valid_and_dumps_to_itself() -> None:
    lock = load_lock()
    assert lock.debs and lock.wheels and lock.source_date_epoch > 0
    assert {d.role for d in lock.debs} == {"kernel", "bootstrap", "runtime"}
    assert dump_lock(lock) == LOCK_PATH.read_text()
    assert parse_lock(dump_lock(lock)) == lock


def test_committed_lock_names_no_registry_host() -> None:
    text = LOCK_PATH.read_text()
    assert "://" not in text and ".org" not in text


def _mutate(old: str, new: str) -> str:
    text = LOCK_PATH.read_text()
    assert old in text
    return text.replace(old, new, 1)


BAD = {
    "not-toml": ("schema = 1", "schema = = 1", "not valid TOML"),
    "schema": ("schema = 1", "schema = 7", "schema 7"),
    "epoch-type": ("source_date_epoch = ", "source_date_epoch = \"x\" #", "must be int"),
    "short-sha": ('sha256 = "', 'sha256 = "abc', "64 lowercase hex"),
    "role": ('role = "runtime"', 'role = "extra"', "role 'extra'"),
    "deb-name-option": ('name = "libc6"', 'name = "-oDebug=1"', "bad Debian name"),
    "wheel-path": ('filename = "', 'filename = "../', "bad wheel filename"),
    "missing-kernel-table": ("[kernel]", "[kernelx]", "missing `kernel`"),
}


@pytest.mark.parametrize("case", list(BAD.values()), ids=list(BAD))
def test_malformed_lock_is_a_specific_error(case) -> None:
    old, new, message = case
    with pytest.raises(LockError, match=message):
        parse_lock(_mutate(old, new))


def test_duplicate_pin_is_refused() -> None:
    lock = load_lock()
    dup = lock.with_pins([*lock.debs, lock.debs[0]], lock.wheels)
    with pytest.raises(LockError, match="pinned twice"):
        parse_lock(dump_lock(dup))


def test_missing_lock_file(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="cannot read"):
        load_lock(tmp_path / "nope.toml")


def test_diff_reports_each_kind_of_change() -> None:
    lock = load_lock()
    d0 = lock.debs[0]
    changed = lock.with_pins(
        [replace(d0, version=d0.version + "+1", sha256="0" * 64), *lock.debs[2:],
         DebPin("newpkg", "1", "1" * 64, "runtime")],
        lock.wheels[:-1],
    )
    changes = diff_locks(lock, changed)
    assert any(c.startswith(f"~ deb {d0.name} {d0.version} -> ") for c in changes)
    assert f"- deb {lock.debs[1].name} {lock.debs[1].version}" in changes
    assert "+ deb newpkg 1" in changes
    assert f"- wheel {lock.wheels[-1].name} {lock.wheels[-1].version}" in changes
    same_version = lock.with_pins([replace(d0, sha256="2" * 64), *lock.debs[1:]], lock.wheels)
    assert any("same version, new sha256" in c for c in diff_locks(lock, same_version))
    assert diff_locks(lock, lock) == []


def _host(tmp_path: Path, sources: str, codename: str = "bookworm") -> tuple[Path, Path]:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(sources)
    osr = tmp_path / "os-release"
    osr.write_text(f'NAME="Debian"\nVERSION_CODENAME={codename}\n')
    return etc, osr


HOST_822 = """Types: deb
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/k.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/k.gpg
"""


def test_sources_are_derived_from_the_host_entries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SENTINEL_APT_SOURCES", raising=False)
    etc, osr = _host(tmp_path, HOST_822)
    text = derive_sources(("trixie", "trixie-security"), etc=etc, os_release=osr)
    stanzas = text.strip().split("\n\n")
    assert "URIs: http://mirror.invalid/debian\nSuites: trixie\n" in stanzas[0]
    assert "URIs: http://mirror.invalid/debian-security\nSuites: trixie-security" in stanzas[1]
    assert all("Signed-By: /usr/share/keyrings/k.gpg" in s for s in stanzas)


def test_one_line_sources_are_understood(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SENTINEL_APT_SOURCES", raising=False)
    etc, osr = _host(tmp_path, "")
    (etc / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib\n"
    )
    text = derive_sources(("trixie",), etc=etc, os_release=osr)
    assert "Suites: trixie" in text and "Components: main contrib" in text
    assert "Signed-By: /k.gpg" in text


def test_no_host_entry_to_derive_from(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SENTINEL_APT_SOURCES", raising=False)
    etc, osr = _host(tmp_path, HOST_822.split("\n\n")[0])
    with pytest.raises(LockError, match="bookworm-security"):
        derive_sources(("trixie-security",), etc=etc, os_release=osr)
