"""Signed releases: which measurements file, provenance and EIF our release key vouches for.

`measurements/<version>.json.sig` is a DSSE envelope (verify/dsse.py) whose payload is an in-toto
Statement v1 naming, by SHA-256, the measurements file, the provenance statement and the EIF, with
the PCRs as predicate. The statement stays small (~1 KiB) on purpose: AWS KMS signs messages of at
most 4096 bytes, and the files themselves are bound by digest. Format: measurements/README.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from verify._checks import FAILED, CheckResult, CheckRunner, exit_code
from verify._json import loads_json
from verify.dsse import INTOTO_PAYLOAD_TYPE, Envelope, parse_envelope
from verify.errors import MalformedInput, PcrMismatch, VerificationError
from verify.measurements import PublishedMeasurements, load_measurements

__all__ = [
    "RELEASE_PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "DigestMismatch",
    "ReleaseCheck",
    "VersionMismatch",
    "release_file_name",
    "release_statement",
    "sha256_file",
    "verify_release",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
RELEASE_PREDICATE_TYPE = "urn:sentinel:release-measurements:v1"
SLSA_PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"


class DigestMismatch(VerificationError):
    """A file is not the signed subject it must be: no subject of its name, or another SHA-256."""


class VersionMismatch(VerificationError):
    """The measurements file's own version or mode differs from the signed release's."""


#: The EIF's subject is the one (and only) subject whose name ends so; its file name is the
#: builder's choice, so the customer's copy may be named differently.
_EIF_SUFFIX = ".eif"


def release_file_name(version: str, mode: str) -> str:
    """The measurements file name a release of `version` and `mode` publishes (as the builder does:
    `<version>.json` for development, `<version>-<mode>.json` otherwise)."""
    return f"{version}.json" if mode == "development" else f"{version}-{mode}.json"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed (EIFs are hundreds of MiB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def release_statement(
    *,
    version: str,
    mode: str,
    pcrs: Mapping[int, bytes],
    subjects: Mapping[str, str],
) -> dict[str, Any]:
    """The in-toto Statement a release signature covers.

    Args:
        version, mode: what the release is (e.g. "0.1.0", "development").
        pcrs: the published PCR values.
        subjects: file name -> hex SHA-256 (measurements file, provenance, EIF).
    """
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects.items()],
        "predicateType": RELEASE_PREDICATE_TYPE,
        "predicate": {
            "version": version,
            "mode": mode,
            "pcrs": {f"PCR{i}": v.hex() for i, v in sorted(pcrs.items())},
        },
    }


@dataclass(frozen=True)
class ReleaseCheck:
    """Every check's outcome, plus the signed statement when it could be read."""

    results: tuple[CheckResult, ...]
    statement: dict[str, Any] | None

    def __bool__(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)


def _statement(envelope: Envelope) -> dict[str, Any]:
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE:
        raise MalformedInput(
            f"envelope payloadType is {envelope.payload_type!r}, expected {INTOTO_PAYLOAD_TYPE!r}"
        )
    doc = loads_json(envelope.payload, "signed payload")
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise MalformedInput(f"signed payload is not an in-toto Statement ({STATEMENT_TYPE})")
    if doc.get("predicateType") != RELEASE_PREDICATE_TYPE:
        raise MalformedInput(
            f"predicateType is {doc.get('predicateType')!r}, expected {RELEASE_PREDICATE_TYPE!r}"
        )
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
        for s in subjects
    ):
        raise MalformedInput("statement subject must be an array of {name, digest}")
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict):
        raise MalformedInput("statement predicate must be an object")
    for key in ("version", "mode"):
        value = predicate.get(key)
        if not isinstance(value, str) or not _NAME_PART.fullmatch(value):
            raise MalformedInput(f"statement predicate {key} {value!r} is not a release {key}")
    names = [s["name"] for s in subjects]
    if len(set(names)) != len(names):
        raise MalformedInput(f"statement names a subject twice: {names}")
    return doc


_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _release_name(statement: dict[str, Any]) -> str:
    predicate = statement["predicate"]
    return release_file_name(predicate["version"], predicate["mode"])


def _signed_digest(statement: dict[str, Any], what: str, name: str, digest: str) -> None:
    """The subject called `name` exists and carries `digest`: matched by name, never by digest
    alone (any signed file's digest would otherwise vouch for any role)."""
    signed = {s["name"]: s["digest"].get("sha256") for s in statement["subject"]}
    if name not in signed:
        raise DigestMismatch(f"{what}: the signed release has no subject named {name!r}")
    if signed[name] != digest:
        raise DigestMismatch(f"{what}: sha256 {digest} is not the signed {name} ({signed[name]})")


