"""Guest-side glue for booting a development image under QEMU (`python -m enclave.devboot`).

Started by the development init (bootstrap ramdisk) beside the signer, never by the signer itself, so
the signer runs exactly as it does on Nitro hardware. It does three things:

1. self-check: talks to the signer over AF_VSOCK through `vsock_loopback` (the production code path)
   and prints one parseable console line, `SENTINEL-SELFCHECK {json}`;
2. relay: joins the virtio-serial port `sentinel.signer` (a Unix socket on the host) to a fresh
   AF_VSOCK connection to the signer for each host connection, byte for byte, so the host's router
   speaks the signer protocol unchanged;
3. control: a line `poweroff` on the virtio-serial port `sentinel.control` ends this process, after
   which the init powers the guest off cleanly; a line `nsm-check <nonce hex>` runs `nsm_check` on
   /dev/nsm and prints `SENTINEL-NSMCHECK {json}` (conformance against QEMU's virtio-nsm, whose
   `nitro-enclave` machine has a real Nitro device model; tests/nitro_qemu/).

On Nitro hardware there are no virtio-serial ports; then only the self-check runs.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from enclave import wire
from enclave.errors import EnclaveError
from enclave.nsm import Nsm
from enclave.transport import connect, parse_address

VIRTIO_PORTS = Path("/sys/class/virtio-ports")
SIGNER_PORT_NAME = "sentinel.signer"
CONTROL_PORT_NAME = "sentinel.control"
SELFCHECK_PREFIX = "SENTINEL-SELFCHECK "
NSMCHECK_PREFIX = "SENTINEL-NSMCHECK "
# The first PCR the enclave may extend and lock (0-15 are the hypervisor's, locked at boot).
USER_PCR = 16
_CHUNK = 64 * 1024


def find_port(name: str, ports_dir: Path = VIRTIO_PORTS) -> Path | None:
    """/dev node of the virtio-serial port called `name` (no udev here, so read sysfs)."""
    try:
        entries = sorted(ports_dir.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            if (entry / "name").read_text().strip() == name:
                return Path("/dev") / entry.name
        except OSError:
            continue
    return None


def _call(sock: socket.socket, op: int, payload: bytes, rid: int) -> bytes:
    sock.sendall(wire.pack_frame(op, rid, payload))
    header = _recv_exact(sock, wire.HEADER_SIZE)
    magic, version, rop, rrid, n = wire.HEADER.unpack(header)
    wire.check_header(magic, version, n)
    body = _recv_exact(sock, n)
    if rop == wire.OP_ERROR:
        code, message = wire.decode_error(body)
        raise RuntimeError(f"signer refused op 0x{op:02x}: code {code}: {message}")
    if rop != op | wire.RESPONSE_BIT or rrid != rid:
        raise RuntimeError(f"answer opcode 0x{rop:02x} id {rrid} to op 0x{op:02x} id {rid}")
    return body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("signer closed the connection")
        buf += chunk
    return bytes(buf)


def self_check(signer: str, wait: float) -> dict[str, object]:
    """Ping, identify, sign and attest over `signer`; the result says what passed."""
    from coincurve import PublicKey

    from enclave._keccak import keccak256

    addr = parse_address(signer)
    started = time.monotonic()
    deadline = started + wait
    while True:
        try:
            sock = connect(addr, timeout=5.0)
            break
        except EnclaveError as e:
            if time.monotonic() > deadline:
                return {"ok": False, "error": f"no signer at {signer} after {wait:.0f} s: {e}"}
            time.sleep(0.2)
    result: dict[str, object] = {"ok": False, "signer": signer, "transport": addr.kind}
    with sock:
        sock.settimeout(30.0)  # a signer that stops answering fails the check instead of hanging it
        try:
            t0 = time.monotonic()
            _call(sock, wire.Op.PING, b"", 1)
            result["ping_us"] = round((time.monotonic() - t0) * 1e6, 1)
            info = _call(sock, wire.Op.GET_KEY, b"", 2)
            public_key, address = info[:65], info[65:]
            result["address"] = "0x" + address.hex()
            digest = keccak256(b"sentinel self-check")
            sig = _call(sock, wire.Op.SIGN_DIGEST, digest, 3)
            recovered = PublicKey.from_signature_and_message(sig, digest, hasher=None)
            result["signature_recovers"] = recovered.format(compressed=False) == public_key
            nonce = os.urandom(16)
            doc = _call(sock, wire.Op.ATTEST, wire.encode_attest(nonce, None, None), 4)
            result["attestation_bytes"] = len(doc)
            result["attestation_has_nonce"] = nonce in doc
            result["attestation_binds_key"] = public_key in doc  # PROTOCOL.md, "Key binding"
            result["ok"] = bool(
                result["signature_recovers"]
                and result["attestation_has_nonce"]
                and result["attestation_binds_key"]
            )
        except (OSError, RuntimeError, EnclaveError, ValueError) as e:
            result["error"] = str(e)
    result["seconds_since_start"] = round(time.monotonic() - started, 3)
    return result


def _pump(src: int, dst: int) -> bool:
    """Copy what is readable on src to dst; False at end of stream."""
    data = os.read(src, _CHUNK)
    if not data:
        return False
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return True


def relay(port: Path, signer: str) -> None:
    """Serve host connections arriving on the virtio-serial `port`, one at a time, forever."""
    addr = parse_address(signer)
    fd = os.open(port, os.O_RDWR)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        # POLLHUP while no host is connected to the chardev socket.
        ev = dict(poller.poll(1000)).get(fd, 0)
        if ev & select.POLLHUP or not ev & select.POLLIN:
            time.sleep(0.05)
            continue
        try:
            sock = connect(addr, timeout=5.0)
        except EnclaveError as e:
            print(f"sentinel-devboot: relay cannot reach the signer: {e}", file=sys.stderr)
            time.sleep(0.5)
            continue
        with sock:
            pair = select.poll()
            pair.register(fd, select.POLLIN)
            pair.register(sock.fileno(), select.POLLIN)
            open_ = True
            while open_:
                for ready, ev in pair.poll():
                    if ready == fd and ev & select.POLLHUP and not ev & select.POLLIN:
                        open_ = False  # host went away: drop this signer connection
                    elif ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        other = sock.fileno() if ready == fd else fd
                        try:
                            if not _pump(ready, other):
                                open_ = False
                        except OSError:
                            open_ = False


def nsm_check(nonce: bytes, device_path: str = "/dev/nsm") -> dict[str, object]:
    """`exercise_nsm` on the device at `device_path` (never the emulator)."""
    from enclave.nsm import NsmError
    from enclave.nsm.device import DeviceNsm

    try:
        nsm = DeviceNsm(device_path)
    except NsmError as e:
        return {"ok": False, "device": device_path, "error": str(e)}
    with nsm:
        result = exercise_nsm(nsm, nonce)
    result["device"] = device_path
    return result


def exercise_nsm(nsm: Nsm, nonce: bytes) -> dict[str, object]:
    """Every NSM operation once; the result says what each answered. Extends and locks PCR16, so
    run it once per module (per boot).

    The attestation document goes back whole (base64) so the host checks it with its own decoder;
    the same function runs on the host against the emulator, to compare the two field by field.
    """
    import base64
    import hashlib

    from enclave.nsm import NsmError

    result: dict[str, object] = {"ok": False}
    step = "DescribeNSM"
    try:
        d = nsm.describe_nsm()
        result["describe_nsm"] = {
            "version": [d.version_major, d.version_minor, d.version_patch],
            "module_id": d.module_id, "max_pcrs": d.max_pcrs,
            "locked_pcrs": sorted(d.locked_pcrs), "digest": d.digest,
        }
        pcrs: dict[str, object] = {}
        for index in (0, 1, 2, 3, 4, 8, USER_PCR):
            step = f"DescribePCR {index}"
            state = nsm.describe_pcr(index)
            pcrs[str(index)] = {"value": state.value.hex(), "locked": state.locked}
        result["pcrs"] = pcrs
        step = "GetRandom"
        a, b = nsm.get_random(32), nsm.get_random(32)
        result["get_random"] = {"bytes": len(a), "two_calls_differ": a != b}
        step = f"ExtendPCR {USER_PCR}"
        before = nsm.describe_pcr(USER_PCR).value
        data = b"sentinel nsm-check"
        extended = nsm.extend_pcr(USER_PCR, data)
        step = f"LockPCR {USER_PCR}"
        nsm.lock_pcr(USER_PCR)
        after = nsm.describe_pcr(USER_PCR)
        result["pcr16"] = {
            "before": before.hex(),
            "extended": extended.hex(),
            "extend_is_sha384_of_old_and_data": extended == hashlib.sha384(before + data).digest(),
            "locked_after_lock": after.locked,
            "value_after_lock": after.value.hex(),
            "extend_after_lock": _rejection(lambda: nsm.extend_pcr(USER_PCR, data)),
            "lock_again": _rejection(lambda: nsm.lock_pcr(USER_PCR)),
            "extend_locked_pcr0": _rejection(lambda: nsm.extend_pcr(0, data)),
            "describe_pcr_32": _rejection(lambda: nsm.describe_pcr(32)),
        }
        step = "Attestation limits"
        result["attestation_limits"] = {
            "empty_public_key": _rejection(lambda: nsm.attestation(public_key=b"")),
            "user_data_1025": _rejection(lambda: nsm.attestation(user_data=bytes(1025))),
        }
        step = "Attestation"
        doc = nsm.attestation(nonce=nonce, user_data=b"sentinel nsm-check")
        result["attestation"] = base64.b64encode(doc).decode()
        result["ok"] = True
    except (NsmError, OSError, ValueError) as e:
        result["error"] = f"{step}: {e}"
    return result


def _rejection(call: Callable[[], object]) -> str:
    """'ok' if the call succeeded, else the NSM error code it was rejected with."""
    from enclave.nsm import NsmRequestRejected

    try:
        call()
    except NsmRequestRejected as e:
        return e.nsm_code
    return "ok"


def serve_control(port: Path, device_path: str = "/dev/nsm") -> None:
    """Obey the host's lines on the control port until `poweroff`.

    `nsm-check <nonce hex>` prints `SENTINEL-NSMCHECK {json}` (see `nsm_check`); other lines are
    answered on the console as unknown.
    """
    with open(port, "rb", buffering=0) as f:
        line = b""
        while True:
            chunk = f.read(1)
            if not chunk:
                time.sleep(0.1)  # no host connected yet
                continue
            if chunk != b"\n":
                line += chunk
                continue
            words, line = line.decode(errors="replace").split(), b""
            if words == ["poweroff"]:
                return
            if len(words) == 2 and words[0] == "nsm-check":
                try:
                    nonce = bytes.fromhex(words[1])
                except ValueError:
                    print(f"sentinel-devboot: nsm-check needs a hex nonce, got {words[1]!r}", flush=True)
                    continue
                result = nsm_check(nonce, device_path)
                print(NSMCHECK_PREFIX + json.dumps(result, sort_keys=True), flush=True)
            elif words:
                print(f"sentinel-devboot: unknown control command {words[0]!r}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave.devboot", description=__doc__)
    parser.add_argument("--signer", default="vsock:1:5000", help="the signer's address in the guest")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the signer")
    args = parser.parse_args(argv)
    result = self_check(args.signer, args.wait)
    print(SELFCHECK_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    signer_port = find_port(SIGNER_PORT_NAME)
    if signer_port is not None:
        threading.Thread(target=relay, args=(signer_port, args.signer), daemon=True).start()
        print(f"sentinel-devboot: relaying {signer_port} to {args.signer}", flush=True)
    control = find_port(CONTROL_PORT_NAME)
    if control is None:
        return 0 if result["ok"] else 1
    serve_control(control)
    print("sentinel-devboot: power-off requested by the host", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
