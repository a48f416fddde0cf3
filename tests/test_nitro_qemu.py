"""Conformance against QEMU's `nitro-enclave` machine (issue 19), run by `nox -s nitro-qemu`.

QEMU's loader parses build/sentinel.eif itself and seeds its virtio-nsm with the PCRs it computed;
the guest's signer and devboot reach that device through Debian's `nsm` driver and our `DeviceNsm`
(the kernel flag `sentinel.nsm=device` forbids the emulator). Everything the device reports is
compared with `verify pcr` of the same file and, call by call, with our NSM emulator; the only
differences allowed are those written down in enclave/nsm/QEMU.md (`KNOWN_DIFFERENCES` below).

Needs SENTINEL_NITRO_QEMU (the built binary; the session sets it) and build/sentinel.eif.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eif_support import CRC_AT, HEADER, build_raw, section_offsets
from nitro_qemu import NitroQemuError
from nitro_qemu.machine import document_b64, load_only, start_booted

from enclave.devboot import exercise_nsm
from enclave.nsm.emulator import EmulatedNsm
from verify.attestation.document import parse_document

ROOT = Path(__file__).resolve().parents[1]
EIF = ROOT / "build" / "sentinel.eif"
QEMU_ENV = "SENTINEL_NITRO_QEMU"
QEMU_MODULE_ID = "i-234-enc5678"  # hw/i386/nitro_enclave.c's default `id`

pytestmark = [pytest.mark.nitro_qemu, pytest.mark.slow]

# Fields of `exercise_nsm`'s report where QEMU's model answers differently from our emulator, and
# what each side answers; enclave/nsm/QEMU.md says why and what was done.
KNOWN_DIFFERENCES: dict[str, tuple[object, object]] = {
    "pcr16.lock_again": ("ReadOnlyIndex", "ok"),  # QEMU, emulator
    "attestation_limits.empty_public_key": ("ok", "InvalidArgument"),
    "attestation_limits.user_data_1025": ("ok", "InputTooLarge"),
}


@pytest.fixture(scope="module")
def qemu() -> Path:
    path = os.environ.get(QEMU_ENV)
    if not path or not Path(path).is_file():
        pytest.fail(f"{QEMU_ENV} does not name a built QEMU: run `nox -s nitro-qemu`")
    return Path(path)


@pytest.fixture(scope="module")
def eif() -> Path:
    if not EIF.exists():
        pytest.fail(f"{EIF} missing: run `nox -s nitro-qemu` (it builds the image first)")
    return EIF


@dataclass
class Boot:
    eif: Path
    boot_seconds: float
    selfcheck: dict[str, object]
    nsm: dict[str, object]
    nonce: bytes
    signer_doc: bytes
    signer_nonce: bytes
    vsock_doc: bytes | str  # the document over VSOCK, or why it could not be had
    vsock_nonce: bytes
    clean_poweroff: bool
    console: str


def boot(qemu: Path, eif: Path, workdir: Path) -> Boot:
    m, boots = start_booted(qemu, eif, workdir)
    with m:
        if boots > 1:
            print(f"\n{eif.name}: {boots - 1} boot(s) hung calibrating the TSC under TCG; retried")
        selfcheck = m.selfcheck(timeout=400)
        boot_seconds = time.monotonic() - m.started_at
        nonce = os.urandom(32)
        nsm = m.nsm_check(nonce)
        signer_nonce = os.urandom(24)
        signer_doc = m.signer_attest(signer_nonce)
        vsock_nonce = os.urandom(20)
        try:
            vsock_doc: bytes | str = m.signer_attest(vsock_nonce, over_vsock=True)
        except (OSError, NitroQemuError) as e:
            vsock_doc = f"{type(e).__name__}: {e}"
        clean = m.power_off()
        console = m.console()
    print(f"\n{eif.name}: booted to the signer's self-check in {boot_seconds:.1f} s (TCG)")
    return Boot(eif, boot_seconds, selfcheck, nsm, nonce, signer_doc, signer_nonce, vsock_doc,
                vsock_nonce, clean, console)


@pytest.fixture(scope="module")
def unsigned(qemu: Path, eif: Path, tmp_path_factory: pytest.TempPathFactory) -> Boot:
    return boot(qemu, eif, tmp_path_factory.mktemp("unsigned"))


@pytest.fixture(scope="module")
def signed_eif(eif: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reproducible.sign_eif import sign_built_eif
    from verify.eif_sign import LocalEifSigner

    out = tmp_path_factory.mktemp("signed")
    signed, _ = sign_built_eif(eif.parent, out, LocalEifSigner.generate())
    return signed


@pytest.fixture(scope="module")
def signed(qemu: Path, signed_eif: Path, tmp_path_factory: pytest.TempPathFactory) -> Boot:
    return boot(qemu, signed_eif, tmp_path_factory.mktemp("signed-boot"))


def _verify_pcr(path: Path) -> dict[int, bytes]:
    """`python -m verify pcr --json`'s PCRs, run as a customer would."""
    res = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", "--json", str(path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    measures = json.loads(res.stdout)["Measurements"]
    return {int(k[3:]): bytes.fromhex(v) for k, v in measures.items() if k.startswith("PCR")}


