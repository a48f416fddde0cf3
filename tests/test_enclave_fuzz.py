"""Fuzzing the frame decoder through a live server: no crash, no hang, an error frame for every
malformed frame, and the server keeps serving other clients.

hypothesis drives byte streams (random, and built from frames with mutated headers and payloads);
a bounded atheris run (coverage-guided) runs the same oracle when atheris is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signer_support import running_signer
from wire_fuzz_support import check_answers, exchange, frame

from enclave import wire
from enclave.tx import UnsignedTx
from router.signer_client import SignerClient

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from enclave.nsm.emulator import EmulatedNsm

    # A short busy-poll window: streams exercise both the spinning and the blocking reads.
    with running_signer(tmp_path_factory.mktemp("fuzz"), nsm=EmulatedNsm(), spin_us=50) as server:
        yield str(server.address)


def _valid_payload(op: int, data: bytes) -> bytes:
    if op == wire.Op.SIGN_DIGEST:
        return data[:32].ljust(32, b"\0")
    if op == wire.Op.SIGN_TX:
        tx = UnsignedTx(2, 31337, len(data), 21000, data[:20].ljust(20, b"\1"), 0, data, 10**9, 1)
        return wire.encode_sign_tx(tx)
    if op == wire.Op.ATTEST:
        return wire.encode_attest(nonce=data[:64] or None, user_data=data[64:128] or None)
    return b""


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from([*list(wire.Op), 0, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
    rid = draw(st.integers(0, 2**32 - 1))
    data = draw(st.binary(max_size=200))
    payload = draw(st.sampled_from([_valid_payload(op, data), data]))
    kind = draw(st.sampled_from(["ok", "ok", "magic", "version", "short", "long", "huge", "flip"]))
    if kind == "magic":
        return frame(op, rid, payload, magic=draw(st.binary(min_size=2, max_size=2)))
    if kind == "version":
        return frame(op, rid, payload, version=draw(st.integers(0, 255)))
    if kind == "short" and payload:
        return frame(op, rid, payload, length=len(payload) - 1) + payload[-1:]
    if kind == "long":
        return frame(op, rid, payload + b"\0" * 3)
    if kind == "huge":
        n = wire.MAX_PAYLOAD + draw(st.integers(1, 3000))
        return frame(op, rid, b"\x5a" * n)
    if kind == "flip" and payload:
        b = bytearray(frame(op, rid, payload))
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    return frame(op, rid, payload)


streams = st.one_of(
    st.binary(max_size=400),
    st.lists(frames(), min_size=1, max_size=6).map(b"".join),
    st.tuples(st.lists(frames(), max_size=4).map(b"".join), st.binary(max_size=40)).map(b"".join),
)


@settings(
    max_examples=int(os.environ.get("SENTINEL_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(stream=streams)
def test_server_answers_every_frame_and_keeps_serving(signer: str, stream: bytes) -> None:
    check_answers(stream, exchange(signer, stream))
    with SignerClient.connect(signer, spin_us=0) as other:  # another client is still served
        other.ping()


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(payload=st.binary(max_size=600))
def test_decoders_raise_only_protocol_errors(payload: bytes) -> None:
    from enclave.errors import ProtocolError

    for decode in (
        wire.decode_sign_tx,
        wire.decode_attest,
        wire.decode_error,
        wire.Stats.decode,
    ):
        try:
            decode(memoryview(payload))
        except ProtocolError as e:
            assert e.code and str(e).isascii()


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _atheris_available(), reason="atheris is not installed on this platform")
def test_atheris_bounded_run(tmp_path: Path) -> None:
    """Coverage-guided fuzzing of the same oracle, bounded in runs and time."""
    runs = os.environ.get("SENTINEL_ATHERIS_RUNS", "20000")
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_wire_atheris.py"), f"-runs={runs}", "-max_total_time=90",
         "-max_len=2048", f"-artifact_prefix={tmp_path}/"],
        cwd=HERE.parent, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"},
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr, tail


def test_oracle_catches_missing_extra_and_reordered_answers(signer: str) -> None:
    stream = frame(1, 7, b"") + frame(0x42, 8, b"") + frame(3, 9, bytes(32))
    answers = exchange(signer, stream)
    check_answers(stream, answers)
    first = 12
    second = first + 12 + int.from_bytes(answers[first + 8 : first + 12], "little")
    for bad in (
        answers[:-1],
        answers + b"\0",
        answers[first:second] + answers[:first] + answers[second:],
    ):
        with pytest.raises(AssertionError):
            check_answers(stream, bad)
