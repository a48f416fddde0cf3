"""Build QEMU's `nitro-enclave` machine from Debian's own source package, cached by its version.

Debian's binary QEMU packages are built without libcbor, so they lack the machine and `virtio-nsm`.
The source package is fetched through apt with a private `deb-src` entry derived at run time from this
machine's apt sources (no mirror host is written anywhere), then only `qemu-system-x86_64` is built.
The binary lands in `<cache>/nitro-qemu/<source version>/qemu-system-x86_64`; a second run reuses it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nitro_qemu import NitroQemuError
from reproducible.apt import derive_sources
from reproducible.cache import default_root

SUITE = "trixie"  # the first Debian release whose QEMU (>= 9.2) has the machine
SOURCE_PACKAGE = "qemu"
BINARY = "qemu-system-x86_64"
# configure's own venv is offline, so these come from PyPI into the calling venv.
PYTHON_DEPENDS = ["meson>=1.5", "pycotap"]
CONFIGURE_FLAGS = [
    "--target-list=x86_64-softmmu",
    "--enable-libcbor", "--enable-gnutls", "--enable-fdt=system",
    "--disable-install-blobs", "--disable-docs", "--disable-tools", "--disable-gtk",
    "--disable-sdl", "--disable-vnc", "--disable-spice", "--disable-curl", "--disable-slirp",
    "--disable-werror", "--disable-debug-info", "--disable-opengl", "--disable-virglrenderer",
    "--disable-libusb", "--disable-usb-redir", "--disable-smartcard", "--disable-seccomp",
    "--disable-xen", "--disable-guest-agent", "--disable-capstone", "--disable-plugins",
]
LISTS_MAX_AGE = 24 * 3600  # seconds; a cached build then needs no network at all
_EDK2_BLOCK = re.compile(r"^if unpack_edk2_blobs\b.*?^endif\n", re.S | re.M)


class BuildError(NitroQemuError):
    """Fetching or building QEMU failed; the message carries the failing step's output tail."""


@dataclass(frozen=True)
class QemuBuild:
    """A built `qemu-system-x86_64` with the nitro-enclave machine."""

    binary: Path
    version: str  # Debian source version, e.g. 1:10.0.7+ds-0+deb13u1
    build_seconds: float  # the compile that produced it (from its stamp when reused)
    reused: bool


def cache_dir() -> Path:
    return default_root() / "nitro-qemu"


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.splitlines()[-n:])


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C", **(env or {}))
    )
    if res.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} … failed ({res.returncode}):\n{_tail(res.stdout + res.stderr)}")
    return res.stdout


