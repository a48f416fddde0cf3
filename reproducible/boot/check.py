"""The end-to-end boot check: boot an EIF under QEMU and prove the signer inside works.

Steps (each reported in `BootReport`):
1. Measure the EIF with our reader (CRC checked) and extract exactly the measured bytes: kernel,
   cmdline, and the ramdisks concatenated in order, as the Nitro hypervisor loads them.
2. Act as the hypervisor for the emulated NSM: pass the PCRs of those bytes and an emulator root CA
   that the host generated (so the host, not the guest, decides what to trust) through fw_cfg.
3. Boot; wait for the guest's self-check line (signer reached over AF_VSOCK via vsock_loopback).
4. From the host, through the virtio-serial relay: read the signer's address, sign an EIP-1559
   transfer that the execution client at `rpc_url` accepts and mines, and fetch an attestation
   document bound to a fresh nonce.
5. Run `python -m verify attestation` on that document against the host's emulator root and the
   measurements file, exactly as a customer would.
6. Ask the guest to power off cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reproducible.boot.errors import BootError
from reproducible.boot.qemu import Guest, GuestConfig

logger = logging.getLogger(__name__)

SELFCHECK_PREFIX = "SENTINEL-SELFCHECK "
# A fixed, funded-by-nobody destination: the transfer only has to be mined.
DESTINATION = "0x000000000000000000000000000000000000dEaD"


@dataclass
class BootReport:
    eif: str
    accel: str
    pcrs: dict[str, str]
    seconds_to_signer_ready: float | None = None
    selfcheck: dict[str, Any] | None = None
    signer_address: str | None = None
    tx_hash: str | None = None
    tx_block: int | None = None
    attestation_exit: int | None = None
    attestation_result: Any = None
    clean_poweroff: bool | None = None
    ok: bool = False
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def extract_boot_files(eif: Path, workdir: Path) -> tuple[Path, Path, str, dict[int, bytes]]:
    """Kernel file, concatenated initrd, cmdline text and the PCRs of exactly those bytes.

    Raises:
        verify.errors.MalformedInput / MalformedEif: the EIF is not sound (CRC, truncation, ...).
    """
    from verify.eif import iter_section_chunks, open_eif, read_section_bytes
    from verify.pcr import measure_eif

    measured = measure_eif(eif)
    measured.check_sound()
    image = measured.image
    kernel = workdir / "kernel"
    initrd = workdir / "initrd.cpio"
    with open_eif(eif) as f:
        with open(kernel, "wb") as out:
            for chunk in iter_section_chunks(f, image.kernel):
                out.write(chunk)
        cmdline = read_section_bytes(f, image.cmdline).decode("utf-8").rstrip("\x00")
        with open(initrd, "wb") as out:
            for ramdisk in image.ramdisks:
                for chunk in iter_section_chunks(f, ramdisk):
                    out.write(chunk)
    return kernel, initrd, cmdline, dict(measured.pcrs)


def _rpc(url: str, method: str, *params: object) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    if "error" in answer:
        raise BootError(f"{method} at {url}: {answer['error']}")
    return answer["result"]


def _wait_receipt(url: str, tx_hash: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = _rpc(url, "eth_getTransactionReceipt", tx_hash)
        if receipt:
            return dict(receipt)
        time.sleep(0.2)
    raise BootError(f"transaction {tx_hash} not mined within {timeout:.0f} s")


def sign_and_send(client: Any, rpc_url: str) -> tuple[str, int]:
    """Sign a 1-wei EIP-1559 transfer in the guest; the node must accept and mine it."""
    sender = client.address().address
    chain_id = int(_rpc(rpc_url, "eth_chainId"), 16)
    nonce = int(_rpc(rpc_url, "eth_getTransactionCount", sender, "pending"), 16)
    gas_price = int(_rpc(rpc_url, "eth_gasPrice"), 16)
    tx = {
        "chainId": chain_id,
        "nonce": nonce,
        "to": DESTINATION,
        "value": 1,
        "gas": 21000,
        "maxFeePerGas": 2 * gas_price + 1,
        "maxPriorityFeePerGas": 1,
        "data": "0x",
    }
    signed = client.sign_tx(tx)
    tx_hash = _rpc(rpc_url, "eth_sendRawTransaction", "0x" + signed.raw.hex())
    if tx_hash.lower() != "0x" + signed.hash.hex():
        raise BootError(f"node's hash {tx_hash} differs from the signer's 0x{signed.hash.hex()}")
    receipt = _wait_receipt(rpc_url, tx_hash)
    if int(receipt["status"], 16) != 1:
        raise BootError(f"transaction {tx_hash} reverted")
    return tx_hash, int(receipt["blockNumber"], 16)


def verify_attestation_cli(
    document: bytes,
    root_pem: Path,
    measurements: Path,
    nonce: bytes,
    signer_address: str,
    workdir: Path,
) -> tuple[int, Any]:
    """Run the customers' command on the document; returns (exit code, its --json output).

    The document must bind the key the signer reported (`--signer-address`), so the PCRs checked
    belong to the enclave that signs.
    """
    doc_path = workdir / "attestation.cbor"
    doc_path.write_bytes(document)
    cmd = [
        sys.executable, "-m", "verify", "attestation", str(doc_path),
        "--root", str(root_pem),
        "--measurements", str(measurements),
        "--pcrs", "0,1,2",
        "--nonce", nonce.hex(),
        "--signer-address", signer_address,
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    try:
        out: Any = json.loads(proc.stdout)
    except ValueError:
        out = {"stdout": proc.stdout, "stderr": proc.stderr}
    if proc.returncode != 0:
        logger.info("verify attestation exited %d: %s", proc.returncode, proc.stderr.strip())
        if isinstance(out, dict):
            out.setdefault("stderr", proc.stderr.strip())
    return proc.returncode, out


def run_boot_check(
    eif: Path,
    measurements: Path,
    rpc_url: str,
    *,
    workdir: Path | None = None,
    boot_timeout: float = 600,
    accel: str | None = None,
) -> BootReport:
    """Boot `eif` and check it end to end (see the module docstring); never raises BootError for a
    failed step: the report's `errors` name each one and `ok` is False."""
    from enclave.nsm.ca import EmulatorCa
    from router.signer_client import SignerClient

    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="sentinel-boot-")
        workdir = Path(own_tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        kernel, initrd, cmdline, pcrs = extract_boot_files(eif, workdir)
        pcr_file = workdir / "pcrs.json"
        pcr_file.write_text(json.dumps({f"PCR{i}": v.hex() for i, v in sorted(pcrs.items())}))
        ca = EmulatorCa.generate()
        ca_file = workdir / "nsm-ca.pem"
        ca_file.write_bytes(ca.pem_bundle())
        os.chmod(ca_file, 0o600)
        root_pem = workdir / "emulator-root.pem"
        root_pem.write_bytes(ca.root_pem)
        config = GuestConfig(
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            workdir=workdir,
            fw_cfg={"pcrs": pcr_file, "nsm-ca": ca_file},
            accel=accel,
        )
        guest = Guest(config)
        report = BootReport(
            eif=str(eif), accel=guest.accel, pcrs={str(i): v.hex() for i, v in pcrs.items()}
        )
        with guest:
            try:
                line = guest.wait_for_line(SELFCHECK_PREFIX, boot_timeout)
                report.seconds_to_signer_ready = round(time.monotonic() - guest.started_at, 2)
                report.selfcheck = json.loads(line[len(SELFCHECK_PREFIX) :])
                if not report.selfcheck.get("ok"):
                    report.errors.append(f"guest self-check failed: {report.selfcheck}")
                with SignerClient.connect(f"unix:{guest.signer_socket}", connect_timeout=30) as c:
                    report.signer_address = c.address().address
                    report.tx_hash, report.tx_block = sign_and_send(c, rpc_url)
                    nonce = os.urandom(32)
                    document = c.attest(nonce=nonce)
                code, result = verify_attestation_cli(
                    document, root_pem, measurements, nonce, report.signer_address, workdir
                )
                report.attestation_exit, report.attestation_result = code, result
                if code != 0:
                    report.errors.append(f"verify attestation exited {code}")
            except Exception as e:  # every failure is reported with the console tail
                report.errors.append(f"{type(e).__name__}: {e}")
                report.errors.append("console tail:\n" + guest.tail())
            finally:
                report.clean_poweroff = guest.power_off()
        report.ok = not report.errors and bool(report.clean_poweroff)
        return report
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
