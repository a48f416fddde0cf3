"""`python -m reproducible inputs export DIR`: every pinned input, with a manifest, in one directory.

A release publishes that directory next to its measurements, so the build stays reproducible after
the pinned versions leave the registries: `build --inputs DIR` (or a URL template pointing at a copy
of it) serves every input by its sha256.

`inputs export --oci DEST` writes the same inputs as an OCI artifact in an OCI image layout
(`oci-layout`, `index.json`, `blobs/sha256/<hex>`; or, for a DEST ending in `.tar`, an oci-archive
of it): one layer per input titled by its exported file name, plus the directory format's
`manifest.json` as a layer, so registry tools (oras, skopeo) can push and pull it and
`build --inputs LAYOUT` reads it back. Its bytes depend on the lock alone: same lock, same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproducible.cache import Cache, sha256_file
from reproducible.errors import BuildError
from reproducible.fetch import fetch_all
from reproducible.lock import Lock
from reproducible.sources import MANIFEST, OCI_LAYOUT, Pin, export_name, kind

SCHEMA = 1

ARTIFACT_TYPE = "application/vnd.sentinel.inputs.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
INPUTS_MANIFEST_MEDIA_TYPE = "application/vnd.sentinel.inputs.manifest.v1+json"
DEB_MEDIA_TYPE = "application/vnd.debian.binary-package"
# No media type is registered for wheels; a wheel is a zip archive (PEP 427).
WHEEL_MEDIA_TYPE = "application/zip"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
EMPTY = b"{}"


@dataclass(frozen=True)
class Exported:
    manifest: Path
    count: int
    size: int


@dataclass(frozen=True)
class ExportedOci:
    """An OCI export: where it is, the artifact manifest's digest (what `oras`/`skopeo` address
    as `@sha256:…`), the ref name it is tagged with in `index.json`, and the inputs' count and
    total size."""

    dest: Path
    manifest_sha256: str
    ref_name: str
    count: int
    size: int


@dataclass(frozen=True)
class InputsManifest:
    """The digest that identifies a set of exported inputs, as the release provenance records it:
    sha256 of `manifest.json` (directory format) or of the OCI artifact manifest (OCI layout);
    `inputs` maps each input's sha256 to its file name."""

    sha256: str
    media_type: str
    inputs: dict[str, str]


def _manifest_doc(lock: Lock, lock_path: Path, entries: list[dict[str, object]]) -> bytes:
    doc = {"schema": SCHEMA, "lock_sha256": sha256_file(lock_path),
           "source_date_epoch": lock.source_date_epoch,
           "inputs": sorted(entries, key=lambda e: (str(e["kind"]), str(e["name"]), str(e["filename"])))}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _entry(pin: Pin, size: int) -> dict[str, object]:
    return {"kind": kind(pin), "name": pin.name, "version": pin.version,
            "filename": export_name(pin), "sha256": pin.sha256, "size": size}


def _copy_in(src: Path, target: Path, sha256: str) -> None:
    """Copy `src` to `target` atomically, unless `target` already holds those bytes."""
    if target.is_file() and sha256_file(target) == sha256:
        return
    tmp = target.with_name(f".{target.name}.part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot write {target}: {e.strerror}") from e


