"""The published release in measurements/ verifies as a customer would check it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MEASUREMENTS = Path(__file__).resolve().parents[1] / "measurements"
KEY = MEASUREMENTS / "release-dev-key.pub.pem"
SIGNED = sorted(p.name.removesuffix(".json.sig") for p in MEASUREMENTS.glob("*.json.sig"))


def _key(version: str) -> Path:
    """Each development release names its own throw-away key; 0.1.0's is the undated one."""
    own = MEASUREMENTS / f"release-dev-key-{version}.pub.pem"
    return own if own.exists() else KEY


def _verify(version: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    key = key if key is not None else _key(version)
    return subprocess.run(
        [
            sys.executable, "-m", "verify", "measurements",
            str(MEASUREMENTS / f"{version}.json"),
            "--key", str(key),
            "--provenance", str(MEASUREMENTS / f"{version}.provenance.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_release_is_published() -> None:
    assert SIGNED, "no signed release in measurements/"


@pytest.mark.parametrize("version", SIGNED)
def test_published_release_verifies(version: str) -> None:
    proc = _verify(version)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("version", SIGNED)
def test_published_release_refuses_another_key(version: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    key = tmp_path / "other.pem"
    key.write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    proc = _verify(version, key)
    assert proc.returncode == 1, proc.stderr
    assert "signature" in proc.stderr.lower()
