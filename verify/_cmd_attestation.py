"""`python -m verify attestation DOC | --signer ADDR`: is this document from Nitro hardware, running
our image?

With `--signer ADDR` (vsock:CID:PORT, unix:PATH, tcp:127.0.0.1:PORT) the document is fetched from
the running signer over a fresh random nonce, which it must then carry: fetch and verify in one
step. `--measurements` may be repeated (a rolling deploy): any one file must match every PCR it
publishes; the report and --json (`measurements.matched`) say which.

Every check is reported by name (rich table on stderr, `--json` on stdout). The chain is validated
now, unless `--at` names another time (archived documents: their leaf certificate lives 3 hours);
freshness is `--max-age`. At least one expectation (--measurements, --nonce, --user-data,
--public-key, --signer-address, --max-age) is required: authenticity alone says nothing about what
runs, so checking only that takes `--allow-no-policy`. A debug-mode enclave (PCR0/1/2 all zero) fails
unless `--allow-debug`.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from verify._checks import results_json
from verify._cli import emit_json, stderr_console
from verify.attestation import (
    AllOf,
    AttestationDocument,
    AttestationVerifier,
    Check,
    MaxAge,
    NonceEquals,
    NotDebugMode,
    PublicKeyEquals,
    SignerAddressEquals,
    UnsafeNoOp,
    UserDataEquals,
    VerificationReport,
    aws_nitro_root,
    decode_document_text,
    load_root_pem,
    pcrs_equal,
)
from verify.attestation import PcrMismatch as AttestationPcrMismatch
from verify.attestation.policy import debug_mode_pcrs, leaf_checks
from verify.attestation.roots import fingerprint
from verify.errors import MalformedInput
from verify.measurements import (
    MeasurementsMatch,
    PublishedMeasurements,
    load_measurements_set,
    match_measurements,
)
from verify.terminal import markup_safe


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "attestation",
        help="verify a Nitro attestation document (chain, signature, PCRs, nonce, freshness)",
        description=__doc__,
    )
    parser.add_argument(
        "document", metavar="DOC", nargs="?", help="raw CBOR or base64 file, or - for stdin"
    )
    parser.add_argument(
        "--signer", metavar="ADDR", help="fetch the document from this running signer instead"
    )
    parser.add_argument(
        "--timeout", metavar="S", type=float, default=10.0,
        help="with --signer: give up after S seconds (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--measurements", metavar="FILE", action="append",
        help="published measurements to compare; repeat to accept any of several",
    )  # fmt: skip
    parser.add_argument(
        "--pcrs",
        metavar="LIST",
        help="PCR indices to compare, e.g. 0,1,2,8 (default: every PCR in --measurements)",
    )
    parser.add_argument("--nonce", metavar="HEX", help="the nonce the document must carry")
    parser.add_argument("--user-data", metavar="HEX", help="the user_data the document must carry")
    parser.add_argument(
        "--public-key", metavar="HEX", help="the public_key the document must carry"
    )
    parser.add_argument(
        "--signer-address",
        metavar="0xADDR",
        help="the document must bind the secp256k1 key of this EVM address (Sentinel's signer key)",
    )
    parser.add_argument("--max-age", metavar="SECONDS", type=float, help="freshness bound")
    parser.add_argument(
        "--at",
        metavar="ISO8601",
        help="validation time (default: now); also 'now' for --max-age. For archived documents",
    )
    parser.add_argument(
        "--allow-no-policy",
        action="store_true",
        help="accept a document without any expectation (authenticity only; nothing about the image)",
    )
    parser.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept a debug-mode enclave (PCR0/1/2 all zero; its memory is open to the parent)",
    )
    parser.add_argument(
        "--root", metavar="PEM", help="trust this root instead of the AWS Nitro root (emulator CA)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    parser.set_defaults(func=run)


def _hex(value: str, option: str) -> bytes:
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError as e:
        raise MalformedInput(f"{option}: not hex: {value!r}") from e


def parse_time(value: str, option: str = "--at") -> datetime:
    """An ISO 8601 instant; 'Z' accepted, naive times refused (time zones are never guessed)."""
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise MalformedInput(f"{option}: not an ISO 8601 time: {value!r}") from e
    if at.utcoffset() is None:
        raise MalformedInput(f"{option}: {value!r} has no time zone; add Z or +00:00")
    return at.astimezone(UTC)


def parse_pcr_indices(text: str) -> list[int]:
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise MalformedInput(f"--pcrs: expected comma-separated indices, got {text!r}") from e
    if not indices or any(not 0 <= i <= 31 for i in indices):
        raise MalformedInput(f"--pcrs: indices must be in 0..31, got {text!r}")
    return indices


def read_input(path: str) -> bytes:
    """Bytes of a file argument, or of stdin for '-'."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise MalformedInput(f"cannot read {path}: {e.strerror}") from e


class AnyMeasurements:
    """The document's PCRs match one of several published files (the first in order that does)."""

    name = "measurements"

    def __init__(self, candidates: list[PublishedMeasurements], indices: list[int] | None) -> None:
        self._candidates = candidates
        self._indices = indices
        self.result: MeasurementsMatch | None = None

    def verify(self, document: AttestationDocument) -> None:
        self.result = match_measurements(self._candidates, dict(document.pcrs), self._indices)
        if self.result.matched is None:
            raise AttestationPcrMismatch(
                f"no measurements file matches: {self.result.describe_failure()}"
            )


