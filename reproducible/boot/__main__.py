"""`python -m reproducible.boot IMAGE.eif --measurements FILE --rpc URL [--json] [--report FILE]`.

Boots the image under QEMU and checks the signer inside end to end (see reproducible.boot.check).
Exit 0 when every step passed, 1 when a step failed, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from reproducible.boot.check import run_boot_check
from reproducible.boot.errors import BootError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproducible.boot", description=__doc__)
    parser.add_argument("eif", type=Path, help="the EIF to boot (e.g. build/sentinel.eif)")
    parser.add_argument("--measurements", type=Path, required=True, help="measurements to verify")
    parser.add_argument("--rpc", required=True, help="execution client JSON-RPC URL (loopback)")
    parser.add_argument("--accel", choices=["kvm", "tcg"], help="default: KVM when usable, else TCG")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the signer")
    parser.add_argument("--workdir", type=Path, help="keep console log and extracted files here")
    parser.add_argument("--report", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--json", action="store_true", help="JSON report on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    console = Console(file=sys.stderr, highlight=False)
    from verify.errors import VerifyError

    try:
        report = run_boot_check(
            args.eif, args.measurements, args.rpc,
            workdir=args.workdir, boot_timeout=args.timeout, accel=args.accel,
        )
    except (VerifyError, BootError) as e:
        console.print(f"[bold red]error:[/] {e.diagnostics()}")
        return 2
    data = report.to_json()
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(data, indent=2) + "\n")
    if args.json:
        print(json.dumps(data, indent=2))
    verdict = "[bold green]BOOT OK[/]" if report.ok else "[bold red]BOOT FAILED[/]"
    console.print(
        f"{verdict} accel={report.accel} signer ready after {report.seconds_to_signer_ready} s; "
        f"signer {report.signer_address}; tx {report.tx_hash} in block {report.tx_block}; "
        f"verify attestation exit {report.attestation_exit}; clean power-off {report.clean_poweroff}"
    )
    for err in report.errors:
        console.print(f"[red]-[/] {err}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
