"""Published measurements: the file format in measurements/README.md, and comparing PCRs.

A measurements file is JSON whose `Measurements` member has exactly nitro-cli's shape, so the
output of `nitro-cli build-enclave` or `nitro-cli describe-eif` is accepted as it is. Sentinel's
own files add a `Sentinel` member describing how the image was built; it is informational and
never changes what is compared.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verify.eif import EifImage
from verify.errors import MalformedMeasurements

__all__ = [
    "HASH_ALGORITHM",
    "MeasurementsMatch",
    "PcrDiff",
    "PublishedMeasurements",
    "describe_sections",
    "diff_pcrs",
    "dump_measurements",
    "load_measurements",
    "load_measurements_set",
    "match_measurements",
    "measurements_document",
]

HASH_ALGORITHM = "Sha384 { ... }"
SCHEMA = 1
MAX_FILE_SIZE = 16 << 20  # bytes; real files are a few KiB
_PCR_KEY = re.compile(r"PCR(\d{1,2})")
_HEX96 = re.compile(r"[0-9a-fA-F]{96}")


@dataclass(frozen=True)
class PublishedMeasurements:
    """PCRs someone published, plus Sentinel's build description when the file has one."""

    pcrs: dict[int, bytes]
    hash_algorithm: str
    sentinel: dict[str, Any] | None = None
    source: str = "<bytes>"


@dataclass(frozen=True)
class PcrDiff:
    """One PCR that differs; None means the PCR is absent on that side (e.g. PCR8 unsigned)."""

    index: int
    expected: bytes | None
    actual: bytes | None

    def describe(self) -> str:
        def show(v: bytes | None) -> str:
            return "absent" if v is None else v.hex()

        return f"PCR{self.index}: expected {show(self.expected)}, got {show(self.actual)}"


