"""`python -m enclave serve`: load the key and policy, open the NSM, serve the signer protocol.

Key sources (exactly one): `--kms-key-blob` (production: KMS Decrypt to the attested enclave, see
`enclave.kms`), `--kms-provision` (the same, with the blob and AWS credentials sent by the parent at
run time, see `enclave.provision`) or `--dev-key-file` (development; a production policy refuses
it). The policy is checked against the key before the server listens. `--kms-proxy` relays the KMS
endpoint's port on 127.0.0.1 to the parent's vsock-proxy while the key loads (`enclave.forward`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from enclave.errors import EnclaveError, KeyLoadError
from enclave.forward import Forwarder
from enclave.keys import SigningKey, load_dev_key
from enclave.policy import DEFAULT_POLICY, load_policy
from enclave.provision import Provision, bind_key, receive_key
from enclave.server import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SPIN_US,
    SignerServer,
)
from enclave.transport import parse_address

logger = logging.getLogger(__name__)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (nan or inf would turn a deadline off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be finite and > 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="serve the signer protocol")
    p.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT (CID 'any' inside the enclave)",
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
        "--frame-timeout",
        type=_seconds,
        default=DEFAULT_FRAME_TIMEOUT,
        metavar="S",
        help="seconds a started frame may take to arrive whole (default "
        f"{DEFAULT_FRAME_TIMEOUT:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="S",
        help=f"seconds a silent connection is kept (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    keys = p.add_argument_group("signing key (exactly one source)")
    keys.add_argument(
        "--kms-key-blob",
        metavar="FILE",
        help="KMS ciphertext of the key (python -m enclave kms-blob)",
    )
    keys.add_argument(
        "--kms-provision",
        metavar="ADDR",
        help="wait on ADDR for the parent to send the KMS blob and AWS credentials "
        "(python -m enclave provision)",
    )
    keys.add_argument(
        "--dev-key-file",
        metavar="FILE",
        help="development key: 64 hex digits (refused by production policies)",
    )
    kms = p.add_argument_group("KMS (with --kms-key-blob)")
    kms.add_argument("--kms-region", metavar="REGION", help="AWS region of the KMS key")
    kms.add_argument(
        "--kms-endpoint-url", metavar="URL", help="KMS endpoint (in the enclave: the vsock proxy)"
    )
    kms.add_argument("--kms-key-id", metavar="ID", help="pin the KMS key that encrypted the blob")
    kms.add_argument(
        "--kms-proxy",
        metavar="ADDR",
        help="relay the endpoint's port on 127.0.0.1 to ADDR (the parent's vsock-proxy, "
        "e.g. vsock:3:8000) while the key loads",
    )
    kms.add_argument(
        "--kms-context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encryption context the blob was made with (repeatable)",
    )
    nsm = p.add_argument_group("Nitro Secure Module")
    nsm.add_argument(
        "--allow-nsm-emulator",
        action="store_true",
        help="development builds only: use the NSM emulator when /dev/nsm is absent",
    )
    nsm.add_argument(
        "--nsm-emulator-ca",
        metavar="DIR",
        help="development: the emulator's CA directory (EmulatorCa.save), to pin its root",
    )
    p.set_defaults(func=run)


def _open_nsm(args: argparse.Namespace, *, required: bool) -> Any:
    from enclave.nsm import open_nsm

    try:
        return open_nsm(args.allow_nsm_emulator, emulator_ca_dir=args.nsm_emulator_ca)
    except EnclaveError as e:
        if required:
            raise
        logger.warning("%s: attest will answer UNAVAILABLE", e.diagnostics())
        return None


def _context(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise KeyLoadError(f"--kms-context {pair!r}: expected KEY=VALUE")
        out[k] = v
    return out or None


def _load_key(
    args: argparse.Namespace,
    nsm: Any,
    provision: Provision | None = None,
    *,
    pinned: bytes | None = None,
) -> SigningKey:
    from enclave.kms import kms_client, load_kms_key

    key_id, context = args.kms_key_id, _context(args.kms_context)
    if provision is None:
        blob: bytes | str = args.kms_key_blob
        client = kms_client(args.kms_region, endpoint_url=args.kms_endpoint_url)
    else:
        # What the image pins wins: a parent may not swap in another key or context.
        if key_id and provision.key_id and provision.key_id != key_id:
            raise KeyLoadError(
                f"provisioned key id {provision.key_id!r} differs from the image's {key_id!r}"
            )
        if context and provision.encryption_context and provision.encryption_context != context:
            raise KeyLoadError("provisioned encryption context differs from the image's")
        key_id = key_id or provision.key_id
        context = context or (dict(provision.encryption_context or {}) or None)
        blob = provision.blob
        client = kms_client(
            args.kms_region,
            endpoint_url=args.kms_endpoint_url,
            access_key_id=provision.access_key_id,
            secret_access_key=provision.secret_access_key,
            session_token=provision.session_token,
        )
    # `pinned` (policy signer_address) before bind_key: a tampered envelope must not get its key
    # into PCR16, and a provisioning parent gets the refusal as an answer and may retry.
    return load_kms_key(
        blob,
        nsm=nsm,
        client=client,
        key_id=key_id,
        encryption_context=context,
        expected_address=pinned,
    )


def _forwarder(args: argparse.Namespace) -> Forwarder | None:
    """The relay from the KMS endpoint's loopback port to `--kms-proxy`, or None."""
    if not args.kms_proxy:
        return None
    if not args.kms_endpoint_url:
        raise KeyLoadError("--kms-proxy needs --kms-endpoint-url (whose host maps to 127.0.0.1)")
    url = urlsplit(args.kms_endpoint_url)
    try:
        port = url.port or {"https": 443, "http": 80}[url.scheme]
        infos = socket.getaddrinfo(url.hostname or "", port, type=socket.SOCK_STREAM)
    except (KeyError, ValueError, OSError) as e:
        raise KeyLoadError(
            f"--kms-endpoint-url {args.kms_endpoint_url!r}: unusable ({e})"
        ) from None
    hosts = sorted({str(info[4][0]) for info in infos})
    if "127.0.0.1" not in hosts:
        raise KeyLoadError(
            f"--kms-proxy: endpoint host {url.hostname!r} resolves to {', '.join(hosts)}, not "
            "127.0.0.1 (the image maps it in /etc/hosts)"
        )
    return Forwarder(f"tcp:127.0.0.1:{port}", parse_address(args.kms_proxy))


