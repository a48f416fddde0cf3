"""The lock file: every input of the enclave image by name, version and sha256.

Format (documented in reproducible/README.md) is TOML, read with the stdlib's tomllib and written by
`dump_lock` in one fixed order so that `nox -s lock` produces minimal, reviewable diffs.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from reproducible.errors import LockError

LOCK_PATH = Path(__file__).with_name("lock.toml")
SCHEMA = 1
ROLES = ("kernel", "bootstrap", "runtime")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Debian package names and versions (policy 5.6.1 / 5.6.12); anything else could smuggle options.
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_DEB_VERSION = re.compile(r"^[0-9A-Za-z.+~:-]+$")
_WHEEL_FILE = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class DebPin:
    """One Debian binary package, as `apt-get download NAME=VERSION` fetches it."""

    name: str
    version: str
    sha256: str
    role: str

    @property
    def label(self) -> str:
        return f"deb {self.name}={self.version}"


@dataclass(frozen=True)
class WheelPin:
    """One wheel, as `pip download NAME==VERSION --hash=sha256:...` fetches it."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def label(self) -> str:
        return f"wheel {self.filename}"


@dataclass(frozen=True)
class DebianSpec:
    suites: tuple[str, ...]
    architecture: str
    kernel: tuple[str, ...]
    bootstrap: tuple[str, ...]
    runtime: tuple[str, ...]


@dataclass(frozen=True)
class PythonSpec:
    version: str
    implementation: str
    abi: str
    platforms: tuple[str, ...]
    requirements: tuple[str, ...]
    drop: tuple[str, ...] = ()  # site-packages paths (fnmatch) left out of the image
    keep: tuple[str, ...] = ()  # exceptions to `drop`


@dataclass(frozen=True)
class KernelSpec:
    modules: tuple[str, ...]
    cmdline: str


@dataclass(frozen=True)
class Lock:
    source_date_epoch: int
    debian: DebianSpec
    python: PythonSpec
    kernel: KernelSpec
    debs: tuple[DebPin, ...] = field(default=())
    wheels: tuple[WheelPin, ...] = field(default=())

    def debs_for(self, role: str) -> tuple[DebPin, ...]:
        return tuple(d for d in self.debs if d.role == role)

    def with_pins(self, debs: Iterable[DebPin], wheels: Iterable[WheelPin]) -> Lock:
        return replace(self, debs=tuple(debs), wheels=tuple(wheels))


