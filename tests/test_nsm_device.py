"""The /dev/nsm client: ioctl number and struct layout, the real system call, and the marshalling.

There is no /dev/nsm here. The real `fcntl.ioctl` is exercised on /dev/null (the kernel answers
ENOTTY to our request number); the marshalling is exercised with a stand-in for the kernel's part
that does what drivers/misc/nsm.c does: copy `request.len` bytes in from `request.addr`, copy the
module's answer (truncated to `response.len`) out to `response.addr` and write back `response.len`.
"""

from __future__ import annotations

import ctypes
import errno
import logging

import pytest

from enclave.nsm import NsmUnavailable, open_nsm
from enclave.nsm import _codec as c
from enclave.nsm.ca import EmulatorCa
from enclave.nsm.device import NSM_IOCTL_RAW, DeviceNsm, NsmIovec, NsmRaw
from enclave.nsm.emulator import EmulatedDevice, EmulatedNsm
from enclave.nsm.errors import (
    NsmProtocolError,
    NsmRequestRejected,
    NsmTransportError,
)


def test_ioctl_number_and_layout_match_the_uapi_header() -> None:
    # _IOWR(0x0A, 0, struct nsm_raw): dir 3 << 30 | size 32 << 16 | type 0x0A << 8 | nr 0
    assert NSM_IOCTL_RAW == 0xC0200A00
    assert ctypes.sizeof(NsmIovec) == 16
    assert ctypes.sizeof(NsmRaw) == 32
    assert NsmRaw.response.offset == 16
    assert NsmIovec.len.offset == 8


class KernelStandIn:
    """Plays drivers/misc/nsm.c's nsm_dev_ioctl in front of an emulated module."""

    def __init__(self, module: EmulatedDevice) -> None:
        self.module = module
        self.requests: list[bytes] = []

    def __call__(self, fd: int, request: int, raw: NsmRaw, mutate: bool) -> int:
        assert request == NSM_IOCTL_RAW and mutate is True
        if raw.request.len > c.REQUEST_MAX_SIZE:
            raise OSError(errno.EMSGSIZE, "Message too long")
        data = ctypes.string_at(raw.request.addr, raw.request.len)
        self.requests.append(data)
        answer = self.module.handle(data)
        raw.response.len = min(raw.response.len, len(answer))
        ctypes.memmove(raw.response.addr, answer, raw.response.len)
        return 0


@pytest.fixture(scope="module")
def ca() -> EmulatorCa:
    return EmulatorCa.generate()


@pytest.fixture
def device(ca: EmulatorCa) -> tuple[DeviceNsm, KernelStandIn]:
    kernel = KernelStandIn(EmulatedDevice(ca=ca, pcrs={0: b"\x01" * 48}))
    nsm = DeviceNsm("/dev/null", ioctl=kernel)
    yield nsm, kernel
    nsm.close()


def test_operations_through_the_ioctl_marshalling(device: tuple[DeviceNsm, KernelStandIn]) -> None:
    nsm, kernel = device
    info = nsm.describe_nsm()
    assert info.module_id.startswith("i-emulated") and info.max_pcrs == 32
    assert info.locked_pcrs == frozenset(range(16))
    assert nsm.describe_pcr(0).value == b"\x01" * 48
    new = nsm.extend_pcr(16, b"app")
    assert nsm.describe_pcr(16).value == new and not nsm.describe_pcr(16).locked
    nsm.lock_pcr(16)
    with pytest.raises(NsmRequestRejected, match="ReadOnlyIndex"):
        nsm.extend_pcr(16, b"more")
    assert len(nsm.get_random(600)) == 600
    doc = nsm.attestation(nonce=b"n" * 32)
    assert doc[:2] == b"\x84\x44"
    # The kernel saw exactly the codec's bytes.
    assert kernel.requests[0] == c.encode_request(c.DescribeNsm())
    assert kernel.requests[-1] == c.encode_request(c.Attestation(nonce=b"n" * 32))


def test_request_over_the_driver_limit_is_refused_before_the_call(
    device: tuple[DeviceNsm, KernelStandIn],
) -> None:
    nsm, kernel = device
    with pytest.raises(NsmRequestRejected, match="InputTooLarge"):
        nsm.extend_pcr(16, b"x" * 5000)
    assert kernel.requests == []


