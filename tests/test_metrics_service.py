"""The exporter as configured for `python -m router run`: the TOML keys (each refusal named) and
the service serving /metrics, /healthz and /readyz, stopped with the router."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from anvil_support import Anvil, free_port
from prometheus_client.parser import text_string_to_metric_families
from router_proc_support import RouterProcess, write_config
from router_support import load_run_config
from signer_support import running_signer

from router.errors import ConfigError
from router.listen import ListenAddress

pytestmark = pytest.mark.timeout(120)

_load = load_run_config


def test_metrics_absent_is_off(tmp_path: Path) -> None:
    assert _load(tmp_path, "").metrics is None


@pytest.mark.parametrize(("extra", "host", "port"), [
    ('metrics = "127.0.0.1:9464"', "127.0.0.1", 9464),
    ('metrics = "localhost:9100"', "127.0.0.1", 9100),
    ('metrics = "[::1]:9464"', "::1", 9464),
    ('metrics = "127.0.0.2:0"', "127.0.0.2", 0),
    ('metrics = "0.0.0.0:9464"\nmetrics_allow_remote = true', "0.0.0.0", 9464),
    ('metrics = "[::]:9464"\nmetrics_allow_remote = true', "::", 9464),
])
def test_metrics_address(tmp_path: Path, extra: str, host: str, port: int) -> None:
    assert _load(tmp_path, extra).metrics == ListenAddress(host, port)


@pytest.mark.parametrize(("extra", "match"), [
    ('metrics = "0.0.0.0:9464"', "not a loopback address.*metrics_allow_remote"),
    ('metrics = "192.168.1.10:9464"', "not a loopback address"),
    ('metrics = "[::]:9464"', "not a loopback address"),
    ('metrics = "0.0.0.0:9464"\nmetrics_allow_remote = false', "not a loopback address"),
    ('metrics = "metrics.internal:9464"', "not an IP address"),
    ('metrics = "127.0.0.1"', "not HOST:PORT"),
    ('metrics = ":9464"', "not HOST:PORT"),
    ('metrics = "::1:9464"', "needs brackets"),
    ('metrics = "127.0.0.1:70000"', "0..65535"),
    ('metrics = "127.0.0.1:http"', "0..65535"),
    ("metrics = 9464", "must be a string HOST:PORT"),
    ('metrics = ""', "must be a string HOST:PORT"),
    ('metrics = "127.0.0.1:9464"\nmetrics_allow_remote = "yes"', "metrics_allow_remote"),
], ids=["any-v4", "lan", "any-v6", "flag-false", "name", "no-port", "no-host", "v6-bare",
        "port-range", "port-name", "int", "empty", "flag-str"])
def test_bad_metrics_values_are_named(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, extra)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback, test-made URL)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_service_serves_metrics_until_stopped(tmp_path: Path, anvil: Anvil) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_signer(tmp_path) as signer:
        cfg = write_config(tmp_path, anvil, str(signer.address),
                           extra=f'metrics = "127.0.0.1:{port}"')
        with RouterProcess(cfg) as proc:
            deadline = time.monotonic() + 20
            while (status := _get(base + "/readyz"))[0] != 200:
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert json.loads(status[1])["ready"] is True
            assert _get(base + "/healthz")[0] == 200
            code, text = _get(base + "/metrics")
            assert code == 200
            samples = {s.name: s.value for f in text_string_to_metric_families(text)
                       for s in f.samples if not s.labels}
            assert samples["sentinel_router_started"] == 1
            assert samples["sentinel_router_ready"] == 1
            assert samples["sentinel_router_next_nonce"] == 0
            assert _get(base + "/nope")[0] == 404
            assert proc.stop() == 0
        with pytest.raises(urllib.error.URLError):  # the exporter went with the router
            urllib.request.urlopen(base + "/healthz", timeout=2)  # noqa: S310
    assert "metrics on http://127.0.0.1:" in (tmp_path / "router.log").read_text()
