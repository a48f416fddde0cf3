"""`router run`'s TOML: the journal, head-source and API keys, each refusal named."""

from __future__ import annotations

from pathlib import Path

import pytest
from router_support import RUN_CONFIG_BASE, load_run_config

from router.config import DEFAULT_JOURNAL, load_config
from router.errors import ConfigError

_load = load_run_config


def test_defaults_journal_beside_the_config_and_polling_without_ws(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.journal == str((tmp_path / DEFAULT_JOURNAL).resolve())
    assert cfg.journal_sync == "normal" and cfg.ws == ()


@pytest.mark.parametrize(("extra", "expected"), [
    ('journal = "memory"', "memory"),
    ('journal = "postgresql://sentinel@127.0.0.1/j"', "postgresql://sentinel@127.0.0.1/j"),
    ('journal = "sub/j.sqlite"', "SUB"),
])
def test_journal_spec(tmp_path: Path, extra: str, expected: str) -> None:
    cfg = _load(tmp_path, extra)
    want = str((tmp_path / "sub" / "j.sqlite").resolve()) if expected == "SUB" else expected
    assert cfg.journal == want


def test_ws_is_a_url_or_a_list(tmp_path: Path) -> None:
    one = _load(tmp_path, 'ws = "ws://127.0.0.1:8545"')
    two = _load(tmp_path, 'ws = ["ws://127.0.0.1:8545", "wss://127.0.0.1:8546"]')
    assert one.ws == ("ws://127.0.0.1:8545",)
    assert len(two.ws) == 2


@pytest.mark.parametrize(("extra", "match"), [
    ('journal = ""', "journal must be"),
    ("journal = 5", "journal must be"),
    ('journal_sync = "off"', "journal_sync"),
    ("journal_lease_seconds = 0.1", "journal_lease_seconds"),
    ("journal_lease_seconds = true", "journal_lease_seconds"),
    ('ws = "http://127.0.0.1:8545"', "ws must be"),
    ('ws = ["ws://127.0.0.1:1", 5]', "ws must be"),
    ("[router]\norder_wait_seconds = 0.25", "order_wait_seconds"),
], ids=["empty-journal", "journal-int", "sync", "lease-short", "lease-bool", "ws-http",
        "ws-list-int", "removed-key"])
def test_bad_values_are_named(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, extra)


@pytest.mark.parametrize("listen", ["tcp:127.0.0.1:9000", "vsock:3:5000", "unix:", "/tmp/r.sock"])
def test_the_api_listens_on_a_unix_socket_only(tmp_path: Path, listen: str) -> None:
    p = tmp_path / "router.toml"
    p.write_text(RUN_CONFIG_BASE.replace('listen = "unix:/tmp/r.sock"', f'listen = "{listen}"'))
    with pytest.raises(ConfigError, match="listen must be unix:PATH"):
        load_config(p)
