"""Debian packages through the ordinary client, `apt-get download`, in a private APT state.

The sources are derived from this machine's own apt configuration (its deb822 `.sources` and
one-line `.list` entries) by replacing the host's codename with the suite the lock asks for, so no
registry host is ever written into the repository. APT state, lists and caches live under the
builder's cache directory; the host's own APT state is never touched.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reproducible.errors import FetchError, LockError, VersionVanished

log = logging.getLogger(__name__)

SOURCES_ENV = "SENTINEL_APT_SOURCES"  # a deb822 file used verbatim (tests: a local file: repo)


@dataclass(frozen=True)
class AptRecord:
    name: str
    version: str
    sha256: str
    depends: tuple[str, ...]


def _host_codename(os_release: Path) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    raise LockError(f"cannot tell this machine's Debian codename from {os_release}")


def _host_entries(etc: Path) -> list[dict[str, str]]:
    """Every `deb` entry of the host's apt configuration as deb822 fields."""
    entries: list[dict[str, str]] = []
    parts = etc / "sources.list.d"
    for f in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                entries.append(fields)
    lists = [etc / "sources.list"] + (sorted(parts.glob("*.list")) if parts.is_dir() else [])
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"^\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)$", line)
            if not m:
                continue
            fields = {"types": "deb", "uris": m.group(2), "suites": m.group(3),
                      "components": m.group(4).split("#")[0].strip()}
            for opt in (m.group(1) or "").strip("[] \t").split():
                if opt.startswith("signed-by="):
                    fields["signed-by"] = opt.split("=", 1)[1]
            entries.append(fields)
    return entries


def derive_sources(
    suites: tuple[str, ...], *, etc: Path = Path("/etc/apt"), os_release: Path = Path("/etc/os-release")
) -> str:
    """A deb822 sources text for `suites`, derived from the host's entries for its own codename.

    Raises:
        LockError: the host has no entry to derive one of the suites from.
    """
    override = os.environ.get(SOURCES_ENV)
    if override:
        return Path(override).read_text()
    codename = _host_codename(os_release)
    entries = _host_entries(etc)
    stanzas = []
    for suite in suites:
        base, sep, suffix = suite.partition("-")
        host_suite = codename + sep + suffix
        match = [e for e in entries if host_suite in e.get("suites", "").split()]
        if not match:
            raise LockError(
                f"apt: no entry for suite {host_suite!r} in {etc} to derive {suite!r} from"
            )
        e = match[0]
        lines = ["Types: deb", f"URIs: {e['uris']}", f"Suites: {suite}",
                 f"Components: {e.get('components', 'main')}"]
        if "signed-by" in e:
            lines.append(f"Signed-By: {e['signed-by']}")
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + "\n"


class Apt:
    """apt-get / apt-cache confined to a private state directory."""

    def __init__(self, root: Path, sources: str, architecture: str) -> None:
        self.root = root
        self.sources = sources
        self.architecture = architecture
        self._updated = False

    def _opts(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::State": r / "state",
            "Dir::State::status": r / "state" / "status",
            "Dir::Cache": r / "cache",
            "Dir::Etc::SourceList": r / "etc" / "sources.list",
            "Dir::Etc::SourceParts": r / "etc" / "sources.list.d",
            "Dir::Etc::Preferences": r / "etc" / "preferences",
            "Dir::Etc::PreferencesParts": r / "etc" / "preferences.d",
            "APT::Architecture": self.architecture,
            "APT::Architectures": self.architecture,
            "Acquire::Languages": "none",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        res: list[str] = []
        for k, v in opts.items():
            if v != "":
                res += ["-o", f"{k}={v}"]
        return res

    def _prepare(self) -> None:
        r = self.root
        for d in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d",
                  "etc/preferences.d"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "state" / "status").touch()
        (r / "etc" / "sources.list").touch()
        src = r / "etc" / "sources.list.d" / "sentinel.sources"
        if not src.is_file() or src.read_text() != self.sources:
            src.write_text(self.sources)
            # New sources invalidate lists fetched for the old ones.
            for f in (r / "state" / "lists").glob("*_Packages*"):
                f.unlink()

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        self._prepare()
        cmd = [tool, *self._opts(), *args]
        log.debug("running %s", " ".join(cmd))
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        try:
            return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
        except FileNotFoundError as e:
            raise FetchError(f"{tool} not found: Debian inputs need apt") from e

    def has_lists(self) -> bool:
        self._prepare()
        return any((self.root / "state" / "lists").glob("*_Packages*"))

    def update(self) -> None:
        """Refresh the private package lists.

        Raises:
            FetchError: apt-get update failed.
        """
        res = self._run("apt-get", "-q", "update")
        if res.returncode != 0 or "\nE: " in "\n" + res.stderr or "\nW: Failed" in "\n" + res.stderr:
            raise FetchError(f"apt-get update failed: {_tail(res.stderr)}")
        self._updated = True

    def candidate(self, name: str) -> AptRecord:
        """The candidate version of `name` in the configured suites.

        Raises:
            FetchError: no such package.
        """
        if not self.has_lists():
            self.update()
        res = self._run("apt-cache", "show", "--no-all-versions", name)
        if res.returncode != 0 or not res.stdout.strip():
            raise FetchError(f"apt: package {name!r} not found in the configured suites")
        return _parse_record(res.stdout)

    def download(self, pins: list[tuple[str, str]], dest: Path) -> dict[tuple[str, str], Path]:
        """`apt-get download NAME=VERSION ...` into `dest`.

        Raises:
            VersionVanished: a pinned version is not offered by the registry any more.
            FetchError: any other apt failure.
        """
        if not pins:
            return {}
        if not self.has_lists():
            self.update()
        specs = [f"{n}={v}" for n, v in pins]
        res = self._run("apt-get", "-q", "download", *specs, cwd=dest)
        if res.returncode != 0 and not self._updated and _missing(res.stderr):
            # Stale lists are the usual cause; a fresh look settles whether it vanished.
            self.update()
            res = self._run("apt-get", "-q", "download", *specs, cwd=dest)
        if res.returncode != 0:
            gone = _missing(res.stderr)
            if gone:
                raise VersionVanished(
                    "the Debian archive no longer offers "
                    + ", ".join(f"{n}={v}" for n, v in gone)
                    + " pinned in the lock; run `nox -s lock` to move to the current versions"
                )
            raise FetchError(f"apt-get download failed: {_tail(res.stderr)}")
        out: dict[tuple[str, str], Path] = {}
        files = sorted(dest.glob("*.deb"))
        for n, v in pins:
            found = [f for f in files if f.name.startswith(n + "_")]
            if len(found) != 1:
                raise FetchError(f"apt-get download did not produce {n}={v} in {dest}")
            out[(n, v)] = found[0]
        return out


def _missing(stderr: str) -> list[tuple[str, str]]:
    found = re.findall(r"Version '([^']+)' for '([^']+)' was not found", stderr)
    found += [(v, n) for n, v in re.findall(r"Unable to locate package ([^\s=]+)(?:=(\S+))?", stderr)]
    return [(n, v or "?") for v, n in found]


def _parse_record(text: str) -> AptRecord:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            break
        if line[:1].isspace() and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    depends = tuple(
        d.strip().split()[0] for d in fields.get("Depends", "").split(",") if d.strip()
    )
    if "SHA256" not in fields:
        raise FetchError(f"apt record for {fields.get('Package')!r} has no SHA256")
    return AptRecord(fields["Package"], fields["Version"], fields["SHA256"], depends)


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"
