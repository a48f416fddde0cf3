"""Publish a release: measurements/<version>.json, its signature, provenance and the README table.

Input is what `python -m reproducible build` wrote (build/sentinel.eif, build/measurements.json).
Steps, each refusing rather than publishing something inconsistent:

1. the measurements describe this EIF (sha256 and PCRs re-measured from the file);
2. measurements/<version>.json is written, or found byte-identical (a release never changes);
3. <version>.provenance.json (in-toto + SLSA provenance) is written next to it;
4. <version>.json.sig, a DSSE envelope over a statement naming all three by SHA-256, is signed;
5. the signature is verified with `verify.signed_release` as a customer would;
6. the table in measurements/README.md gets this release's row.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reproducible.build import published_path
from reproducible.errors import BuildError
from reproducible.inputs import InputsManifest, read_inputs_manifest
from reproducible.provenance import dumps_provenance, git_commit, provenance_statement
from verify.dsse import EnvelopeSigner, key_id, sign_envelope
from verify.errors import VerifyError
from verify.measurements import PublishedMeasurements, load_measurements
from verify.pcr import measure_eif
from verify.signed_release import release_statement, sha256_file, verify_release

__all__ = ["ReleaseArtifacts", "ReleaseError", "publish_release", "update_release_table"]

logger = logging.getLogger(__name__)

TABLE_BEGIN = "<!-- releases:begin -->"
TABLE_END = "<!-- releases:end -->"
_HEADER = (
    "| version | mode | PCR0 | PCR1 | PCR2 | PCR8 | EIF sha256 | signed by (key id) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
_ROW = re.compile(r"^\| (?P<version>[^ |]+) \| (?P<mode>[^ |]+) \|.*\|$")


class ReleaseError(BuildError):
    """The release cannot be published consistently (mismatch, changed release, bad signature)."""


@dataclass(frozen=True)
class ReleaseArtifacts:
    measurements: Path
    signature: Path
    provenance: Path
    readme: Path
    key_id: str


def _short(value: bytes | None) -> str:
    return "-" if value is None else f"`{value.hex()[:16]}…`"


def release_row(published: PublishedMeasurements, eif_sha256: str, signer_id: str) -> str:
    sentinel = published.sentinel or {}
    pcrs = published.pcrs
    cells = [
        str(sentinel.get("version")),
        str(sentinel.get("mode")),
        *(_short(pcrs.get(i)) for i in (0, 1, 2, 8)),
        f"`{eif_sha256[:16]}…`",
        f"`{signer_id[:16]}…`",
    ]
    return "| " + " | ".join(cells) + " |"


def update_release_table(readme: Path, row: str) -> None:
    """Insert or replace this release's row (keyed by version and mode) in the README's table."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Published measurements\n"
    if TABLE_BEGIN not in text or TABLE_END not in text:
        text = text.rstrip("\n") + f"\n\n## Releases\n\n{TABLE_BEGIN}\n{_HEADER}{TABLE_END}\n"
    head, rest = text.split(TABLE_BEGIN, 1)
    table, tail = rest.split(TABLE_END, 1)
    key = _ROW.match(row)
    assert key is not None  # release_row always writes this shape
    rows = {}
    for line in table.strip().splitlines():
        m = _ROW.match(line)
        if m and m["version"] not in ("version", "---"):
            rows[(m["version"], m["mode"])] = line
    rows[(key["version"], key["mode"])] = row
    body = "".join(line + "\n" for _, line in sorted(rows.items()))
    readme.write_text(f"{head}{TABLE_BEGIN}\n{_HEADER}{body}{TABLE_END}{tail}", encoding="utf-8")


def _write_once(dest: Path, data: bytes) -> None:
    if dest.exists():
        if dest.read_bytes() != data:
            raise ReleaseError(
                f"{dest} is already published with different content; a release never changes "
                "(bump the version instead)"
            )
        return
    dest.write_bytes(data)


def _check_describes(published: PublishedMeasurements, eif: Path, eif_sha256: str) -> None:
    sentinel = published.sentinel
    if sentinel is None:
        raise ReleaseError(f"{published.source}: no Sentinel member; not a Sentinel build")
    if sentinel.get("eif_sha256") != eif_sha256:
        raise ReleaseError(
            f"{published.source} describes an EIF with sha256 {sentinel.get('eif_sha256')}, "
            f"but {eif} has {eif_sha256}"
        )
    try:
        measured = measure_eif(eif).pcrs
    except VerifyError as e:
        raise ReleaseError(f"{eif}: {e.diagnostics()}") from e
    for index, value in published.pcrs.items():
        if measured.get(index) != value:
            raise ReleaseError(f"PCR{index} of {eif} differs from {published.source}")