def test_emsgsize_maps_to_input_too_large() -> None:
    def ioctl(fd: int, request: int, raw: NsmRaw, mutate: bool) -> int:
        raise OSError(errno.EMSGSIZE, "Message too long")

    with (
        DeviceNsm("/dev/null", ioctl=ioctl) as nsm,
        pytest.raises(NsmRequestRejected, match="InputTooLarge"),
    ):
        nsm.describe_nsm()


def test_truncated_response_is_a_protocol_error(ca: EmulatorCa) -> None:
    kernel = KernelStandIn(EmulatedDevice(ca=ca))

    def short(fd: int, request: int, raw: NsmRaw, mutate: bool) -> int:
        kernel(fd, request, raw, mutate)
        raw.response.len -= 10
        return 0

    with DeviceNsm("/dev/null", ioctl=short) as nsm, pytest.raises(NsmProtocolError):
        nsm.describe_nsm()


def test_the_real_ioctl_reaches_the_kernel() -> None:
    # /dev/null is not an NSM: the kernel rejects our request number with ENOTTY.
    with (
        DeviceNsm("/dev/null") as nsm,
        pytest.raises(NsmTransportError, match="Inappropriate ioctl") as e,
    ):
        nsm.describe_nsm()
    assert e.value.errno == errno.ENOTTY


def test_missing_device_is_unavailable(tmp_path) -> None:
    with pytest.raises(NsmUnavailable, match="cannot open"):
        DeviceNsm(tmp_path / "nsm")


def test_closed_device_is_unavailable() -> None:
    nsm = DeviceNsm("/dev/null")
    nsm.close()
    with pytest.raises(NsmUnavailable, match="closed"):
        nsm.describe_nsm()


def test_open_nsm_never_falls_back_without_permission(tmp_path) -> None:
    with pytest.raises(NsmUnavailable, match="emulator is not allowed"):
        open_nsm(False, device_path=tmp_path / "nsm")


def test_open_nsm_falls_back_loudly_when_allowed(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="enclave.nsm"):
        nsm = open_nsm(True, device_path=tmp_path / "nsm", emulator_pcrs={2: "ab" * 48})
    assert isinstance(nsm, EmulatedNsm)
    assert nsm.describe_pcr(2).value == b"\xab" * 48
    assert "EMULATOR" in caplog.text and nsm.module_id in caplog.text


def test_open_nsm_prefers_the_device() -> None:
    nsm = open_nsm(True, device_path="/dev/null")
    assert isinstance(nsm, DeviceNsm)
    nsm.close()


def test_open_nsm_pins_a_saved_root(tmp_path) -> None:
    ca = EmulatorCa.generate()
    ca.save(tmp_path / "ca")
    assert (tmp_path / "ca" / "root.key.pem").stat().st_mode & 0o077 == 0
    nsm = open_nsm(True, device_path=tmp_path / "nsm", emulator_ca_dir=tmp_path / "ca")
    assert isinstance(nsm, EmulatedNsm) and nsm.root_pem == ca.root_pem


def test_open_nsm_reads_pcrs_and_ca_from_fw_cfg(tmp_path) -> None:
    # The guest's sysfs layout for `-fw_cfg name=opt/sentinel/<name>,file=...`.
    fw_cfg = tmp_path / "opt" / "sentinel"
    (fw_cfg / "pcrs").mkdir(parents=True)
    (fw_cfg / "nsm-ca").mkdir()
    (fw_cfg / "pcrs" / "raw").write_text('{"Measurements": {"PCR0": "' + "0a" * 48 + '"}}')
    ca = EmulatorCa.generate()
    (fw_cfg / "nsm-ca" / "raw").write_bytes(ca.pem_bundle())
    nsm = open_nsm(True, device_path=tmp_path / "nsm", fw_cfg_dir=fw_cfg)
    assert isinstance(nsm, EmulatedNsm)
    assert nsm.root_pem == ca.root_pem
    assert nsm.describe_pcr(0).value == b"\x0a" * 48


def test_bad_fw_cfg_ca_bundle_is_a_config_error(tmp_path) -> None:
    from enclave.nsm.errors import NsmConfigError

    (tmp_path / "nsm-ca").mkdir()
    (tmp_path / "nsm-ca" / "raw").write_bytes(EmulatorCa.generate().root_pem)  # no key
    with pytest.raises(NsmConfigError, match="no PKCS#8 private key"):
        open_nsm(True, device_path=tmp_path / "nsm", fw_cfg_dir=tmp_path)