def _measurements_subject(statement: dict[str, Any], path: Path, digest: str) -> None:
    expected = _release_name(statement)
    if path.name != expected:
        raise DigestMismatch(
            f"measurements: the file is named {path.name!r}, but the signed release "
            f"{statement['predicate']['version']} ({statement['predicate']['mode']}) publishes "
            f"{expected!r}"
        )
    _signed_digest(statement, "measurements", expected, digest)


def _eif_subject(statement: dict[str, Any], digest: str) -> None:
    names = [s["name"] for s in statement["subject"] if s["name"].endswith(_EIF_SUFFIX)]
    if len(names) != 1:
        raise DigestMismatch(f"EIF: the signed release names {len(names)} EIF subjects, expected 1")
    _signed_digest(statement, "EIF", names[0], digest)


def _version_agrees(statement: dict[str, Any], published: PublishedMeasurements) -> None:
    signed = statement["predicate"]
    own = published.sentinel or {}
    for key in ("version", "mode"):
        if own.get(key) != signed[key]:
            raise VersionMismatch(
                f"the file's Sentinel.{key} is {own.get(key)!r}, the signed release's {signed[key]!r}"
            )


def _pcrs_agree(statement: dict[str, Any], published: PublishedMeasurements) -> None:
    signed = statement["predicate"].get("pcrs")
    actual = {f"PCR{i}": v.hex() for i, v in sorted(published.pcrs.items())}
    if signed != actual:
        raise PcrMismatch(f"PCRs in the file {actual} differ from the signed ones {signed}")


def _provenance(data: bytes, statement: dict[str, Any]) -> None:
    name = _release_name(statement).removesuffix(".json") + ".provenance.json"
    _signed_digest(statement, "provenance", name, hashlib.sha256(data).hexdigest())
    doc = loads_json(data, "provenance")
    if not isinstance(doc, dict) or doc.get("predicateType") != SLSA_PROVENANCE_TYPE:
        raise MalformedInput(f"provenance is not an in-toto Statement with {SLSA_PROVENANCE_TYPE}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise MalformedInput(f"cannot read {what} {path}: {e.strerror}") from e


def verify_release(
    measurements: Path,
    public_key: ec.EllipticCurvePublicKey,
    *,
    signature: Path | None = None,
    provenance: Path | None = None,
    eif: Path | None = None,
    fail_fast: bool = True,
) -> ReleaseCheck:
    """Check that our release key signed this measurements file (and, if given, provenance and EIF).

    Args:
        measurements: the measurements file.
        public_key: the release key (P-384), from a file the customer got out of band.
        signature: the envelope; `<measurements>.sig` by default.
        provenance, eif: further files to check against the signed digests.
        fail_fast: raise at the first failure (library use) or collect every outcome (CLI).

    Raises:
        MalformedInput: a file is unreadable or not in its format (fail_fast only).
        VerificationError: `UnknownSigner`, `SignatureInvalid`, `DigestMismatch`, `PcrMismatch`.
    """
    checks = CheckRunner(fail_fast=fail_fast)
    sig_path = signature or measurements.with_name(measurements.name + ".sig")
    data = checks.run("measurements", _read, measurements, "measurements file")
    published = FAILED if data is FAILED else checks.run("format", load_measurements, data)
    envelope = checks.run(
        "envelope", lambda: parse_envelope(_read(sig_path, "signature"), str(sig_path))
    )
    statement: dict[str, Any] | None = None
    if isinstance(envelope, Envelope) and checks.run("signature", envelope.verify, public_key) is not FAILED:
        got = checks.run("statement", _statement, envelope)
        statement = got if isinstance(got, dict) else None
    if statement is not None:
        if isinstance(data, bytes):
            checks.run(
                "subject", _measurements_subject, statement, measurements,
                hashlib.sha256(data).hexdigest(),
            )
        if isinstance(published, PublishedMeasurements):
            checks.run("version", _version_agrees, statement, published)
            checks.run("pcrs", _pcrs_agree, statement, published)
        if provenance is not None:
            checks.run("provenance", lambda: _provenance(_read(provenance, "provenance"), statement))
        if eif is not None:
            checks.run("eif", lambda: _eif_subject(statement, _sha256_or_malformed(eif)))
    return ReleaseCheck(results=tuple(checks.results), statement=statement)


def _sha256_or_malformed(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise MalformedInput(f"cannot read EIF {path}: {e.strerror}") from e
