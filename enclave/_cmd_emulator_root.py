"""`python -m enclave emulator-root --out PEM [--ca DIR]`: the NSM emulator's root, for development.

The emulator signs documents with a CA kept in DIR (created on first use: root.pem and the 0600
root.key.pem, `EmulatorCa.save`). Serve with `enclave serve --allow-nsm-emulator
--nsm-emulator-ca DIR` and check its documents with `verify attestation --root PEM`. Never trust
this root for production: the AWS Nitro root is the only one hardware documents chain to.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from enclave.errors import EnclaveError


class EmulatorRootError(EnclaveError):
    """The emulator's CA directory or the output file cannot be used (exit 2)."""

    exit_code = 2


def default_ca_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sentinel" / "nsm-emulator-ca"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "emulator-root",
        help="write the NSM emulator's root certificate (development: verify attestation --root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="PEM", help="where to write the root")
    parser.add_argument(
        "--ca", metavar="DIR", type=Path, default=None,
        help=f"the emulator's CA directory, created if absent (default {default_ca_dir()})",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from enclave.nsm.ca import ROOT_CERT_FILE, EmulatorCa
    from enclave.nsm.errors import NsmError

    directory: Path = args.ca if args.ca is not None else default_ca_dir()
    try:
        if (directory / ROOT_CERT_FILE).exists():
            ca = EmulatorCa.load(directory)
            made = False
        else:
            ca = EmulatorCa.generate()
            ca.save(directory)
            made = True
    except NsmError as e:
        raise EmulatorRootError(f"emulator CA {directory}: {e.diagnostics()}") from e
    except OSError as e:
        raise EmulatorRootError(f"emulator CA {directory}: {e.strerror or e}") from e
    try:
        Path(args.out).write_bytes(ca.root_pem)
    except OSError as e:
        raise EmulatorRootError(f"--out {args.out}: {e.strerror or e}") from e
    print(
        f"{'created' if made else 'using'} the NSM emulator CA in {directory}; root written to "
        f"{args.out} (serve with --allow-nsm-emulator --nsm-emulator-ca {directory})",
        file=sys.stderr,
    )
    return 0