def _device_pcrs(b: Boot) -> dict[int, bytes]:
    pcrs = b.nsm["pcrs"]
    assert isinstance(pcrs, dict)
    return {int(k): bytes.fromhex(v["value"]) for k, v in pcrs.items()}


def _print_table(b: Boot, expected: dict[int, bytes]) -> None:
    device = _device_pcrs(b)
    print(f"{'PCR':<5} {'virtio-nsm (QEMU)':<40} {'verify pcr':<40} equal")
    for i in sorted(set(device) | set(expected)):
        d, e = device.get(i), expected.get(i)
        print(f"{i:<5} {d.hex()[:36] + '…' if d else '-':<40} "
              f"{e.hex()[:36] + '…' if e else '-':<40} {d == e if e else ''}")


def _flatten(report: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_qemu_accepted_the_eif_and_the_signer_uses_the_device(unsigned: Boot) -> None:
    assert "sentinel.nsm=device" in unsigned.console  # the kernel saw the flag
    assert "NSM EMULATOR" not in unsigned.console
    assert unsigned.selfcheck["ok"] is True, unsigned.selfcheck
    assert unsigned.nsm["ok"] is True, unsigned.nsm.get("error")
    assert unsigned.nsm["device"] == "/dev/nsm"
    assert unsigned.clean_poweroff


def test_device_pcrs_equal_verify_pcr(unsigned: Boot, eif: Path) -> None:
    expected = _verify_pcr(eif)
    _print_table(unsigned, expected)
    device = _device_pcrs(unsigned)
    assert {i: device[i] for i in (0, 1, 2)} == {i: expected[i] for i in (0, 1, 2)}
    assert 8 not in expected and device[8] == bytes(48)  # unsigned: PCR8 untouched
    assert device[3] == device[4] == bytes(48)  # no parent role / instance id given to QEMU
    assert all(v["locked"] for k, v in unsigned.nsm["pcrs"].items() if int(k) < 16)  # type: ignore[union-attr]


def test_each_nsm_call(unsigned: Boot) -> None:
    r = unsigned.nsm
    print("\nNSM calls on QEMU's virtio-nsm:")
    for k, v in _flatten({k: v for k, v in r.items() if k not in ("attestation", "pcrs")}).items():
        print(f"  {k} = {v}")
    d = r["describe_nsm"]
    assert isinstance(d, dict)
    assert d["module_id"] == QEMU_MODULE_ID and d["digest"] == "SHA384" and d["max_pcrs"] == 32
    assert d["version"] == [1, 0, 0]
    assert set(range(16)) <= set(d["locked_pcrs"])
    assert r["get_random"] == {"bytes": 32, "two_calls_differ": True}
    p = r["pcr16"]
    assert isinstance(p, dict)
    assert p["before"] == "00" * 48 and p["extend_is_sha384_of_old_and_data"] is True
    assert p["locked_after_lock"] is True and p["value_after_lock"] == p["extended"]
    assert p["extend_after_lock"] == "ReadOnlyIndex"
    assert p["extend_locked_pcr0"] == "ReadOnlyIndex"
    assert p["describe_pcr_32"] == "InvalidIndex"


def test_device_and_emulator_differ_only_where_written_down(unsigned: Boot, eif: Path) -> None:
    emulated = exercise_nsm(EmulatedNsm(pcrs=eif), unsigned.nonce)
    ignore = {"device", "attestation", "describe_nsm.module_id"}  # ids and signatures are per module
    qemu_side, emu_side = _flatten(unsigned.nsm), _flatten(emulated)
    differences = {
        k: (qemu_side.get(k), emu_side.get(k))
        for k in sorted(set(qemu_side) | set(emu_side))
        if k not in ignore and qemu_side.get(k) != emu_side.get(k)
    }
    assert differences == KNOWN_DIFFERENCES


def test_attestation_from_the_device(unsigned: Boot, eif: Path) -> None:
    expected = _verify_pcr(eif)
    signed = parse_document(document_b64(unsigned.nsm))
    doc = signed.document
    assert doc.nonce == unsigned.nonce and doc.user_data == b"sentinel nsm-check"
    assert doc.module_id == QEMU_MODULE_ID and doc.digest == "SHA384"
    assert {i: doc.pcrs[i] for i in (0, 1, 2)} == {i: expected[i] for i in (0, 1, 2)}
    p16 = unsigned.nsm["pcr16"]
    assert isinstance(p16, dict)
    assert doc.pcrs[16] == bytes.fromhex(str(p16["extended"]))  # locked PCRs are all reported
    assert sorted(doc.pcrs) == list(range(17))
    # QEMU's model does not sign (hw/virtio/virtio-nsm.c): alg -1, zero placeholders.
    assert signed.alg == -1
    assert doc.certificate == bytes(64) and doc.cabundle == (bytes(64),)
    assert signed.cose.signature == bytes(64)
    print(f"\nQEMU's chain: certificate = 64 zero bytes, cabundle = [64 zero bytes], "
          f"alg = {signed.alg}, signature = 64 zero bytes")


def test_signer_attests_through_the_device(unsigned: Boot, eif: Path) -> None:
    expected = _verify_pcr(eif)
    doc = parse_document(unsigned.signer_doc).document
    assert doc.module_id == QEMU_MODULE_ID  # the signer's NSM is QEMU's device, not the emulator
    assert doc.nonce == unsigned.signer_nonce
    assert doc.public_key is not None and len(doc.public_key) > 0  # the key binding
    assert {i: doc.pcrs[i] for i in (0, 1, 2)} == {i: expected[i] for i in (0, 1, 2)}


def test_signer_reached_over_vsock_data_plane(unsigned: Boot, eif: Path) -> None:
    assert isinstance(unsigned.vsock_doc, bytes), unsigned.vsock_doc
    doc = parse_document(unsigned.vsock_doc).document
    assert doc.module_id == QEMU_MODULE_ID and doc.nonce == unsigned.vsock_nonce
    expected = _verify_pcr(eif)
    assert {i: doc.pcrs[i] for i in (0, 1, 2)} == {i: expected[i] for i in (0, 1, 2)}


def test_verify_attestation_cannot_check_qemus_chain(unsigned: Boot, tmp_path: Path) -> None:
    """By design (QEMU signs nothing): with AWS's root or with any --root, the checks that fail are
    the algorithm and the certificate, whatever else is right."""
    from enclave.nsm.ca import EmulatorCa

    doc = tmp_path / "doc.cbor"
    doc.write_bytes(unsigned.signer_doc)
    root = tmp_path / "root.pem"
    root.write_bytes(EmulatorCa.generate().root_pem)
    for extra in ([], ["--root", str(root)]):
        res = subprocess.run(
            [sys.executable, "-m", "verify", "attestation", str(doc), "--json", "--nonce",
             unsigned.signer_nonce.hex(), *extra],
            capture_output=True, text=True, cwd=ROOT,
        )
        assert res.returncode != 0
        failed = {c["name"]: (c["error"], c["message"])
                  for c in json.loads(res.stdout)["checks"] if not c["ok"]}
        print(f"\n`verify attestation {' '.join(extra)}` on QEMU's document: exit "
              f"{res.returncode}, failed checks: {failed}")
        assert failed["alg"][0] == "UnsupportedAlgorithm"
        assert failed["certificates"][0] == "MalformedAttestation"
        assert "nonce" not in failed  # the document itself is right


def test_signed_eif_pcr8(signed: Boot, signed_eif: Path, eif: Path) -> None:
    expected = _verify_pcr(signed_eif)
    _print_table(signed, expected)
    device = _device_pcrs(signed)
    assert signed.nsm["ok"] is True, signed.nsm.get("error")
    assert {i: device[i] for i in (0, 1, 2, 8)} == {i: expected[i] for i in (0, 1, 2, 8)}
    assert {i: expected[i] for i in (0, 1, 2)} == {
        i: v for i, v in _verify_pcr(eif).items() if i in (0, 1, 2)
    }
    doc = parse_document(document_b64(signed.nsm)).document
    assert doc.pcrs[8] == expected[8]


# -- negative cases: QEMU's loader against `verify pcr` on the same bytes --------------------------


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("bad")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _flip_byte(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    offset = section_offsets(src.read_bytes()[:HEADER])[0] + 12 + 4096  # inside the kernel
    with open(dest, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _wrong_crc(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    with open(dest, "r+b") as f:
        f.seek(CRC_AT)
        (crc,) = struct.unpack(">I", f.read(4))
        f.seek(CRC_AT)
        f.write(struct.pack(">I", crc ^ 0xFFFFFFFF))


def _cmdline_first(src: Path, dest: Path) -> None:
    """The same sections with cmdline before kernel, written with a CRC that matches."""
    data = src.read_bytes()
    sections = []
    for off in section_offsets(data[:HEADER]):
        kind, _flags, size = struct.unpack_from(">HHQ", data, off)
        sections.append((kind, data[off + 12 : off + 12 + size]))
    sections[0], sections[1] = sections[1], sections[0]
    dest.write_bytes(build_raw(sections))


def _verify_pcr_outcome(path: Path) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    return res.returncode, (res.stdout + res.stderr).strip()


@pytest.mark.parametrize(
    ("make", "qemu_says"),
    [(_flip_byte, "CRC mismatch"), (_wrong_crc, "CRC mismatch")],
    ids=["flipped-byte", "wrong-crc"],
)
def test_corrupt_eif_refused_by_qemu_and_verify_pcr(  # type: ignore[no-untyped-def]
    qemu: Path, eif: Path, bad_dir: Path, make, qemu_says: str
) -> None:
    bad = bad_dir / f"{make.__name__}.eif"
    make(eif, bad)
    code, out = _verify_pcr_outcome(bad)
    result = load_only(qemu, bad, bad_dir / make.__name__)
    print(f"\n{make.__name__}: QEMU: {result.output!r}; verify pcr: exit {code}")
    assert not result.accepted and qemu_says in result.output
    assert code != 0 and "CRC" in out
    bad.unlink()


def test_section_order_is_measured_alike(qemu: Path, eif: Path, bad_dir: Path) -> None:
    """cmdline before kernel: nitro-cli never writes it, but neither parser enforces an order; both
    hash sections in file order, so the PCRs move, and must move identically."""
    reordered = bad_dir / "cmdline-first.eif"
    _cmdline_first(eif, reordered)
    code, out = _verify_pcr_outcome(reordered)
    assert code == 0, out
    expected, original = _verify_pcr(reordered), _verify_pcr(eif)
    assert expected[0] != original[0] and expected[1] != original[1] and expected[2] == original[2]
    b = boot(qemu, reordered, bad_dir / "order")
    _print_table(b, expected)
    device = _device_pcrs(b)
    assert {i: device[i] for i in (0, 1, 2)} == {i: expected[i] for i in (0, 1, 2)}
    reordered.unlink()


def test_loader_accepts_the_built_image(qemu: Path, eif: Path, bad_dir: Path) -> None:
    """The negative cases' control: `load_only` says yes to the good file."""
    result = load_only(qemu, eif, bad_dir / "good")
    assert result.accepted, result.output
