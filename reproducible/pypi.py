"""Wheels through the ordinary client, `pip download`, for the enclave runtime's ABI.

pip uses its own configuration (index, proxy, PIP_* variables), so no index host is written here.
Pinned downloads run with `--require-hashes --no-deps`; resolution (for `nox -s lock`) asks pip to
resolve the requirements for the target interpreter and platform, never the host's.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from reproducible.cache import sha256_file
from reproducible.errors import FetchError, VersionVanished
from reproducible.lock import PythonSpec, WheelPin

log = logging.getLogger(__name__)


def _target_args(spec: PythonSpec) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", spec.version,
            "--implementation", spec.implementation, "--abi", spec.abi, "--abi", "abi3",
            "--abi", "none"]
    for p in spec.platforms:
        args += ["--platform", p]
    return args


def _pip(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
           "--no-cache-dir", "download", *args]
    log.debug("running %s", " ".join(cmd))
    env = dict(os.environ, LC_ALL="C", PYTHONHASHSEED="0")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def _wheel_name_version(filename: str) -> tuple[str, str]:
    parts = filename[:-4].split("-")
    if len(parts) < 5:
        raise FetchError(f"pip produced an unexpected file {filename!r}")
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def download(spec: PythonSpec, pins: list[WheelPin], dest: Path) -> dict[str, Path]:
    """Download pinned wheels into `dest`, checked by pip against their sha256.

    Raises:
        VersionVanished: the index no longer offers a pinned version.
        FetchError: any other pip failure.
    """
    if not pins:
        return {}
    req = dest / "requirements.txt"
    req.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in pins))
    res = _pip([*_target_args(spec), "--no-deps", "--require-hashes", "-r", str(req),
                "-d", str(dest)], dest)
    if res.returncode != 0:
        gone = re.findall(r"No matching distribution found for (\S+)", res.stderr)
        if gone:
            raise VersionVanished(
                "the package index no longer offers " + ", ".join(gone)
                + f" for cp{spec.version.replace('.', '')}/{spec.abi}; run `nox -s lock`"
            )
        if "DO NOT MATCH THE HASHES" in res.stderr:
            raise FetchError(f"pip refused a wheel whose sha256 differs from the lock: "
                             f"{_tail(res.stderr)}")
        raise FetchError(f"pip download failed: {_tail(res.stderr)}")
    out: dict[str, Path] = {}
    for w in pins:
        path = dest / w.filename
        if not path.is_file():
            raise FetchError(f"pip download did not produce {w.filename}")
        out[w.filename] = path
    return out


def resolve(spec: PythonSpec, dest: Path) -> list[WheelPin]:
    """Resolve `spec.requirements` for the target runtime and pin what pip chose.

    Raises:
        FetchError: pip could not resolve them.
    """
    res = _pip([*_target_args(spec), "-d", str(dest), *spec.requirements], dest)
    if res.returncode != 0:
        raise FetchError(f"pip could not resolve {list(spec.requirements)}: {_tail(res.stderr)}")
    pins = []
    for f in sorted(dest.glob("*.whl")):
        name, version = _wheel_name_version(f.name)
        pins.append(WheelPin(name, version, f.name, sha256_file(f)))
    return pins


def _tail(text: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"
