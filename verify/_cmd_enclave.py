"""`python -m verify enclave --measurements FILE`: do the running enclaves run the published image?

Reads `nitro-cli describe-enclaves` JSON from stdin, or runs `nitro-cli describe-enclaves` when
stdin is a terminal and nitro-cli is installed, and compares each enclave's PCRs with the published
measurements (every PCR in the file, or `--pcrs`). A debug-mode enclave fails: its PCRs read as
zero and its attestation proves nothing. Exit 0 all match, 1 a check failed, 2 malformed input.
`--measurements` may be repeated (a rolling deploy: old and new release): each enclave must match
one of the files; the report and --json (`measurements_matched` per enclave) say which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from verify._checks import CheckResult, CheckRunner, exit_code, results_json
from verify._cli import emit_json, stderr_console
from verify._cmd_attestation import parse_pcr_indices
from verify._json import loads_json
from verify.errors import MalformedInput, MalformedMeasurements, PcrMismatch, VerificationError
from verify.measurements import (
    diff_pcrs,
    load_measurements,
    load_measurements_set,
    match_measurements,
)
from verify.terminal import markup_safe

MAX_INPUT = 4 << 20  # bytes; describe-enclaves prints ~1 KiB per enclave


class DebugModeEnclave(VerificationError):
    """The enclave runs in debug mode: its console is readable and its PCRs are zero."""


class EnclaveNotRunning(VerificationError):
    """The enclave is not in the RUNNING state."""


@dataclass(frozen=True)
class DescribedEnclave:
    enclave_id: str
    name: str | None
    state: str
    flags: str
    pcrs: dict[int, bytes]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "enclave",
        help="compare running enclaves (nitro-cli describe-enclaves) with published measurements",
        description=__doc__,
    )
    parser.add_argument(
        "--measurements", metavar="FILE", required=True, action="append",
        help="published measurements; repeat to accept any of several (rolling deploy)",
    )  # fmt: skip
    parser.add_argument("--pcrs", metavar="LIST", help="PCR indices to compare (default: all in FILE)")
    parser.add_argument(
        "--describe", metavar="FILE", help="describe-enclaves JSON from a file ('-' for stdin)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    parser.set_defaults(func=run)


def _describe_output(source: str | None) -> bytes:
    if source == "-" or (source is None and not sys.stdin.isatty()):
        return sys.stdin.buffer.read(MAX_INPUT + 1)
    if source is not None:
        try:
            return Path(source).read_bytes()
        except OSError as e:
            raise MalformedInput(f"cannot read {source}: {e.strerror}") from e
    nitro_cli = shutil.which("nitro-cli")
    if nitro_cli is None:
        raise MalformedInput(
            "no input: pipe `nitro-cli describe-enclaves` into this command, pass --describe FILE, "
            "or run it where nitro-cli is installed"
        )
    try:
        done = subprocess.run(
            [nitro_cli, "describe-enclaves"], capture_output=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise MalformedInput(f"`nitro-cli describe-enclaves` failed: {e}") from e
    return done.stdout


def parse_describe_enclaves(data: bytes) -> list[DescribedEnclave]:
    """The enclaves `nitro-cli describe-enclaves` lists.

    Raises:
        MalformedInput: not its JSON shape (an array of objects with EnclaveID, State, Measurements).
    """
    if len(data) > MAX_INPUT:
        raise MalformedInput(f"describe-enclaves output larger than {MAX_INPUT} bytes")
    doc = loads_json(data, "describe-enclaves output")
    if not isinstance(doc, list):
        raise MalformedInput("describe-enclaves output must be a JSON array of enclaves")
    enclaves = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise MalformedInput(f"enclave [{i}] is not an object")
        enclave_id, state = item.get("EnclaveID"), item.get("State")
        if not isinstance(enclave_id, str) or not isinstance(state, str):
            raise MalformedInput(f"enclave [{i}] lacks EnclaveID or State")
        if not isinstance(item.get("Measurements"), dict):
            raise MalformedInput(
                f"enclave {enclave_id} has no Measurements (nitro-cli too old to print them?)"
            )
        try:
            block = json.dumps({"Measurements": item["Measurements"]}).encode()
            pcrs = load_measurements(block).pcrs
        except MalformedMeasurements as e:
            raise MalformedInput(f"enclave {enclave_id}: {e.diagnostics()}") from e
        name = item.get("EnclaveName")
        enclaves.append(
            DescribedEnclave(
                enclave_id=enclave_id,
                name=name if isinstance(name, str) else None,
                state=state,
                flags=str(item.get("Flags", "NONE")),
                pcrs=pcrs,
            )
        )
    return enclaves


def _check_state(enclave: DescribedEnclave) -> None:
    if enclave.state != "RUNNING":
        raise EnclaveNotRunning(f"state is {enclave.state}, expected RUNNING")


def _check_mode(enclave: DescribedEnclave) -> None:
    if "DEBUG_MODE" in enclave.flags:
        raise DebugModeEnclave("debug mode: PCRs read as zero and its attestation proves nothing")


def _check_pcr(expected: dict[int, bytes], enclave: DescribedEnclave, index: int) -> None:
    diffs = diff_pcrs(expected, enclave.pcrs, [index])
    if diffs:
        raise PcrMismatch(diffs[0].describe())


def check_enclave(
    enclave: DescribedEnclave, expected: dict[int, bytes], indices: list[int]
) -> list[CheckResult]:
    checks = CheckRunner(fail_fast=False)
    checks.run("state", _check_state, enclave)
    checks.run("mode", _check_mode, enclave)
    for index in indices:
        checks.run(f"PCR{index}", _check_pcr, expected, enclave, index)
    return checks.results


def run(args: argparse.Namespace) -> int:
    candidates = load_measurements_set(args.measurements)
    indices = parse_pcr_indices(args.pcrs) if args.pcrs else None
    for candidate in candidates:
        wanted = sorted(candidate.pcrs) if indices is None else indices
        missing = [i for i in wanted if i not in candidate.pcrs]
        if missing:
            raise MalformedInput(f"{candidate.source}: no expected value for PCR {missing[0]}")
    enclaves = parse_describe_enclaves(_describe_output(args.describe))
    outcomes = []
    matched: dict[str, str | None] = {}
    for e in enclaves:
        match = match_measurements(candidates, e.pcrs, indices)
        chosen = match.matched or candidates[0]  # none matches: report against the first file
        matched[e.enclave_id] = None if match.matched is None else chosen.source
        wanted = sorted(chosen.pcrs) if indices is None else indices
        outcomes.append((e, check_enclave(e, chosen.pcrs, wanted)))
    codes = [exit_code(results) for _, results in outcomes]
    status = max(codes) if codes else 1
    if args.json:
        emit_json(
            {
                "measurements": args.measurements[0] if len(args.measurements) == 1
                else args.measurements,
                "verified": status == 0,
                "enclaves": [
                    {
                        "id": e.enclave_id,
                        "name": e.name,
                        "state": e.state,
                        "flags": e.flags,
                        "verified": exit_code(results) == 0,
                        "measurements_matched": matched[e.enclave_id],
                        "checks": results_json(results),
                    }
                    for e, results in outcomes
                ],
            }
        )
    console = stderr_console()
    if not enclaves:
        console.print("[bold red]FAILED[/] no enclave is running")
    for enclave, results in outcomes:
        table = Table(title=markup_safe(f"enclave {enclave.enclave_id} ({enclave.name or 'unnamed'})"))
        for column in ("check", "result", "detail"):
            table.add_column(column, overflow="fold")
        for r in results:
            detail = "" if r.error is None else markup_safe(r.error.diagnostics())
            table.add_row(r.name, "[green]pass[/]" if r.ok else "[bold red]FAIL[/]", detail)
        console.print(table)
    if enclaves:
        for e in enclaves:
            if matched[e.enclave_id] is not None and len(candidates) > 1:
                console.print(markup_safe(f"enclave {e.enclave_id}: {matched[e.enclave_id]} matches"))
        shown = ", ".join(args.measurements)
        console.print("[green]OK[/]" if status == 0 else "[bold red]FAILED[/]", markup_safe(shown))
    return status