def _collect_when_idle() -> Callable[[], None]:
    """The refill thread's idle work: a young-generation collection each call (about once a second
    while the pool is full), a full one every minute; cheap, since start-up objects are frozen."""
    calls = 0

    def collect() -> None:
        nonlocal calls
        calls += 1
        gc.collect(2 if calls % 60 == 0 else 0)

    return collect


def run(args: argparse.Namespace) -> int:
    address = parse_address(args.listen)
    policy = load_policy(args.policy)
    if args.nsm_emulator_ca and not args.allow_nsm_emulator:
        raise KeyLoadError("--nsm-emulator-ca needs --allow-nsm-emulator")
    sources = [args.dev_key_file, args.kms_key_blob, args.kms_provision]
    if sum(source is not None for source in sources) != 1:
        raise KeyLoadError(
            "pass exactly one key source: --kms-key-blob, --kms-provision or --dev-key-file"
        )
    if (args.kms_key_blob or args.kms_provision) and not args.kms_region:
        raise KeyLoadError(
            f"{'--kms-key-blob' if args.kms_key_blob else '--kms-provision'} needs --kms-region"
        )
    if args.dev_key_file is not None:
        key = load_dev_key(args.dev_key_file)
        policy.check_key(key)  # before touching the NSM: a refused key must not get an attestation
        nsm = _open_nsm(args, required=False)
    else:
        nsm = _open_nsm(args, required=True)  # KMS releases the key only to an attested enclave
        relay = _forwarder(args)
        if relay is not None:
            relay.start()
        try:
            if args.kms_provision is None:
                key = _load_key(args, nsm, pinned=policy.signer_address)
            else:
                key = receive_key(
                    args.kms_provision,
                    lambda p: _load_key(args, nsm, p, pinned=policy.signer_address),
                    on_listening=lambda a: print(
                        f"sentinel signer waiting for key provisioning on {a}", file=sys.stderr
                    ),
                )
        finally:
            if relay is not None:
                relay.close()  # KMS is needed only to load the key
        bind_key(nsm, key)  # attestations now name the key, whoever chose the blob
    server = SignerServer(
        key,
        policy,
        nsm=nsm,
        cpu=args.cpu,
        spin_us=args.spin_us,
        idle=_collect_when_idle(),
        frame_timeout=args.frame_timeout,
        idle_timeout=args.idle_timeout,
    )
    bound = server.bind(address)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.request_stop()  # serve_forever returns, and the `finally` below closes

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Latency: objects alive now (modules, key, policy) leave the collector's generations for good.
    gc.freeze()
    if policy.presign_pool:
        # An automatic collection runs in whichever thread crosses the allocation threshold, i.e.
        # in the middle of a request. With a pool, the refill thread collects instead while the
        # pool is full (idle), so no request ever pays for a collection it happened to trigger.
        gc.disable()
        # The refill thread's Python steps between libsecp256k1 calls are short; a request thread
        # waiting for the GIL need not wait the default 5 ms for a forced switch.
        sys.setswitchinterval(0.0002)
    else:
        gc.set_threshold(50_000, 50, 100)  # no thread to collect in: collect rarely instead
    print(
        f"sentinel signer {key.address} listening on {bound} (policy: {policy.mode})",
        file=sys.stderr,
    )
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
