"""Boot the built image under QEMU (issue: boot what we build). Run by `nox -s boot`, which builds
build/sentinel.eif first; `nox -s tests` deselects the `boot` marker."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from reproducible.boot.check import extract_boot_files, run_boot_check
from reproducible.boot.qemu import kvm_usable
from verify.eif import CRC_OFFSET, iter_section_chunks, open_eif, read_eif
from verify.pcr import measure_eif

ROOT = Path(__file__).resolve().parents[1]
EIF = ROOT / "build" / "sentinel.eif"
MEASUREMENTS = ROOT / "build" / "measurements.json"

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def built() -> Path:
    if not EIF.exists() or not MEASUREMENTS.exists():
        pytest.fail(f"{EIF} missing: run `nox -s boot` (it builds the image first)")
    return EIF


def test_boot_files_are_the_measured_bytes(built: Path, tmp_path: Path) -> None:
    kernel, initrd, cmdline, pcrs = extract_boot_files(built, tmp_path)
    image = read_eif(built)
    with open_eif(built) as f:
        bodies = [b"".join(iter_section_chunks(f, s)) for s in image.ramdisks]
        kernel_body = b"".join(iter_section_chunks(f, image.kernel))
    assert initrd.read_bytes() == b"".join(bodies)  # concatenated in order, as the hypervisor does
    assert kernel.read_bytes() == kernel_body
    assert "console=ttyS0" in cmdline
    published = json.loads(MEASUREMENTS.read_text())["Measurements"]
    assert {f"PCR{i}": pcrs[i].hex() for i in (0, 1, 2)} == {
        k: published[k] for k in ("PCR0", "PCR1", "PCR2")
    }


def test_boot_end_to_end(built: Path, anvil, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = run_boot_check(built, MEASUREMENTS, anvil.rpc_url, workdir=tmp_path)
    print(json.dumps(report.to_json(), indent=2))
    assert report.errors == []
    assert report.accel == ("kvm" if kvm_usable() else "tcg")
    assert report.selfcheck and report.selfcheck["ok"] and report.selfcheck["transport"] == "vsock"
    assert report.signer_address is not None
    assert report.tx_hash and report.tx_block and report.tx_block >= 1
    assert report.attestation_exit == 0
    assert report.clean_poweroff is True
    assert report.ok


def _tamper_customer_ramdisk(src: Path, dest: Path) -> None:
    """Change one byte of a TOML comment in the customer ramdisk and fix the CRC up."""
    shutil.copyfile(src, dest)
    image = read_eif(dest)
    customer = image.ramdisks[-1]
    with open_eif(dest) as f:
        body = b"".join(iter_section_chunks(f, customer))
    marker = body.find(b"# Development policy")
    assert marker > 0, "policy comment not found in the customer ramdisk"
    offset = customer.body_offset + marker + 2  # the 'D'
    with open(dest, "r+b") as f:
        f.seek(offset)
        f.write(b"d")
    crc = measure_eif(dest).crc_computed
    with open(dest, "r+b") as f:
        f.seek(CRC_OFFSET)
        f.write(struct.pack(">I", crc))


def test_tampered_image_boots_but_attestation_names_pcr2(
    built: Path, anvil, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    tampered = tmp_path / "tampered.eif"
    _tamper_customer_ramdisk(built, tampered)
    m = measure_eif(tampered)
    assert m.crc_ok is True
    report = run_boot_check(tampered, MEASUREMENTS, anvil.rpc_url, workdir=tmp_path / "wd")
    assert report.selfcheck and report.selfcheck["ok"], report.errors  # it still boots and signs
    assert report.tx_hash
    assert report.attestation_exit == 1
    text = json.dumps(report.attestation_result)
    assert "PCR2" in text
    assert "PCR0" in text  # PCR0 covers every ramdisk, so it differs too
    assert report.clean_poweroff is True
    assert not report.ok