def build_policy(args: argparse.Namespace, now: datetime | None) -> Check:
    checks: list[Check] = []
    if args.measurements:
        published = load_measurements_set(args.measurements)
        indices = parse_pcr_indices(args.pcrs) if args.pcrs else None
        for candidate in published:
            try:
                pcrs_equal(candidate.pcrs, indices)
            except ValueError as e:
                raise MalformedInput(f"{candidate.source}: {e}") from e
        if len(published) == 1:
            checks.extend(pcrs_equal(published[0].pcrs, indices))
        else:
            checks.append(AnyMeasurements(published, indices))
    elif args.pcrs:
        raise MalformedInput("--pcrs needs --measurements (the values to compare against)")
    if args.nonce is not None:
        checks.append(NonceEquals(_hex(args.nonce, "--nonce")))
    if args.user_data is not None:
        checks.append(UserDataEquals(_hex(args.user_data, "--user-data")))
    if args.public_key is not None:
        checks.append(PublicKeyEquals(_hex(args.public_key, "--public-key")))
    if args.signer_address is not None:
        address = _hex(args.signer_address, "--signer-address")
        if len(address) != 20:
            raise MalformedInput(
                f"--signer-address: an EVM address is 20 bytes, got {len(address)}"
            )
        checks.append(SignerAddressEquals(address))
    if args.max_age is not None:
        if args.max_age < 0:
            raise MalformedInput("--max-age must not be negative")
        checks.append(MaxAge(args.max_age, now=now))
    if not checks:
        if not args.allow_no_policy:
            raise MalformedInput(
                "no expectation given: pass --measurements, --nonce, --user-data, --public-key, "
                "--signer-address or --max-age, or --allow-no-policy to check authenticity only"
            )
        checks.append(UnsafeNoOp())
    if not args.allow_debug:
        checks.append(NotDebugMode())
    return AllOf(checks)


def measurements_json(
    files: list[str] | None, policy: Check, report: VerificationReport
) -> dict[str, Any] | None:
    """Which --measurements file matched (None when none was given)."""
    if not files:
        return None
    multi = next((c for c in leaf_checks(policy) if isinstance(c, AnyMeasurements)), None)
    if multi is not None:
        if multi.result is None:  # the document was refused before the PCRs were compared
            return {"matched": None, "files": files}
        return {"matched": multi.result.to_json()["Matched"], "files": files}
    pcrs_ok = bool(report.attestation) and all(
        r.error is None for r in report.results if r.name.startswith("PCR")
    )
    return {"matched": files[0] if pcrs_ok else None, "files": files}


def report_json(source: str, report: VerificationReport, root_sha256: str) -> dict[str, Any]:
    doc = report.attestation.document if report.attestation else None
    return {
        "document": source,
        "verified": bool(report),
        "root_sha256": root_sha256,
        "validated_at": report.validated_at.isoformat() if report.validated_at else None,
        "checks": results_json(report.results),
        "attestation": None
        if doc is None
        else {
            "module_id": doc.module_id,
            "timestamp": doc.timestamp.isoformat(),
            "digest": doc.digest,
            "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
            "public_key": None if doc.public_key is None else doc.public_key.hex(),
            "user_data": None if doc.user_data is None else doc.user_data.hex(),
            "nonce": None if doc.nonce is None else doc.nonce.hex(),
        },
    }


def _print_report(source: str, report: VerificationReport) -> None:
    console = stderr_console()
    table = Table(title=markup_safe(f"attestation {source}"))
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for r in report.results:
        if r.error is None:
            table.add_row(r.name, "[green]pass[/]", "")
        else:
            table.add_row(r.name, "[bold red]FAIL[/]", markup_safe(r.error.diagnostics()))
    console.print(table)
    if report.attestation is not None:
        doc = report.attestation.document
        # Document text is attacker-chosen (and module_id is never measured): shown, not obeyed.
        console.print(markup_safe(f"module {doc.module_id}, made {doc.timestamp.isoformat()}"))
        # Every PCR, zeros included: a zero image PCR is how debug mode shows.
        for index, value in doc.pcrs.items():
            console.print(f"  PCR{index:<2} {value.hex()}{'' if any(value) else '  (zero)'}")
        zero = debug_mode_pcrs(doc)
        if zero:
            names = ", ".join(f"PCR{i}" for i in zero)
            console.print(f"[bold yellow]debug mode:[/] {names} all zero; nothing about the image is attested")
    console.print("[green]OK[/]" if report else "[bold red]FAILED[/]", markup_safe(source))


def run(args: argparse.Namespace) -> int:
    if (args.document is None) == (args.signer is None):
        raise MalformedInput("give a document (DOC, or - for stdin) or --signer ADDR, not both")
    if args.signer is not None and args.nonce is not None:
        raise MalformedInput(
            "--nonce with --signer: the nonce is chosen fresh for this request; omit --nonce"
        )
    nonce = None
    if args.signer is not None:
        # Unpredictable and used once: a relay cannot answer with a document fetched earlier.
        nonce = secrets.token_bytes(32)
        args.nonce = nonce.hex()
    at = parse_time(args.at) if args.at else None
    root = load_root_pem(args.root) if args.root else aws_nitro_root()
    policy = build_policy(args, at)
    if args.signer is not None:
        from verify.attestation.fetch import fetch_document

        data = fetch_document(args.signer, nonce=nonce, timeout=args.timeout)
        source = f"signer {args.signer}"
    else:
        data = decode_document_text(read_input(args.document))
        source = "<stdin>" if args.document == "-" else args.document
    # Now by default: an old document replays forever if checked at its own time.
    verifier = AttestationVerifier(root=root, now=at)
    report = verifier.report(data, policy)
    matched = measurements_json(args.measurements, policy, report)
    if args.json:
        out = report_json(source, report, fingerprint(root))
        out["measurements"] = matched
        emit_json(out)
    _print_report(source, report)
    if matched is not None and matched["matched"] is not None:
        stderr_console().print(markup_safe(f"measurements: {matched['matched']} matches"))
    return report.exit_code