def load_measurements(source: str | os.PathLike[str] | bytes) -> PublishedMeasurements:
    """Parse a measurements file (Sentinel's or nitro-cli's JSON) from a path or raw bytes.

    Raises:
        MalformedMeasurements: missing file, not JSON, no `Measurements` object, a PCR value that
            is not 96 hex digits, or a hash algorithm other than SHA-384.
    """
    if isinstance(source, bytes):
        data, name = source, "<bytes>"
    else:
        name = os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise MalformedMeasurements(f"no such measurements file: {name}") from None
        except OSError as e:
            raise MalformedMeasurements(
                f"cannot read measurements file {name}: {e.strerror}"
            ) from e
    if len(data) > MAX_FILE_SIZE:
        raise MalformedMeasurements(f"{name}: larger than {MAX_FILE_SIZE} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedMeasurements(f"{name}: not UTF-8 JSON ({e})") from e
    if not isinstance(doc, dict) or "Measurements" not in doc:
        raise MalformedMeasurements(
            f'{name}: expected a JSON object with a "Measurements" member (Sentinel\'s or '
            "nitro-cli's format)"
        )
    block = doc["Measurements"]
    if not isinstance(block, dict):
        raise MalformedMeasurements(f'{name}: "Measurements" must be an object')
    algorithm = block.get("HashAlgorithm", HASH_ALGORITHM)
    if not isinstance(algorithm, str) or not algorithm.startswith("Sha384"):
        raise MalformedMeasurements(
            f"{name}: HashAlgorithm {algorithm!r} is not SHA-384 (got {algorithm!r}, expected "
            f"{HASH_ALGORITHM!r})"
        )
    pcrs: dict[int, bytes] = {}
    for key, value in block.items():
        if key == "HashAlgorithm":
            continue
        match = _PCR_KEY.fullmatch(key)
        if match is None or int(match.group(1)) > 31:
            raise MalformedMeasurements(f'{name}: unexpected key {key!r} in "Measurements"')
        if not isinstance(value, str) or not _HEX96.fullmatch(value):
            raise MalformedMeasurements(
                f"{name}: {key} must be 96 hex digits (a SHA-384 value), got {value!r}"
            )
        pcrs[int(match.group(1))] = bytes.fromhex(value)
    if not pcrs:
        raise MalformedMeasurements(f'{name}: "Measurements" holds no PCR values')
    sentinel = doc.get("Sentinel")
    if sentinel is not None and not isinstance(sentinel, dict):
        raise MalformedMeasurements(f'{name}: "Sentinel" must be an object')
    if sentinel is not None and sentinel.get("schema") != SCHEMA:
        raise MalformedMeasurements(
            f"{name}: Sentinel schema {sentinel.get('schema')!r} is not supported (expected {SCHEMA})"
        )
    return PublishedMeasurements(
        pcrs=pcrs, hash_algorithm=algorithm, sentinel=sentinel, source=name
    )


def diff_pcrs(
    expected: dict[int, bytes],
    actual: dict[int, bytes],
    indices: Iterable[int] | None = None,
) -> list[PcrDiff]:
    """The PCRs that differ, in index order. `indices` defaults to every expected PCR."""
    wanted = sorted(set(expected) if indices is None else set(indices))
    return [
        PcrDiff(i, expected.get(i), actual.get(i))
        for i in wanted
        if expected.get(i) != actual.get(i)
    ]


@dataclass(frozen=True)
class MeasurementsMatch:
    """PCRs compared with several published files (a rolling deploy accepts the old and the new
    release): the first file, in the order given, whose every compared PCR is equal matches."""

    candidates: tuple[PublishedMeasurements, ...]
    diffs: tuple[tuple[PcrDiff, ...], ...]  # per candidate, in the same order

    @property
    def matched(self) -> PublishedMeasurements | None:
        for candidate, diffs in zip(self.candidates, self.diffs, strict=True):
            if not diffs:
                return candidate
        return None

    def describe_failure(self) -> str:
        """One line naming, per file, its first differing PCR."""
        return "; ".join(
            f"{c.source}: {d[0].describe()}" + (f" (+{len(d) - 1} more)" if len(d) > 1 else "")
            for c, d in zip(self.candidates, self.diffs, strict=True)
        )

    def to_json(self) -> dict[str, Any]:
        matched = self.matched
        return {
            "Matched": None if matched is None else matched.source,
            "Files": [
                {
                    "Measurements": c.source,
                    "Matches": not d,
                    "Differences": [
                        {
                            "PCR": x.index,
                            "Expected": None if x.expected is None else x.expected.hex(),
                            "Actual": None if x.actual is None else x.actual.hex(),
                        }
                        for x in d
                    ],
                }
                for c, d in zip(self.candidates, self.diffs, strict=True)
            ],
        }


def load_measurements_set(paths: Iterable[str | os.PathLike[str]]) -> list[PublishedMeasurements]:
    """Every file of a repeated `--measurements`, in order.

    Raises:
        MalformedMeasurements: a file does not load (names it), or one is given twice.
    """
    out: list[PublishedMeasurements] = []
    seen: set[str] = set()
    for path in paths:
        name = os.fspath(path)
        if name in seen:
            raise MalformedMeasurements(f"--measurements {name} given twice")
        seen.add(name)
        out.append(load_measurements(path))
    if not out:
        raise MalformedMeasurements("no measurements file given")
    return out


def match_measurements(
    candidates: Iterable[PublishedMeasurements],
    actual: dict[int, bytes],
    indices: Iterable[int] | None = None,
) -> MeasurementsMatch:
    """Compare `actual` with each candidate (its every PCR, or `indices`)."""
    chosen = list(candidates)
    wanted = None if indices is None else list(indices)
    return MeasurementsMatch(
        tuple(chosen), tuple(tuple(diff_pcrs(c.pcrs, actual, wanted)) for c in chosen)
    )


def measurements_document(
    pcrs: dict[int, bytes], *, sentinel: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A measurements file's content. `sentinel` is the build description; `schema` is filled in.

    Raises:
        ValueError: a PCR value is not 48 bytes.
    """
    block: dict[str, Any] = {"HashAlgorithm": HASH_ALGORITHM}
    for index in sorted(pcrs):
        if len(pcrs[index]) != 48:
            raise ValueError(f"PCR{index} must be 48 bytes, got {len(pcrs[index])}")
        block[f"PCR{index}"] = pcrs[index].hex()
    doc: dict[str, Any] = {"Measurements": block}
    if sentinel is not None:
        doc["Sentinel"] = {"schema": SCHEMA, **{k: v for k, v in sentinel.items() if k != "schema"}}
    return doc


def describe_sections(image: EifImage) -> list[dict[str, Any]]:
    """The `Sentinel.sections` list for an image: type, header offset and body size, in order."""
    return [{"type": s.type.label, "offset": s.offset, "size": s.size} for s in image.sections]


def dump_measurements(doc: dict[str, Any], dest: str | os.PathLike[str] | None = None) -> bytes:
    """Stable bytes for a measurements document (2-space indent, newline); optionally written."""
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    if dest is not None:
        Path(dest).write_bytes(data)
    return data
