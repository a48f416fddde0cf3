"""Where pinned inputs can come from besides the cache and the registries: content-addressed.

An input is named by the lock's sha256; any source may serve it, and the bytes are accepted only if
they hash to the pin (`Cache.put`). So a `.deb` that left Debian's main archive (Debian keeps only a
suite's current version) is still found in a directory of exported inputs (`--inputs DIR`, written
by `python -m reproducible inputs export`), an OCI image layout or oci-archive of them (`inputs
export --oci`), or in a snapshot-style archive addressed by URL template.
No archive host is written in the repository: templates come from `SENTINEL_INPUT_URLS`
(whitespace-separated) or the user's `$XDG_CONFIG_HOME/sentinel/inputs.toml` (`urls = [...]`).

A template may use `{sha256}`, `{name}`, `{version}`, `{kind}` (`deb` or `wheel`) and `{filename}`
(the name `inputs export` gives the file, e.g. `busybox-static_1%3a1.37.0-6_any.deb`).
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from reproducible.errors import FetchError, LockError
from reproducible.lock import DebPin, WheelPin

URLS_ENV = "SENTINEL_INPUT_URLS"
MANIFEST = "manifest.json"
CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds per request; a stalled archive must not hang the build
PLACEHOLDERS = ("sha256", "name", "version", "kind", "filename")

Pin = DebPin | WheelPin


def export_name(pin: Pin) -> str:
    """The file name of an input in an exported directory (and `{filename}` in templates)."""
    if isinstance(pin, WheelPin):
        return pin.filename
    return f"{pin.name}_{pin.version.replace(':', '%3a')}_any.deb"


def kind(pin: Pin) -> str:
    return "wheel" if isinstance(pin, WheelPin) else "deb"


OCI_LAYOUT = "oci-layout"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class InputsDir:
    """Inputs looked up by sha256: a directory with a manifest (`inputs export`), or an OCI image
    layout (an artifact pulled with e.g. `oras pull --oci-layout` or `skopeo copy ... oci:DIR`),
    whose blobs are named by their sha256 already."""

    root: Path

    @property
    def label(self) -> str:
        return f"inputs directory {self.root}"

    def is_oci_layout(self) -> bool:
        return not (self.root / MANIFEST).exists() and (self.root / OCI_LAYOUT).is_file()

    def files(self) -> dict[str, Path]:
        """sha256 -> file, from the manifest (or an OCI layout's `blobs/sha256/`).

        Raises:
            FetchError: the directory or its manifest is missing or malformed.
        """
        if self.is_oci_layout():
            return self._oci_blobs()
        path = self.root / MANIFEST
        try:
            doc = json.loads(path.read_text())
            entries = doc["inputs"]
            out = {}
            for e in entries:
                name = str(e["filename"])
                if "/" in name or name in ("", ".", ".."):
                    raise FetchError(f"{path}: bad file name {name!r}")
                out[str(e["sha256"])] = self.root / name
            return out
        except OSError as e:
            raise FetchError(f"--inputs {self.root}: no readable {MANIFEST} ({e.strerror}), "
                             f"and no {OCI_LAYOUT} file of an OCI layout") from e
        except (ValueError, KeyError, TypeError) as e:
            raise FetchError(f"--inputs {self.root}: malformed {MANIFEST} ({e})") from e

    def _oci_blobs(self) -> dict[str, Path]:
        # Every blob is offered under the digest it is named by; `Cache.put` re-hashes whatever
        # is taken, so a blob whose bytes do not match its name is refused there, by input.
        try:
            layout = json.loads((self.root / OCI_LAYOUT).read_text())
            version = layout["imageLayoutVersion"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FetchError(f"--inputs {self.root}: unreadable {OCI_LAYOUT} ({e})") from e
        if not str(version).startswith("1."):
            raise FetchError(f"--inputs {self.root}: OCI layout version {version!r}, expected 1.x")
        blobs = self.root / "blobs" / "sha256"
        if not blobs.is_dir():
            raise FetchError(f"--inputs {self.root}: an OCI layout without blobs/sha256/")
        return {p.name: p for p in blobs.iterdir()
                if len(p.name) == 64 and set(p.name) <= _HEX and p.is_file()}


def unpack_inputs_archive(archive: Path, wanted: set[str], dest: Path) -> Path:
    """Copy the blobs of an oci-archive of inputs (`inputs export --oci FILE.tar`) whose sha256
    is `wanted` into `dest`, laid out as the OCI layout `InputsDir` reads; returns `dest`.

    Only `oci-layout` and regular `blobs/sha256/<hex>` members are read; no other name reaches
    the disk, so a crafted archive cannot write outside `dest`.

    Raises:
        FetchError: not a readable tar, or a tar that is not an OCI image layout.
    """
    import tarfile

    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    seen_layout = False
    try:
        with tarfile.open(archive, "r:") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if not m.isfile():
                    continue
                digest = name.removeprefix("blobs/sha256/")
                if name == OCI_LAYOUT:
                    target = dest / OCI_LAYOUT
                    seen_layout = True
                elif digest != name and digest in wanted and len(digest) == 64:
                    target = blobs / digest
                else:
                    continue
                src = tar.extractfile(m)
                assert src is not None  # a regular file
                with src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise FetchError(f"--inputs {archive}: not a readable oci-archive ({e})") from e
    if not seen_layout:
        raise FetchError(f"--inputs {archive}: a tar without an {OCI_LAYOUT} file is not an "
                         "oci-archive (an exported directory must be unpacked first)")
    return dest


@dataclass(frozen=True)
class UrlTemplate:
    """A snapshot-style archive: one URL per input, from a template."""

    template: str

    @property
    def label(self) -> str:
        return f"archive {self.template}"

    def url(self, pin: Pin) -> str:
        values = {"sha256": pin.sha256, "name": pin.name, "version": pin.version,
                  "kind": kind(pin), "filename": export_name(pin)}
        return self.template.format(**{k: urllib.parse.quote(v, safe="") for k, v in values.items()})

    def download(self, pin: Pin, dest: Path) -> None:
        """Stream the input's URL into `dest`.

        Raises:
            FetchError: the archive does not have it or cannot be reached.
        """
        url = self.url(pin)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as r, open(dest, "wb") as out:
                while chunk := r.read(CHUNK):
                    out.write(chunk)
        except urllib.error.HTTPError as e:
            raise FetchError(f"{url}: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from e


def _check_template(t: str, where: str) -> UrlTemplate:
    try:
        t.format(**{k: "x" for k in PLACEHOLDERS})
    except (KeyError, IndexError, ValueError) as e:
        raise LockError(f"{where}: URL template {t!r} uses an unknown placeholder ({e}); "
                        f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from e
    if "{sha256}" not in t and "{filename}" not in t and "{version}" not in t:
        raise LockError(f"{where}: URL template {t!r} names no input ({{sha256}}, {{filename}} "
                        "or {version})")
    if urllib.parse.urlsplit(t).scheme not in ("http", "https", "file"):
        raise LockError(f"{where}: URL template {t!r} is not http(s) or file")
    return UrlTemplate(t)


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sentinel" / "inputs.toml"


def url_templates() -> list[UrlTemplate]:
    """Configured archives: `SENTINEL_INPUT_URLS` if set, else the user's config file.

    Raises:
        LockError: a template or the config file is malformed.
    """
    env = os.environ.get(URLS_ENV)
    if env is not None:
        return [_check_template(t, URLS_ENV) for t in env.split()]
    path = config_path()
    if not path.is_file():
        return []
    try:
        urls = tomllib.loads(path.read_text()).get("urls", [])
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LockError(f"{path}: {e}") from e
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise LockError(f"{path}: `urls` must be a list of strings")
    return [_check_template(u, str(path)) for u in urls]