def _get(table: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    if key not in table:
        raise LockError(f"lock: missing `{key}` in {where}")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise LockError(f"lock: `{key}` in {where} must be {kind.__name__}, got {value!r}")
    return value


def _strings(table: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value: list[object] = _get(table, key, list, where)
    strings = tuple(v for v in value if isinstance(v, str))
    if len(strings) != len(value):
        raise LockError(f"lock: `{key}` in {where} must be a list of strings")
    return strings


def _sha(value: object, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise LockError(f"lock: {where}: sha256 must be 64 lowercase hex digits, got {value!r}")
    return value


def parse_lock(text: str, *, source: str = "lock.toml") -> Lock:
    """Parse and validate lock text.

    Raises:
        LockError: the text is not TOML or a field is missing, mistyped or malformed.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{source}: not valid TOML: {e}") from e
    if doc.get("schema") != SCHEMA:
        raise LockError(f"{source}: schema {doc.get('schema')!r} unsupported (expected {SCHEMA})")
    epoch = _get(doc, "source_date_epoch", int, source)
    if epoch < 0:
        raise LockError(f"{source}: source_date_epoch must be >= 0")
    deb_t = _get(doc, "debian", dict, source)
    py_t = _get(doc, "python", dict, source)
    k_t = _get(doc, "kernel", dict, source)
    debian = DebianSpec(
        suites=_strings(deb_t, "suites", "[debian]"),
        architecture=_get(deb_t, "architecture", str, "[debian]"),
        kernel=_strings(deb_t, "kernel", "[debian]"),
        bootstrap=_strings(deb_t, "bootstrap", "[debian]"),
        runtime=_strings(deb_t, "runtime", "[debian]"),
    )
    python = PythonSpec(
        version=_get(py_t, "version", str, "[python]"),
        implementation=_get(py_t, "implementation", str, "[python]"),
        abi=_get(py_t, "abi", str, "[python]"),
        platforms=_strings(py_t, "platforms", "[python]"),
        requirements=_strings(py_t, "requirements", "[python]"),
        drop=_strings(py_t, "drop", "[python]") if "drop" in py_t else (),
        keep=_strings(py_t, "keep", "[python]") if "keep" in py_t else (),
    )
    kernel = KernelSpec(
        modules=_strings(k_t, "modules", "[kernel]"),
        cmdline=_get(k_t, "cmdline", str, "[kernel]"),
    )
    debs = []
    for i, t in enumerate(doc.get("deb", [])):
        where = f"[[deb]] #{i + 1}"
        name = _get(t, "name", str, where)
        version = _get(t, "version", str, where)
        role = _get(t, "role", str, where)
        if not _DEB_NAME.match(name) or not _DEB_VERSION.match(version):
            raise LockError(f"lock: {where}: bad Debian name/version {name!r} {version!r}")
        if role not in ROLES:
            raise LockError(f"lock: {where} ({name}): role {role!r} not one of {ROLES}")
        debs.append(DebPin(name, version, _sha(t.get("sha256"), f"{where} ({name})"), role))
    wheels = []
    for i, t in enumerate(doc.get("wheel", [])):
        where = f"[[wheel]] #{i + 1}"
        filename = _get(t, "filename", str, where)
        if not _WHEEL_FILE.match(filename) or "/" in filename:
            raise LockError(f"lock: {where}: bad wheel filename {filename!r}")
        wheels.append(
            WheelPin(
                _get(t, "name", str, where),
                _get(t, "version", str, where),
                filename,
                _sha(t.get("sha256"), f"{where} ({filename})"),
            )
        )
    names = [d.name for d in debs] + [w.filename for w in wheels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LockError(f"{source}: inputs pinned twice: {', '.join(dupes)}")
    return Lock(epoch, debian, python, kernel, tuple(debs), tuple(wheels))


def load_lock(path: str | Path = LOCK_PATH) -> Lock:
    """Read and validate a lock file.

    Raises:
        LockError: unreadable or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LockError(f"cannot read lock file {path}: {e.strerror}") from e
    return parse_lock(text, source=str(path))


def _q(s: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(s, ensure_ascii=False)


def _qlist(items: Iterable[str]) -> str:
    items = list(items)
    if len(items) <= 3:
        return "[" + ", ".join(_q(i) for i in items) + "]"
    return "[\n" + "".join(f"    {_q(i)},\n" for i in items) + "]"


def dump_lock(lock: Lock) -> str:
    """Serialise a lock in a fixed order (pins sorted by role then name)."""
    d, p, k = lock.debian, lock.python, lock.kernel
    out = [
        "# Every input of the Sentinel enclave image, pinned by name, version and sha256.",
        "# Refresh with `nox -s lock`; the format is described in reproducible/README.md.",
        f"schema = {SCHEMA}",
        f"source_date_epoch = {lock.source_date_epoch}",
        "",
        "[debian]",
        "# Suites are looked up in the host's own apt sources, with its codename replaced.",
        f"suites = {_qlist(d.suites)}",
        f"architecture = {_q(d.architecture)}",
        f"kernel = {_qlist(d.kernel)}",
        f"bootstrap = {_qlist(d.bootstrap)}",
        f"runtime = {_qlist(d.runtime)}",
        "",
        "[python]",
        f"version = {_q(p.version)}",
        f"implementation = {_q(p.implementation)}",
        f"abi = {_q(p.abi)}",
        f"platforms = {_qlist(p.platforms)}",
        f"requirements = {_qlist(p.requirements)}",
        *(["# Left out of site-packages (fnmatch), unless matched by `keep`: botocore ships every",
            "# AWS service's model (the enclave only talks to KMS), pycryptodome its self-tests."]
          if p.drop else []),
        *([f"drop = {_qlist(p.drop)}"] if p.drop else []),
        *([f"keep = {_qlist(p.keep)}"] if p.keep else []),
        "",
        "[kernel]",
        f"modules = {_qlist(k.modules)}",
        f"cmdline = {_q(k.cmdline)}",
    ]
    for deb in sorted(lock.debs, key=lambda x: (ROLES.index(x.role), x.name)):
        out += [
            "",
            "[[deb]]",
            f"name = {_q(deb.name)}",
            f"version = {_q(deb.version)}",
            f"role = {_q(deb.role)}",
            f"sha256 = {_q(deb.sha256)}",
        ]
    for w in sorted(lock.wheels, key=lambda x: x.filename.lower()):
        out += [
            "",
            "[[wheel]]",
            f"name = {_q(w.name)}",
            f"version = {_q(w.version)}",
            f"filename = {_q(w.filename)}",
            f"sha256 = {_q(w.sha256)}",
        ]
    return "\n".join(out) + "\n"


def diff_locks(old: Lock | None, new: Lock) -> list[str]:
    """Human-readable changes between two locks (empty when nothing changed)."""
    changes: list[str] = []

    def index(lock: Lock | None) -> dict[str, tuple[str, str]]:
        if lock is None:
            return {}
        res = {f"deb {d.name}": (d.version, d.sha256) for d in lock.debs}
        res.update({f"wheel {w.name}": (w.version, w.sha256) for w in lock.wheels})
        return res

    a, b = index(old), index(new)
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            changes.append(f"- {key} {a[key][0]}")
        elif key not in a:
            changes.append(f"+ {key} {b[key][0]}")
        elif a[key] != b[key]:
            note = "" if a[key][0] != b[key][0] else " (same version, new sha256!)"
            changes.append(f"~ {key} {a[key][0]} -> {b[key][0]}{note}")
    if old is not None and old.source_date_epoch != new.source_date_epoch:
        changes.append(f"~ source_date_epoch {old.source_date_epoch} -> {new.source_date_epoch}")
    return changes
