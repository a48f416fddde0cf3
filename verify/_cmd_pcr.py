"""`python -m verify pcr IMAGE.eif [--measurements FILE] [--json]`.

Exit 0: a sound EIF (and, with --measurements, every published PCR matches). Exit 1: sound, but a
PCR differs. Exit 2: not a sound EIF (structure, CRC, a signature that does not parse or verify)
or an unreadable measurements file. `--json` prints nitro-cli's describe-eif shape on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from verify._cli import emit_json, stderr_console
from verify.errors import MalformedEif, PcrMismatch, SignatureInvalid
from verify.measurements import PcrDiff, diff_pcrs, load_measurements
from verify.pcr import EifMeasurements, measure_eif
from verify.terminal import markup_safe


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pcr",
        help="compute an EIF's PCRs (as nitro-cli does) and compare with published ones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE.eif", help="the enclave image file")
    parser.add_argument(
        "--measurements",
        metavar="FILE",
        help="published measurements (Sentinel's measurements/*.json or nitro-cli's JSON output)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print nitro-cli describe-eif style JSON on stdout"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Read the published file first: a typo in its path should not cost a full pass over the EIF.
    published = load_measurements(args.measurements) if args.measurements else None
    measured = measure_eif(args.image)
    diffs: list[PcrDiff] = []
    if published is not None:
        diffs = diff_pcrs(published.pcrs, measured.pcrs)

    if args.json:
        doc = measured.describe()
        if published is not None:
            doc["Comparison"] = _comparison(published.source, diffs)
        emit_json(doc)
    else:
        _print_human(args.image, measured)
    console = stderr_console()
    for d in diffs:
        console.print(f"[red]differs[/] {markup_safe(d.describe())}")

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
    if diffs and published is not None:  # diffs come only from a published file
        names = ", ".join(f"PCR{d.index}" for d in diffs)
        raise PcrMismatch(f"{names} differ from {published.source}")
    if published is not None:
        console.print(markup_safe(f"OK: every PCR in {published.source} matches {args.image}"))
    return 0


def _comparison(source: str, diffs: list[PcrDiff]) -> dict[str, Any]:
    return {
        "Measurements": source,
        "Matches": not diffs,
        "Differences": [
            {
                "PCR": d.index,
                "Expected": d.expected.hex() if d.expected is not None else None,
                "Actual": d.actual.hex() if d.actual is not None else None,
            }
            for d in diffs
        ],
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
