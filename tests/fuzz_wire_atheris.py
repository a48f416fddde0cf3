"""atheris harness: byte streams into a live in-process signer, checked by the framing oracle.

Run by tests/test_enclave_fuzz.py::test_atheris_bounded_run (bounded with -runs/-max_total_time);
by hand: `python tests/fuzz_wire_atheris.py -runs=100000`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from enclave import server, wire  # noqa: F401

from signer_support import running_signer  # noqa: E402
from wire_fuzz_support import check_answers, exchange  # noqa: E402


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="sentinel-atheris-") as tmp,
        running_signer(Path(tmp)) as srv,
    ):
        address = str(srv.address)

        def one_input(data: bytes) -> None:
            # Seed most inputs with a valid header so the fuzzer explores past the magic check.
            if data and data[0] & 1:
                data = b"SN\x01" + data[1:]
            check_answers(data, exchange(address, data, timeout=20))

        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
