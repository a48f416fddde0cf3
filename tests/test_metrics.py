"""The metrics exporter (issue 16): a real router on a real anvil with the real signer, scraped over
real HTTP and parsed with prometheus_client's own parser; values must move with what happens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from anvil_support import Anvil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from router_support import config_for, dev_signer, transfers, wait_for
from signer_support import running_signer

from enclave.server import SignerServer
from router.core import Router
from router.errors import ConfigError
from router.events import EventBus, EventKind
from router.metrics.latency import LatencyHistogram
from router.metrics.outcomes import IntentOutcomes
from router.metrics.server import MetricsServer
from router.nonces import TxState
from router.rpc import redact
from router.signer_client import SignerClient
from router.signing import TxSigner

pytestmark = pytest.mark.timeout(120)


# --- helpers ------------------------------------------------------------------------------------


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def get(self, name: str, /, **labels: str) -> float | None:
        hits = [s.value for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(hits) <= 1, f"{name}{labels}: {len(hits)} samples"
        return hits[0] if hits else None

    def value(self, name: str, /, **labels: str) -> float:
        v = self.get(name, **labels)
        assert v is not None, f"no sample {name}{labels}"
        return v

    def buckets(self, name: str, /, **labels: str) -> dict[float, float]:
        return {float(s.labels["le"]): s.value for s in self.samples
                if s.name == f"{name}_bucket"
                and all(s.labels.get(k) == v for k, v in labels.items())}


async def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def scrape(server: MetricsServer) -> Scrape:
    status, ctype, text = await get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return Scrape(text)


async def readyz(server: MetricsServer) -> tuple[int, dict[str, object]]:
    import json

    status, ctype, text = await get(server.url + "/readyz")
    assert ctype.startswith("application/json")
    return status, json.loads(text)


async def readyz_becomes(server: MetricsServer, status: int) -> dict[str, object]:
    """Poll /readyz until it answers `status` (5 s at most); its last body."""
    for _ in range(100):
        got, body = await readyz(server)
        if got == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz stayed {got}: {body}")


@contextlib.contextmanager
def real_signer(tmp: Path) -> Iterator[tuple[SignerServer, SignerClient]]:
    with running_signer(tmp) as server:
        # A short connect timeout: a poll of a killed signer gives up fast instead of blocking
        # the signer thread for the default 5 s.
        client = SignerClient.connect(str(server.address), spin_us=0, connect_timeout=0.3)
        try:
            yield server, client
        finally:
            client.close()


@contextlib.asynccontextmanager
async def exporting(anvil: Anvil, signer: TxSigner, *, start: bool = True,
                    stats_interval: float = 0.1, head_max_age: float = 60.0,
                    **overrides: object) -> AsyncIterator[tuple[Router, MetricsServer]]:
    router = Router(config_for(anvil, **overrides), signer)
    server = MetricsServer(router, "127.0.0.1:0", stats_interval=stats_interval,
                           head_max_age=head_max_age)
    await server.start()
    try:
        if start:
            await router.start()
        yield router, server
    finally:
        await server.close()
        await router.close()


# --- a real signer, real submits ----------------------------------------------------------------


def test_submits_move_counters_histogram_and_signer_stats(anvil: Anvil, tmp_path: Path) -> None:
    intents = transfers(3, tag="metrics")

    async def main() -> None:
        with real_signer(tmp_path) as (_, client):
            async with exporting(anvil, client) as (router, server):
                before = await scrape(server)
                assert before.get("sentinel_router_counter_total", name="submitted") in (None, 0)
                assert before.value("sentinel_router_next_nonce") == 0
                handles = [await router.submit(i) for i in intents]
                for h in handles:
                    await h.receipt(timeout=20)
                await wait_for(lambda: not router.nonces.pending(), what="all landed")
                polls = server.signer_stats.polls  # the counters are as fresh as the last poll
                await wait_for(lambda: server.signer_stats.polls >= polls + 2, what="STATS polls")
                after = await scrape(server)

        assert after.value("sentinel_router_counter_total", name="submitted") == 3
        assert after.value("sentinel_router_next_nonce") == 3
        assert after.value("sentinel_router_pending_intents") == 0
        assert after.value("sentinel_router_started") == 1
        assert after.value("sentinel_router_tip_block") == int(str(anvil.rpc("eth_blockNumber")), 16)
        assert after.value("sentinel_router_head_age_seconds") < 60
        assert 0 <= after.value("sentinel_router_head_received_age_seconds") < 60
        # broadcast outcomes by endpoint: the label is scheme://host:port, never a path
        label = redact(anvil.rpc_url)
        assert label == f"http://127.0.0.1:{anvil.port}"
        assert after.value("sentinel_router_broadcasts_total", endpoint=label,
                           outcome="accepted") >= 3
        endpoints = {s.labels["endpoint"] for s in after.samples
                     if s.name == "sentinel_router_broadcasts_total"}
        assert endpoints == {label}
        assert after.value("sentinel_router_endpoint_up", endpoint=label) == 1
        # the signer round trips: each in a µs bucket below 100 ms
        name = "sentinel_router_signer_round_trip_seconds"
        count = after.value(f"{name}_count", op="sign_tx")
        assert count >= 3
        buckets = after.buckets(name, op="sign_tx")
        assert buckets[float("inf")] == count
        assert min(buckets) == 1e-05 and buckets[0.1] >= 1
        fastest = min(le for le, n in buckets.items() if n > 0)
        assert fastest < 0.1
        assert 0 < after.value(f"{name}_sum", op="sign_tx") < count * 0.1
        assert after.value(f"{name}_count", op="stats") >= 2
        # the enclave's counters, through its STATS op
        assert after.value("sentinel_signer_up") == 1
        assert after.value("sentinel_signer_signed_txs_total") >= 3
        assert after.value("sentinel_signer_requests_total") >= \
            after.value("sentinel_signer_signed_txs_total")
        assert after.get("sentinel_signer_presign_pool_ready") is not None  # dev policy: a pool
        assert after.value("sentinel_signer_stats_age_seconds") < 10

    asyncio.run(main())


def test_a_landed_submit_counts_as_landed(anvil: Anvil, tmp_path: Path) -> None:
    """End to end: a real submit that lands moves intents_total{state="landed"}."""
    intent = transfers(1, tag="landed-e2e")[0]

    async def main() -> float:
        with real_signer(tmp_path) as (_, client):
            async with exporting(anvil, client) as (router, server):
                h = await router.submit(intent)
                await h.receipt(timeout=20)
                assert h.state is TxState.LANDED
                await wait_for(lambda: server.outcomes.terminal["landed"] >= 1, timeout=5,
                               what="a landed event")
                return (await scrape(server)).value("sentinel_router_intents_total",
                                                    state="landed")

    assert asyncio.run(main()) == 1


def test_bus_events_are_counted_by_terminal_state_once_per_intent(anvil: Anvil) -> None:
    async def main() -> Scrape:
        async with exporting(anvil, dev_signer()) as (router, server):
            bus = router.bus
            bus.publish(EventKind.SUBMITTED, "a", 0)
            bus.publish(EventKind.LANDED, "a", 0, block_number=5, confirmations=1)
            bus.publish(EventKind.LANDED, "a", 0, block_number=5, confirmations=2)
            bus.publish(EventKind.REORGED_OUT, "a", 0)
            bus.publish(EventKind.LANDED, "a", 0, block_number=6, confirmations=1)
            bus.publish(EventKind.FAILED, "b", 1, reason="insufficient funds")
            bus.publish(EventKind.CANCELLED, "c", 2)
            bus.publish(EventKind.LANDED, "d", 3, block_number=7, confirmations=1)
            await wait_for(lambda: server.outcomes.events["landed"] == 4, what="events counted")
            return await scrape(server)

    s = asyncio.run(main())
    assert s.value("sentinel_router_intents_total", state="landed") == 2  # a once, d once
    assert s.value("sentinel_router_intents_total", state="failed") == 1
    assert s.value("sentinel_router_intents_total", state="cancelled") == 1
    assert s.value("sentinel_router_intent_events_total", kind="landed") == 4
    assert s.value("sentinel_router_intent_events_total", kind="reorged_out") == 1
    assert s.value("sentinel_router_intent_events_total", kind="submitted") == 1
    assert s.value("sentinel_router_intent_events_total", kind="replaced") == 0
    assert s.value("sentinel_router_intent_events_lost_total") == 0


def test_outcomes_resubscribe_after_falling_behind() -> None:
    """A burst larger than the subscription's queue ends it with EventsLost; the counter notes
    it and counts what comes after."""

    async def main() -> IntentOutcomes:
        bus = EventBus(queue_size=2)
        outcomes = IntentOutcomes(bus)
        await outcomes.start()
        for i in range(5):  # no await: the counting task cannot run in between
            bus.publish(EventKind.FAILED, f"x{i}", i)
        await wait_for(lambda: outcomes.lost == 1 and bus.subscribers == 1, what="resubscribed")
        bus.publish(EventKind.CANCELLED, "y", 9)
        await wait_for(lambda: outcomes.terminal["cancelled"] == 1, what="counted after")
        await outcomes.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes.terminal["failed"] == 2  # the two the queue held before it overflowed
    assert outcomes.lost == 1


def test_reorg_depth_and_resigns_are_recorded(anvil: Anvil, tmp_path: Path) -> None:
    intents = transfers(2, tag="metrics-reorg")

    async def main() -> tuple[Scrape, Scrape]:
        with real_signer(tmp_path) as (_, client):
            async with exporting(anvil, client) as (router, server):
                handles = [await router.submit(i) for i in intents]  # one block each
                for h in handles:
                    await h.receipt(timeout=20)
                before = await scrape(server)
                anvil.rpc("anvil_reorg", 2, [])
                await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
                for h in handles:
                    await h.receipt(timeout=20)
                return before, await scrape(server)

    before, after = asyncio.run(main())
    name = "sentinel_router_reorg_depth_blocks"
    assert before.value(f"{name}_count") == 0
    assert after.value(f"{name}_count") == 1
    b = after.buckets(name)
    assert b[1.0] == 0 and b[2.0] == 1 and b[float("inf")] == 1
    assert after.value(f"{name}_sum") == 2
    assert after.value("sentinel_router_resigns_total", reason="reorg") == 2
    assert before.value("sentinel_router_resigns_total", reason="reorg") == 0
    assert after.value("sentinel_router_counter_total", name="reorgs") == 1


def test_signer_without_stats_is_reported_down_and_still_timed(anvil: Anvil) -> None:
    async def main() -> Scrape:
        async with exporting(anvil, dev_signer()) as (router, server):
            h = await router.submit(transfers(1, tag="nostats")[0])
            await h.receipt(timeout=20)
            return await scrape(server)

    s = asyncio.run(main())
    assert s.value("sentinel_signer_up") == 0
    assert s.get("sentinel_signer_requests_total") is None
    assert s.get("sentinel_signer_presign_pool_ready") is None
    assert s.value("sentinel_router_signer_round_trip_seconds_count", op="sign_tx") >= 1
    assert s.value("sentinel_router_signer_round_trip_seconds_count", op="stats") == 0


# --- health and readiness -----------------------------------------------------------------------


def test_readyz_follows_the_signer_going_and_coming_back(anvil: Anvil, tmp_path: Path) -> None:
    async def main() -> None:
        with real_signer(tmp_path) as (signer, client):
            async with exporting(anvil, client) as (router, server):
                body = await readyz_becomes(server, 200)  # once the first head is in
                assert body["ready"] is True and body["reasons"] == []
                signer.close()  # the signer goes away (its socket too)
                body = await readyz_becomes(server, 503)
                assert body["checks"] == {"started": True, "journal": True, "signer": False,
                                          "endpoints": True, "head": True}
                assert any("signer unreachable" in r for r in body["reasons"])  # type: ignore[attr-defined]
                down = await scrape(server)
                assert down.value("sentinel_signer_up") == 0
                assert down.get("sentinel_signer_requests_total") is None
                assert down.value("sentinel_router_ready") == 0
                with running_signer(tmp_path):  # back, at the same address
                    await readyz_becomes(server, 200)
                    await wait_for(lambda: server.signer_stats.last is not None, what="stats")
                    up = await scrape(server)
                    assert up.value("sentinel_signer_up") == 1
                    assert up.value("sentinel_router_ready") == 1

    asyncio.run(main())


def test_readyz_before_start_and_when_heads_stop(anvil: Anvil) -> None:
    async def main() -> None:
        async with exporting(anvil, dev_signer(), start=False, head_max_age=0.5) as (
                router, server):
            status, body = await readyz(server)
            assert status == 503 and body["checks"]["started"] is False  # type: ignore[index]
            assert "router not started" in body["reasons"]  # type: ignore[operator]
            status, _, text = await get(server.url + "/healthz")
            assert status == 200 and '"status": "ok"' in text
            s = await scrape(server)  # an unstarted router scrapes too
            assert s.value("sentinel_router_started") == 0
            assert s.get("sentinel_router_tip_block") is None
            await router.start()
            await readyz_becomes(server, 200)
            # anvil mines only on demand: no head for more than head_max_age
            body = await readyz_becomes(server, 503)
            assert body["checks"]["head"] is False  # type: ignore[index]
            assert any("no head for" in r for r in body["reasons"])  # type: ignore[attr-defined]
            anvil.rpc("evm_mine")
            await readyz_becomes(server, 200)

    asyncio.run(main())


def test_healthz_unknown_paths_and_methods(anvil: Anvil) -> None:
    async def main() -> None:
        async with exporting(anvil, dev_signer()) as (_, server):
            await asyncio.sleep(0.3)  # a heartbeat or so
            status, ctype, text = await get(server.url + "/healthz")
            assert status == 200 and ctype.startswith("application/json")
            assert '"loop_lag_seconds": ' in text and '"status": "ok"' in text
            assert (await get(server.url + "/nope"))[0] == 404
            assert (await get(server.url + "/metrics/x"))[0] == 404
            assert (await get(server.url + "/metrics", "POST"))[0] == 405
            s = await scrape(server)
            assert s.value("sentinel_router_loop_lag_seconds") >= 0
            assert s.value("process_resident_memory_bytes") > 0

    asyncio.run(main())


# --- addresses ----------------------------------------------------------------------------------


def test_non_loopback_bind_is_refused_without_the_flag(anvil: Anvil) -> None:
    router = Router(config_for(anvil), dev_signer())
    try:
        for addr in ("0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464"):
            with pytest.raises(ConfigError, match="metrics_allow_remote"):
                MetricsServer(router, addr)
        # allowed explicitly (not started: the tests stay on loopback)
        assert not MetricsServer(router, "0.0.0.0:9464", allow_remote=True).address.loopback
        assert MetricsServer(router, "[::1]:0").address.host == "::1"
        assert MetricsServer(router, "localhost:0").address.host == "127.0.0.1"
    finally:
        asyncio.run(router.close())


def test_a_port_in_use_is_a_clear_error(anvil: Anvil) -> None:
    async def main() -> None:
        async with exporting(anvil, dev_signer(), start=False) as (router, first):
            second = MetricsServer(router, f"127.0.0.1:{first.port}")
            with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
                await second.start()

    asyncio.run(main())


# --- the latency histogram itself ---------------------------------------------------------------


def test_latency_histogram_buckets_are_le_bounds() -> None:
    h = LatencyHistogram((10, 20, 50))
    for ns in (1, 10, 11, 20, 50, 51, 10**9):
        h.observe_ns(ns)
    snap = h.snapshot()
    assert snap.cumulative == (2, 4, 5, 7)  # <=10: 1,10; <=20: +11,20; <=50: +50; +Inf: +51,1e9
    assert snap.count == 7 and snap.sum_ns == 1 + 10 + 11 + 20 + 50 + 51 + 10**9
    for bad in ((), (10, 10), (20, 10), (0, 10)):
        with pytest.raises(ValueError, match="bounds"):
            LatencyHistogram(bad)


def test_stats_of_a_signer_without_stats_is_a_clear_error() -> None:
    from router.errors import MalformedInput
    from router.signer_thread import AsyncSigner

    async def main() -> None:
        signer = AsyncSigner(dev_signer())
        try:
            assert not signer.has_stats
            with pytest.raises(MalformedInput, match="has no STATS operation"):
                await signer.stats()
            assert signer.calls == 0 and signer.up is None
        finally:
            signer.close()

    asyncio.run(main())
