"""Build provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

Everything comes from the build's measurements file (`Sentinel` member: version, mode,
SOURCE_DATE_EPOCH, pinned inputs with their digests) plus the source commit, and no wall-clock time
goes in, so rebuilding the same commit gives byte-identical provenance.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reproducible.errors import BuildError
from verify.measurements import PublishedMeasurements
from verify.signed_release import SLSA_PROVENANCE_TYPE, STATEMENT_TYPE

if TYPE_CHECKING:
    from reproducible.inputs import InputsManifest

__all__ = ["BUILD_TYPE", "BUILDER_ID", "INPUTS_MANIFEST_NAME", "check_inputs_location",
           "dumps_provenance", "git_commit", "inputs_manifest_dependency", "provenance_statement"]

BUILD_TYPE = "urn:sentinel:reproducible-build:v1"
BUILDER_ID = "urn:sentinel:builder:python-m-reproducible"
INPUTS_MANIFEST_NAME = "sentinel inputs manifest"


def git_commit(repo: Path) -> str | None:
    """The checked-out commit of `repo`, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None


def _dependency(item: dict[str, Any]) -> dict[str, Any]:
    digest = item.get("sha256")
    if not isinstance(digest, str) or not isinstance(item.get("name"), str):
        raise BuildError(f"measurements input without name and sha256: {item!r}")
    annotations = {k: v for k, v in item.items() if k not in ("name", "sha256")}
    entry: dict[str, Any] = {"name": item["name"], "digest": {"sha256": digest}}
    if annotations:
        entry["annotations"] = annotations
    return entry


def check_inputs_location(location: str) -> str:
    """Where a release's inputs are: a URL (`https://…`, `oci://…`, `file:…`), or a path to an
    exported inputs directory or an OCI layout of them, checked to be one. Recorded as given:
    the caller chooses what a reader can resolve (a relative path next to the release, a URL).

    Raises:
        BuildError: empty, contains whitespace or control characters, or a path that is neither.
    """
    import urllib.parse

    from reproducible.errors import FetchError
    from reproducible.sources import InputsDir

    if not location or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in location):
        raise BuildError(f"--inputs-location {location!r}: empty, or has whitespace or control "
                         "characters")
    if _is_url(location):
        if not urllib.parse.urlsplit(location).scheme:
            raise BuildError(f"--inputs-location {location!r}: not a URL")
        return location
    try:
        InputsDir(Path(location)).files()
    except FetchError as e:
        raise BuildError(f"--inputs-location {location!r}: not an inputs directory or OCI layout "
                         f"({e})") from e
    return location


def _is_url(location: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", location) is not None


def inputs_manifest_dependency(manifest: InputsManifest, location: str | None) -> dict[str, Any]:
    """A SLSA v1 ResourceDescriptor for the exported inputs' manifest: its digest (sha256 of the
    directory format's manifest.json, or of the OCI artifact manifest, which is what a registry
    addresses as `@sha256:…`), its media type, and `uri` when the location is a URL. Whoever
    fetches the inputs from wherever they were published checks them against this digest; the
    manifest in turn names every input by sha256."""
    entry: dict[str, Any] = {"name": INPUTS_MANIFEST_NAME, "digest": {"sha256": manifest.sha256},
                             "mediaType": manifest.media_type}
    if location is not None and _is_url(location):
        entry["uri"] = location
    return entry


def provenance_statement(
    measurements: PublishedMeasurements,
    *,
    eif_name: str,
    builder_version: str,
    source_commit: str | None,
    byproducts: Mapping[str, str] | None = None,
    inputs_location: str | None = None,
    inputs_manifest: InputsManifest | None = None,
) -> dict[str, Any]:
    """The provenance of the EIF the measurements describe; `byproducts` (file name -> hex
    SHA-256, e.g. the deployment generated from the release) go into `runDetails.byproducts`;
    `inputs_location` (where the pinned inputs are published, so the build can be repeated after
    the registries moved on) into `externalParameters.inputsLocation`, as given; and
    `inputs_manifest` (the digest of those exported inputs) into `resolvedDependencies`, after
    the source commit (see `inputs_manifest_dependency`).

    Raises:
        BuildError: the measurements file lacks the `Sentinel` build description.
    """
    sentinel = measurements.sentinel
    if sentinel is None:
        raise BuildError(f"{measurements.source}: no Sentinel member; not a Sentinel build's output")
    for key in ("version", "mode", "source_date_epoch", "eif_sha256", "inputs"):
        if key not in sentinel:
            raise BuildError(f"{measurements.source}: Sentinel.{key} missing")
    dependencies = [_dependency(item) for item in sentinel["inputs"]]
    if inputs_manifest is not None:
        dependencies.insert(0, inputs_manifest_dependency(inputs_manifest, inputs_location))
    if source_commit is not None:
        dependencies.insert(0, {"name": "sentinel source", "digest": {"gitCommit": source_commit}})
    internal: dict[str, Any] = {
        "source_date_epoch": sentinel["source_date_epoch"],
        **{k: sentinel[k] for k in ("kernel_version", "cmdline") if k in sentinel},
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": eif_name, "digest": {"sha256": sentinel["eif_sha256"]}}],
        "predicateType": SLSA_PROVENANCE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "version": sentinel["version"], "mode": sentinel["mode"],
                    **({"inputsLocation": inputs_location} if inputs_location else {}),
                },
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {"sentinel-reproducible": builder_version},
                },
                "metadata": {"invocationId": f"sentinel-{sentinel['version']}-{sentinel['mode']}"},
                **({"byproducts": [{"name": name, "digest": {"sha256": digest}}
                                   for name, digest in sorted(byproducts.items())]}
                   if byproducts else {}),
            },
        },
    }


def dumps_provenance(statement: dict[str, Any]) -> bytes:
    """Stable JSON bytes (sorted keys) so equal statements are equal files."""
    return (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode()