def export_inputs(lock: Lock, lock_path: Path, cache: Cache, dest: Path, *,
                  offline: bool = False, inputs: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> Exported:
    """Fetch every pin (as a build does) and copy it into `dest` with `manifest.json`.

    Raises:
        BuildError: an input cannot be fetched (see `fetch_all`), or `dest` cannot be written.
    """
    fetch_all(lock, cache, offline=offline, inputs=inputs, progress=progress)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {dest}: {e.strerror}") from e
    entries: list[dict[str, object]] = []
    total = 0
    pins: list[Pin] = [*lock.debs, *lock.wheels]
    for pin in pins:
        src = cache.get(pin.label, pin.sha256)
        assert src is not None  # fetch_all put it there
        target = dest / export_name(pin)
        _copy_in(src, target, pin.sha256)
        size = target.stat().st_size
        total += size
        entries.append(_entry(pin, size))
    manifest = dest / MANIFEST
    manifest.write_bytes(_manifest_doc(lock, lock_path, entries))
    return Exported(manifest, len(entries), total)


# --- OCI ------------------------------------------------------------------------------------


def _json(doc: dict[str, Any]) -> bytes:
    # Canonical enough to be stable: sorted keys, no whitespace, no timestamps anywhere.
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, data_sha256: str, size: int,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": f"sha256:{data_sha256}", "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


@dataclass(frozen=True)
class _Layout:
    """What an OCI export consists of: blob sha256 -> (file to copy, or bytes), and the two
    small files at the layout's root."""

    blobs: dict[str, Path | bytes]
    index: bytes
    manifest_sha256: str
    size: int


def _plan_oci(lock: Lock, lock_path: Path, cache: Cache, ref_name: str,
              other_refs: list[dict[str, Any]]) -> _Layout:
    blobs: dict[str, Path | bytes] = {}
    entries: list[dict[str, object]] = []
    layers: list[dict[str, Any]] = []
    total = 0
    pins: list[Pin] = [*lock.debs, *lock.wheels]
    for pin in sorted(pins, key=lambda p: (kind(p), p.name, export_name(p))):
        src = cache.get(pin.label, pin.sha256)
        assert src is not None  # fetch_all put it there
        size = src.stat().st_size
        total += size
        blobs[pin.sha256] = src
        entries.append(_entry(pin, size))
        media = WHEEL_MEDIA_TYPE if kind(pin) == "wheel" else DEB_MEDIA_TYPE
        layers.append(_descriptor(media, pin.sha256, size, {TITLE: export_name(pin)}))
    doc = _manifest_doc(lock, lock_path, entries)
    doc_sha = hashlib.sha256(doc).hexdigest()
    blobs[doc_sha] = doc
    layers.append(_descriptor(INPUTS_MANIFEST_MEDIA_TYPE, doc_sha, len(doc), {TITLE: MANIFEST}))
    empty_sha = hashlib.sha256(EMPTY).hexdigest()
    blobs[empty_sha] = EMPTY
    manifest = _json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(EMPTY_MEDIA_TYPE, empty_sha, len(EMPTY)),
        "layers": layers,
    })
    manifest_sha = hashlib.sha256(manifest).hexdigest()
    blobs[manifest_sha] = manifest
    entry = _descriptor(MANIFEST_MEDIA_TYPE, manifest_sha, len(manifest), {REF_NAME: ref_name})
    entry["artifactType"] = ARTIFACT_TYPE
    refs = sorted([*other_refs, entry],
                  key=lambda d: (str(d.get("annotations", {}).get(REF_NAME, "")), str(d["digest"])))
    index = _json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": refs})
    return _Layout(blobs, index, manifest_sha, total)


def _other_refs(dest: Path, ref_name: str) -> list[dict[str, Any]]:
    """Entries of an existing layout's index.json that are not `ref_name` (kept: a layout may
    hold the inputs of several releases, each under its version)."""
    if not dest.exists():
        return []
    if not dest.is_dir():
        raise BuildError(f"--oci {dest}: exists and is not a directory")
    if not (dest / OCI_LAYOUT).is_file():
        if any(dest.iterdir()):
            raise BuildError(f"--oci {dest}: a non-empty directory that is not an OCI layout; "
                             "refusing to write into it")
        return []
    try:
        doc = json.loads((dest / "index.json").read_text())
        refs = [m for m in doc["manifests"] if isinstance(m, dict)]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BuildError(f"--oci {dest}: unreadable index.json ({e})") from e
    return [m for m in refs if m.get("annotations", {}).get(REF_NAME) != ref_name]