def _inputs_manifest(inputs: Path, sentinel: Mapping[str, object], version: str) -> InputsManifest:
    """The exported inputs' manifest, checked to hold exactly the build's debs and wheels (the
    provenance must not vouch for another lock's inputs)."""
    try:
        manifest = read_inputs_manifest(inputs, ref_name=version)
    except BuildError as e:
        raise ReleaseError(f"--inputs {inputs}: {e}") from e
    items = sentinel.get("inputs")
    pinned = {str(i["sha256"]): f"{i.get('kind')} {i.get('name')}={i.get('version')}"
              for i in (items if isinstance(items, list) else [])
              if isinstance(i, dict) and i.get("kind") in ("deb", "wheel")}
    missing = sorted(f"{label} (sha256 {sha})" for sha, label in pinned.items()
                     if sha not in manifest.inputs)
    extra = sorted(f"{name} (sha256 {sha})" for sha, name in manifest.inputs.items()
                   if sha not in pinned)
    if missing or extra:
        raise ReleaseError(
            f"--inputs {inputs} is not this build's inputs: "
            + "; ".join([*(["missing " + ", ".join(missing)] if missing else []),
                         *(["not pinned by the build " + ", ".join(extra)] if extra else [])]))
    return manifest


def publish_release(
    *,
    eif: Path,
    measurements: Path,
    out_dir: Path,
    signer: EnvelopeSigner,
    builder_version: str,
    source_commit: str | None = None,
    byproducts: Mapping[str, str] | None = None,
    inputs_location: str | None = None,
    inputs: Path | None = None,
) -> ReleaseArtifacts:
    """Publish the build's measurements, provenance and signature into `out_dir`; `byproducts`
    (name -> hex SHA-256 of files generated from the release) are named in the provenance, and so
    is `inputs_location`, where the release's pinned inputs are published (see
    `provenance.check_inputs_location`). `inputs` is a local copy of what is published there (a
    directory of `inputs export`, or an OCI layout of `inputs export --oci`): it must hold exactly
    the build's pinned debs and wheels, and its manifest's digest goes into the provenance, so
    whoever fetches the inputs from the location can check them.

    Raises:
        ReleaseError: the measurements do not describe the EIF, the release already exists with
            other content, `inputs` is unreadable or holds other inputs than the build's, or the
            fresh signature does not verify.
        ReleaseKeyError: the signer failed (KMS, key file).
    """
    try:
        data = measurements.read_bytes()
        published = load_measurements(data)
    except OSError as e:
        raise ReleaseError(f"cannot read {measurements}: {e.strerror}") from e
    except VerifyError as e:
        raise ReleaseError(f"{measurements}: {e.diagnostics()}") from e
    published = PublishedMeasurements(
        published.pcrs, published.hash_algorithm, published.sentinel, str(measurements)
    )
    eif_sha256 = sha256_file(eif)
    # (1) Never sign measurements of some other image.
    _check_describes(published, eif, eif_sha256)
    sentinel = published.sentinel or {}
    version, mode = str(sentinel["version"]), str(sentinel["mode"])
    out_dir.mkdir(parents=True, exist_ok=True)

    # (2), (3) The files first: the signature names them by digest.
    dest = published_path(out_dir, version, mode)
    _write_once(dest, data)
    inputs_manifest = _inputs_manifest(inputs, sentinel, version) if inputs is not None else None
    commit = source_commit if source_commit is not None else git_commit(out_dir)
    statement = provenance_statement(
        published, eif_name=eif.name, builder_version=builder_version, source_commit=commit,
        byproducts=byproducts, inputs_location=inputs_location, inputs_manifest=inputs_manifest,
    )
    provenance = dest.with_name(dest.stem + ".provenance.json")
    provenance.write_bytes(dumps_provenance(statement))

    # (4) One small statement binds all three; it fits KMS's 4096-byte raw message limit.
    subjects = {
        dest.name: sha256_file(dest),
        provenance.name: sha256_file(provenance),
        eif.name: eif_sha256,
    }
    signed = release_statement(version=version, mode=mode, pcrs=published.pcrs, subjects=subjects)
    payload = json.dumps(signed, indent=2, sort_keys=True).encode()
    envelope = sign_envelope(payload, [signer])
    signature = dest.with_name(dest.name + ".sig")
    signature.write_bytes(envelope.to_json())

    # (5) Check as a customer would, before anything is announced.
    check = verify_release(
        dest, signer.public_key(), signature=signature, provenance=provenance, eif=eif, fail_fast=False
    )
    if not check:
        failures = "; ".join(r.error.diagnostics() for r in check.results if r.error is not None)
        raise ReleaseError(f"the release signature does not verify: {failures}")

    # (6)
    readme = out_dir / "README.md"
    signer_id = key_id(signer.public_key())
    update_release_table(readme, release_row(published, eif_sha256, signer_id))
    logger.info("published %s (%s) signed by %s", version, mode, signer_id)
    return ReleaseArtifacts(dest, signature, provenance, readme, signer_id)
