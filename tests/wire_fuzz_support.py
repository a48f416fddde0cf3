"""The stream oracle shared by the hypothesis and atheris fuzzers of the signer's frame decoder.

`expected_frames(stream)` is the reference framing model: a frame is 12 header bytes plus the
declared payload length, whatever the header says, so every complete frame must get exactly one
answer (a response or an error frame) carrying its request id, in order, and nothing else.
"""

from __future__ import annotations

import socket

from signer_support import header

from enclave import wire
from enclave.errors import ErrorCode


def expected_frames(stream: bytes) -> list[tuple[int, int]]:
    """(opcode, request_id) of each complete frame in `stream`."""
    out = []
    pos = 0
    while len(stream) - pos >= wire.HEADER_SIZE:
        _, _, op, rid, n = wire.HEADER.unpack_from(stream, pos)
        if pos + wire.HEADER_SIZE + n > len(stream):
            break
        out.append((op, rid))
        pos += wire.HEADER_SIZE + n
    return out


def exchange(address: str, stream: bytes, timeout: float = 20.0) -> bytes:
    """Send `stream`, half-close, and read every answer until the server closes (bounded time)."""
    from enclave.transport import connect

    sock = connect(address)
    sock.settimeout(timeout)
    try:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def check_answers(stream: bytes, answers: bytes) -> None:
    """Assert that `answers` is exactly one well-formed frame per complete frame of `stream`."""
    expected = expected_frames(stream)
    pos = 0
    for op, rid in expected:
        assert len(answers) - pos >= wire.HEADER_SIZE, f"missing answer to request id {rid}"
        magic, version, rop, rrid, n = wire.HEADER.unpack_from(answers, pos)
        assert magic == wire.MAGIC and version == wire.VERSION
        assert rrid == rid, f"answer id {rrid} for request {rid}"
        assert n <= wire.MAX_PAYLOAD and pos + wire.HEADER_SIZE + n <= len(answers)
        payload = answers[pos + wire.HEADER_SIZE : pos + wire.HEADER_SIZE + n]
        if rop == wire.OP_ERROR:
            code, message = wire.decode_error(payload)
            ErrorCode(code)  # a known code
            assert code != ErrorCode.INTERNAL, f"internal error for opcode {op:#x}: {message}"
            assert message.isascii() and message
        else:
            assert rop == op | wire.RESPONSE_BIT, f"answer opcode {rop:#x} to {op:#x}"
        pos += wire.HEADER_SIZE + n
    assert pos == len(answers), f"{len(answers) - pos} unexpected bytes after the answers"


def frame(op: int, rid: int, payload: bytes, *, magic: bytes = b"SN", version: int = 1,
          length: int | None = None) -> bytes:  # fmt: skip
    n = len(payload) if length is None else length
    return header(op, rid, n, magic=magic, version=version) + payload