class SourceApt:
    """apt-get confined to a private state directory with one derived `deb-src` entry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        deb = derive_sources((SUITE,))
        # derive_sources writes binary entries; the same archive serves the sources.
        self.sources = deb.replace("Types: deb\n", "Types: deb-src\n")
        if "Types: deb-src" not in self.sources:
            raise BuildError(f"cannot turn the derived apt sources into deb-src:\n{deb}")

    def _opts(self) -> list[str]:
        r = self.root
        for d in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "state" / "status").touch()
        (r / "etc" / "sources.list").touch()
        (r / "etc" / "sources.list.d" / "nitro-qemu.sources").write_text(self.sources)
        opts = {
            "Dir::State": r / "state", "Dir::State::status": r / "state" / "status",
            "Dir::Cache": r / "cache", "Dir::Etc::SourceList": r / "etc" / "sources.list",
            "Dir::Etc::SourceParts": r / "etc" / "sources.list.d", "Acquire::Languages": "none",
        }
        out: list[str] = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        if os.geteuid() == 0:
            out += ["-o", "APT::Sandbox::User=root"]
        return out

    def source_version(self) -> str:
        """The newest version of the source package in the suite (lists refreshed daily)."""
        opts = self._opts()
        lists = list((self.root / "state" / "lists").glob("*_Sources*"))
        if not lists or time.time() - min(f.stat().st_mtime for f in lists) > LISTS_MAX_AGE:
            _run(["apt-get", *opts, "-q", "update"])
        text = _run(["apt-cache", *opts, "showsrc", SOURCE_PACKAGE])
        versions = [
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("Version:")
        ]
        if not versions:
            raise BuildError(f"apt knows no source package {SOURCE_PACKAGE!r} in {SUITE}")
        best = versions[0]
        for v in versions[1:]:
            if subprocess.run(["dpkg", "--compare-versions", v, "gt", best]).returncode == 0:
                best = v
        return best

    def fetch(self, version: str, dest: Path) -> Path:
        """`apt-get source qemu=VERSION` into dest (downloads and unpacks with Debian's patches)."""
        _run(["apt-get", *self._opts(), "-q", "source", f"{SOURCE_PACKAGE}={version}"], cwd=dest)
        trees = [p for p in dest.iterdir() if p.is_dir() and p.name.startswith(SOURCE_PACKAGE + "-")]
        if len(trees) != 1:
            raise BuildError(f"apt-get source left {sorted(p.name for p in dest.iterdir())}")
        return trees[0]


def skip_edk2_blobs(tree: Path) -> None:
    """Debian's tarball drops the edk2 firmware blobs that pc-bios/meson.build would unpack."""
    meson = tree / "pc-bios" / "meson.build"
    text = meson.read_text()
    new, n = _EDK2_BLOCK.subn("", text)
    if n != 1:
        raise BuildError(f"{meson}: expected one `if unpack_edk2_blobs` block, found {n}")
    meson.write_text(new)


def has_nitro_machine(binary: Path) -> bool:
    res = subprocess.run([str(binary), "-machine", "help"], capture_output=True, text=True)
    dev = subprocess.run([str(binary), "-device", "help"], capture_output=True, text=True)
    return "nitro-enclave" in res.stdout and "virtio-nsm" in dev.stdout


def build(
    python: str = sys.executable, jobs: int | None = None, log: Callable[[str], None] = print
) -> QemuBuild:
    """The cached binary for trixie's current QEMU source, building it when missing.

    Raises:
        BuildError: a step (apt, configure, ninja) failed, or the result lacks the machine.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    apt = SourceApt(root / "apt")
    version = apt.source_version()
    out_dir = root / version.replace(":", "_")
    binary = out_dir / BINARY
    stamp = out_dir / "build.json"
    if binary.exists() and stamp.exists() and has_nitro_machine(binary):
        seconds = float(json.loads(stamp.read_text())["build_seconds"])
        return QemuBuild(binary, version, seconds, reused=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nitro-qemu-", dir=root) as tmp:
        work = Path(tmp)
        log(f"nitro-qemu: fetching Debian source {SOURCE_PACKAGE} {version} ({SUITE})")
        tree = apt.fetch(version, work)
        skip_edk2_blobs(tree)
        bdir = tree / "build-nitro"
        bdir.mkdir()
        log("nitro-qemu: configure " + " ".join(CONFIGURE_FLAGS))
        started = time.monotonic()
        _run(["../configure", f"--python={python}", *CONFIGURE_FLAGS], cwd=bdir)
        config = (bdir / "x86_64-softmmu-config-devices.h").read_text()
        if "CONFIG_NITRO_ENCLAVE 1" not in config:
            raise BuildError("configure did not enable CONFIG_NITRO_ENCLAVE (libcbor/gnutls missing?)")
        log("nitro-qemu: ninja " + BINARY)
        _run(["ninja", "-j", str(jobs or os.cpu_count() or 1), BINARY], cwd=bdir)
        seconds = time.monotonic() - started
        shutil.copy2(bdir / BINARY, binary)
    if not has_nitro_machine(binary):
        raise BuildError(f"{binary} has no nitro-enclave machine or virtio-nsm device")
    stamp.write_text(json.dumps({"version": version, "build_seconds": round(seconds, 1)}) + "\n")
    return QemuBuild(binary, version, seconds, reused=False)