def _write_file(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot write {target}: {e.strerror}") from e


def _write_layout(plan: _Layout, dest: Path) -> None:
    blobs = dest / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {blobs}: {e.strerror}") from e
    for sha, content in sorted(plan.blobs.items()):
        if isinstance(content, Path):
            _copy_in(content, blobs / sha, sha)
        elif not ((blobs / sha).is_file() and (blobs / sha).read_bytes() == content):
            _write_file(blobs / sha, content)
    _write_file(dest / OCI_LAYOUT, _json({"imageLayoutVersion": "1.0.0"}))
    # index.json last: a layout interrupted before it names no manifest with missing blobs.
    _write_file(dest / "index.json", plan.index)


def _tar_members(plan: _Layout) -> Iterator[tuple[str, Path | bytes | None]]:
    yield "blobs/", None
    yield "blobs/sha256/", None
    for sha, content in sorted(plan.blobs.items()):
        yield f"blobs/sha256/{sha}", content
    yield "index.json", plan.index
    yield OCI_LAYOUT, _json({"imageLayoutVersion": "1.0.0"})


def _write_archive(plan: _Layout, dest: Path, mtime: int) -> None:
    """An oci-archive (the layout as a tar): sorted members, every mtime the lock's
    SOURCE_DATE_EPOCH, owner 0:0 without names, fixed modes, so its bytes are the lock's too."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                     format=tarfile.USTAR_FORMAT) as tar:
            for name, content in _tar_members(plan):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                if content is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif isinstance(content, Path):
                    info.mode, info.size = 0o644, content.stat().st_size
                    with open(content, "rb") as f:
                        tar.addfile(info, f)
                else:
                    info.mode, info.size = 0o644, len(content)
                    tar.addfile(info, io.BytesIO(content))
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"cannot write {dest}: {e.strerror}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_oci(lock: Lock, lock_path: Path, cache: Cache, dest: Path, *, ref_name: str,
               offline: bool = False, inputs: Path | None = None,
               progress: Callable[[str], None] | None = None) -> ExportedOci:
    """Fetch every pin (as a build does) and write them as an OCI artifact into the image layout
    `dest` (or, when `dest` ends in `.tar`, an oci-archive file), tagged `ref_name` in its
    `index.json`. Other refs of an existing layout are kept; an archive is written whole.

    Raises:
        BuildError: an input cannot be fetched (see `fetch_all`), or `dest` is not an OCI layout
            (nor absent, nor empty), or cannot be written.
    """
    if not ref_name or any(c.isspace() for c in ref_name):
        raise BuildError(f"--ref {ref_name!r}: empty or has whitespace")
    archive = dest.suffix == ".tar"
    fetch_all(lock, cache, offline=offline, inputs=inputs, progress=progress)
    if archive:
        if dest.is_dir():
            raise BuildError(f"--oci {dest}: a directory; an oci-archive is a file")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BuildError(f"cannot create {dest.parent}: {e.strerror}") from e
        plan = _plan_oci(lock, lock_path, cache, ref_name, [])
        _write_archive(plan, dest, lock.source_date_epoch)
    else:
        plan = _plan_oci(lock, lock_path, cache, ref_name, _other_refs(dest, ref_name))
        _write_layout(plan, dest)
    return ExportedOci(dest, plan.manifest_sha256, ref_name,
                       len(lock.debs) + len(lock.wheels), plan.size)


# --- reading an export back (release provenance) ---------------------------------------------


def read_inputs_manifest(path: Path, *, ref_name: str | None = None) -> InputsManifest:
    """The identifying digest of exported inputs at `path`: a directory of `inputs export`
    (sha256 of its manifest.json) or an OCI layout of `inputs export --oci` (sha256 of the
    artifact manifest tagged `ref_name` if there is one, else of the only manifest in it). The layout is checked
    as a registry would: every blob it names is present with its size, the manifest and the
    inputs manifest hash to their digests (the inputs' bytes are re-hashed when a build takes them).

    Raises:
        BuildError: neither format, malformed, ambiguous, or a named blob is missing or wrong.
    """
    if (path / MANIFEST).is_file():
        try:
            data = (path / MANIFEST).read_bytes()
            doc = json.loads(data)
            listed = {str(e["sha256"]): str(e["filename"]) for e in doc["inputs"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BuildError(f"{path / MANIFEST}: malformed ({e})") from e
        return InputsManifest(hashlib.sha256(data).hexdigest(), "application/json", listed)
    if not (path / OCI_LAYOUT).is_file():
        raise BuildError(f"{path}: neither {MANIFEST} (inputs export) nor {OCI_LAYOUT} "
                         "(inputs export --oci)")
    try:
        index = json.loads((path / "index.json").read_text())
        refs = [m for m in index["manifests"] if m.get("artifactType") == ARTIFACT_TYPE
                or m.get("mediaType") == MANIFEST_MEDIA_TYPE]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BuildError(f"{path}: unreadable index.json ({e})") from e
    tagged = [m for m in refs if m.get("annotations", {}).get(REF_NAME) == ref_name]
    if ref_name is not None and len(tagged) == 1:
        refs = tagged
    if len(refs) != 1:
        names = sorted(str(m.get("annotations", {}).get(REF_NAME)) for m in refs)
        raise BuildError(f"{path}: {len(refs)} manifests"
                         + (f" ({', '.join(names)})" if names else "")
                         + (f", none tagged {ref_name!r}" if ref_name else "")
                         + "; expected one inputs artifact")
    manifest_sha, manifest = _read_blob(path, refs[0], "the artifact manifest")
    try:
        doc = json.loads(manifest)
        if doc.get("artifactType") != ARTIFACT_TYPE:
            raise BuildError(f"{path}: manifest {manifest_sha} is not an inputs artifact "
                             f"(artifactType {doc.get('artifactType')!r})")
        layers = list(doc["layers"])
        titles = {str(d["digest"]).removeprefix("sha256:"): str(d["annotations"][TITLE])
                  for d in layers}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BuildError(f"{path}: malformed manifest {manifest_sha} ({e})") from e
    files: dict[str, str] = {}
    for d in layers:
        sha = str(d["digest"]).removeprefix("sha256:")
        if titles[sha] == MANIFEST:
            _read_blob(path, d, f"layer {MANIFEST}")  # small: re-hashed here
        else:
            _check_blob(path, d, f"layer {titles[sha]}")
            files[sha] = titles[sha]
    return InputsManifest(manifest_sha, MANIFEST_MEDIA_TYPE, files)


def _blob_path(root: Path, descriptor: Any, what: str) -> tuple[str, Path, int]:
    try:
        algo, _, sha = str(descriptor["digest"]).partition(":")
        size = int(descriptor["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise BuildError(f"{root}: {what}: malformed descriptor ({e})") from e
    if algo != "sha256" or len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise BuildError(f"{root}: {what}: digest {descriptor['digest']!r} is not sha256:<hex>")
    return sha, root / "blobs" / "sha256" / sha, size


def _check_blob(root: Path, descriptor: Any, what: str) -> str:
    sha, path, size = _blob_path(root, descriptor, what)
    try:
        got = path.stat().st_size
    except OSError as e:
        raise BuildError(f"{root}: {what} (sha256 {sha}): blob missing ({e.strerror})") from e
    if got != size:
        raise BuildError(f"{root}: {what} (sha256 {sha}): {got} bytes, the manifest says {size}")
    return sha


def _read_blob(root: Path, descriptor: Any, what: str) -> tuple[str, bytes]:
    sha = _check_blob(root, descriptor, what)
    data = (root / "blobs" / "sha256" / sha).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise BuildError(f"{root}: {what} (sha256 {sha}): its bytes hash to something else")
    return sha, data


__all__ = ["ARTIFACT_TYPE", "Exported", "ExportedOci", "InputsManifest", "export_inputs",
           "export_oci", "read_inputs_manifest"]
