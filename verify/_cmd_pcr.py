"""`python -m verify pcr IMAGE.eif [--measurements FILE]... [--json]`, and nitro-cli's file PCRs:
`pcr --signing-certificate CERT.pem` (PCR8 of a certificate) and `pcr --input FILE`.

Exit 0: a sound EIF (and, with --measurements, one of the files matches every PCR it publishes;
give several during a rolling deploy). Exit 1: sound, but no file matches. Exit 2: not a sound EIF
(structure, CRC, a signature that does not parse or verify) or an unreadable measurements file.

`--json` prints exactly `nitro-cli describe-eif`'s object (verify.eif.describe). Ours is added only
with --measurements, under the one key nitro-cli never uses, `Comparison`: `Matches`, `Matched`
(the file that matched, or null), `Measurements`/`Differences` (that file's, or the first
file's), and `Files` (every file's result). `--signing-certificate`/`--input` print nitro-cli's
`pcr` object: {"PCR8": hex} or {"PCR": hex}, i.e. SHA384(zeros(48) || SHA384(DER or file bytes)).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from verify._cli import emit_json, stderr_console
from verify.errors import MalformedEif, MalformedInput, PcrMismatch, SignatureInvalid
from verify.measurements import MeasurementsMatch, load_measurements_set, match_measurements
from verify.pcr import EifMeasurements, extend, measure_eif
from verify.terminal import markup_safe


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pcr",
        help="compute an EIF's PCRs (as nitro-cli does) and compare with published ones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE.eif", nargs="?", help="the enclave image file")
    parser.add_argument(
        "--measurements",
        metavar="FILE",
        action="append",
        help="published measurements (Sentinel's measurements/*.json or nitro-cli's JSON output); "
        "repeat to accept any of several (rolling deploy)",
    )
    parser.add_argument(
        "--signing-certificate", metavar="CERT", help="print PCR8 of this PEM certificate"
    )
    parser.add_argument("--input", metavar="FILE", help="print the PCR of a file's bytes")
    parser.add_argument(
        "--json", action="store_true", help="print nitro-cli describe-eif style JSON on stdout"
    )
    parser.set_defaults(func=run)


def certificate_pcr8(data: bytes, source: str = "certificate") -> bytes:
    """PCR8 as nitro-cli computes it for a signing certificate: the extend of its DER's SHA-384.

    Raises:
        MalformedInput: not a PEM (or DER) X.509 certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise MalformedInput(f"{source}: not a PEM or DER X.509 certificate ({e})") from e
    return extend(hashlib.sha384(cert.public_bytes(Encoding.DER)).digest())


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise MalformedInput(f"{option} {path}: {e.strerror or e}") from e


def _file_pcr(args: argparse.Namespace) -> int:
    if args.image is not None or args.measurements:
        raise MalformedInput("--signing-certificate/--input take no IMAGE.eif or --measurements")
    if args.signing_certificate is not None and args.input is not None:
        raise MalformedInput("give one of --signing-certificate and --input, not both")
    if args.signing_certificate is not None:
        path = args.signing_certificate
        key, value = "PCR8", certificate_pcr8(_read(path, "--signing-certificate"), path)
    else:
        path = args.input
        key, value = "PCR", extend(hashlib.sha384(_read(path, "--input")).digest())
    if args.json:
        emit_json({key: value.hex()})
    else:
        stderr_console().print(f"[bold]{key:<10}[/] {value.hex()}  {markup_safe(path)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.signing_certificate is not None or args.input is not None:
        return _file_pcr(args)
    if args.image is None:
        raise MalformedInput("pcr: give IMAGE.eif, --signing-certificate CERT or --input FILE")
    # Read the published files first: a typo in a path should not cost a full pass over the EIF.
    published = load_measurements_set(args.measurements) if args.measurements else None
    measured = measure_eif(args.image)
    match = match_measurements(published, measured.pcrs) if published else None

    if args.json:
        doc = measured.describe()
        if match is not None:
            doc["Comparison"] = comparison_json(match)
        emit_json(doc)
    else:
        _print_human(args.image, measured)
    console = stderr_console()
    if match is not None and match.matched is None:
        for candidate, diffs in zip(match.candidates, match.diffs, strict=True):
            for d in diffs:
                console.print(f"[red]differs[/] {markup_safe(candidate.source)}: "
                              f"{markup_safe(d.describe())}")

    try:
        measured.check_sound()
    except SignatureInvalid as e:
        # A signature that does not verify makes the file unsound: exit 2, like a CRC error.
        section = measured.image.signature
        raise MalformedEif(
            f"signature does not verify: {measured.signature_error}",
            offset=section.offset if section else None,
            section=section.label if section else None,
        ) from e
    if match is not None:
        matched = match.matched
        if matched is None:
            if len(match.candidates) == 1:
                names = ", ".join(f"PCR{d.index}" for d in match.diffs[0])
                raise PcrMismatch(f"{names} differ from {match.candidates[0].source}")
            raise PcrMismatch(f"no measurements file matches: {match.describe_failure()}")
        console.print(markup_safe(f"OK: every PCR in {matched.source} matches {args.image}"))
    return 0


def comparison_json(match: MeasurementsMatch) -> dict[str, Any]:
    """Our `Comparison` key: the matched file's (or the first file's) result, and every file's."""
    detail = match.to_json()
    matched = match.matched
    index = 0 if matched is None else match.candidates.index(matched)
    chosen = detail["Files"][index]
    return {
        "Measurements": chosen["Measurements"],
        "Matches": matched is not None,
        "Matched": detail["Matched"],
        "Differences": chosen["Differences"],
        "Files": detail["Files"],
    }


def _print_human(image: str, m: EifMeasurements) -> None:
    console = stderr_console()
    rows: list[tuple[str, str]] = [("EIF", f"{image} (version {m.version})")]
    if m.metadata is not None:
        rows.append(("image", f"{m.metadata.get('ImageName')} {m.metadata.get('ImageVersion')}"))
    rows.append(("sections", ", ".join(s.type.label for s in m.image.sections)))
    rows.append(("CRC32", {True: "ok", False: "MISMATCH", None: "absent (version 1)"}[m.crc_ok]))
    if m.is_signed:
        rows.append(("signature", "verifies" if m.signature_ok else "DOES NOT VERIFY"))
    else:
        rows.append(("signature", "unsigned"))
    rows += [(f"PCR{i}", v.hex()) for i, v in sorted(m.pcrs.items())]
    for key, value in rows:
        console.print(f"[bold]{key:<10}[/] {markup_safe(value)}")
