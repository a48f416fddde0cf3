"""The boot check's console reader (no QEMU needed): it must never act on a half-written line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reproducible.boot.errors import BootTimeout
from reproducible.boot.qemu import Guest, GuestConfig


def _guest(tmp_path: Path) -> Guest:
    config = GuestConfig(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="", workdir=tmp_path)
    return Guest(config)


def test_half_written_line_is_not_returned(tmp_path: Path) -> None:
    guest = _guest(tmp_path)
    guest.console_log.write_text('boot\nSENTINEL-SELFCHECK {"ok": tr')
    with pytest.raises(BootTimeout, match="SENTINEL-SELFCHECK"):
        guest.wait_for_line("SENTINEL-SELFCHECK ", timeout=0.3)


def test_line_is_returned_once_complete(tmp_path: Path) -> None:
    guest = _guest(tmp_path)
    guest.console_log.write_text('boot\r\nSENTINEL-SELFCHECK {"ok": tr')

    def finish() -> None:
        time.sleep(0.2)
        with guest.console_log.open("a") as f:
            f.write('ue}\r\nmore')

    t = threading.Thread(target=finish)
    t.start()
    line = guest.wait_for_line("SENTINEL-SELFCHECK ", timeout=5)
    t.join()
    assert line == 'SENTINEL-SELFCHECK {"ok": true}'
