"""`python -m enclave serve`: load the key and policy, open the NSM, serve the signer protocol."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from enclave.errors import EnclaveError, KeyLoadError
from enclave.keys import load_dev_key
from enclave.policy import DEFAULT_POLICY, load_policy
from enclave.server import DEFAULT_SPIN_US, SignerServer
from enclave.transport import parse_address

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="serve the signer protocol")
    p.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT (CID 'any' inside the enclave)",
    )
    p.add_argument(
        "--dev-key-file",
        metavar="FILE",
        help="development key: 64 hex digits (refused by production policies)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        default=str(DEFAULT_POLICY),
        help="policy TOML (default: the production policy baked into the package)",
    )
    p.add_argument("--cpu", type=int, metavar="N", help="pin connection threads to CPU N")
    p.add_argument(
        "--spin-us",
        type=int,
        default=DEFAULT_SPIN_US,
        metavar="US",
        help=f"busy-poll window before blocking reads (default {DEFAULT_SPIN_US}; 0 disables)",
    )
    p.add_argument(
        "--allow-nsm-emulator",
        action="store_true",
        help="development builds only: attest with the NSM emulator when /dev/nsm is absent",
    )
    p.set_defaults(func=run)


def _open_nsm(allow_emulator: bool) -> object | None:
    try:
        from enclave.nsm import open_nsm
    except ImportError as e:  # pragma: no cover - the NSM package ships with the enclave
        logger.warning("NSM support unavailable (%s): attest will answer UNAVAILABLE", e)
        return None
    try:
        return open_nsm(allow_emulator)
    except EnclaveError as e:
        logger.warning("%s: attest will answer UNAVAILABLE", e.diagnostics())
        return None


def run(args: argparse.Namespace) -> int:
    address = parse_address(args.listen)
    policy = load_policy(args.policy)
    if args.dev_key_file is None:
        raise KeyLoadError(
            "no signing key: pass --dev-key-file for development (KMS key loading: enclave.kms)"
        )
    key = load_dev_key(args.dev_key_file)
    policy.check_key(key)  # before touching the NSM: a refused key must not get an attestation
    nsm = _open_nsm(args.allow_nsm_emulator)
    server = SignerServer(key, policy, nsm=nsm, cpu=args.cpu, spin_us=args.spin_us)  # type: ignore[arg-type]
    bound = server.bind(address)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"sentinel signer {key.address} listening on {bound} (policy: {policy.mode})", file=sys.stderr)
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
