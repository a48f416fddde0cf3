"""Router and signer state as Prometheus metric families, read at scrape time.

Nothing here runs on the router's hot paths: counters the router keeps anyway (`Router.counters`,
the broadcaster's per-endpoint outcomes, reorg depths, the signer thread's round-trip histogram)
are turned into metric families when Prometheus scrapes. Names and meanings: router/README.md,
"Metrics".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from enclave.wire import Stats

from .latency import HistogramSnapshot
from .outcomes import IntentOutcomes
from .readiness import check_readiness
from .signer_stats import SignerStatsPoller

if TYPE_CHECKING:
    from ..core import Router

__all__ = ["REORG_DEPTH_BUCKETS", "RouterCollector"]

#: Reorg depth buckets (blocks removed); deeper than the header ring is `deep_reorgs`.
REORG_DEPTH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)

#: Router counters that are re-signatures, by reason (the label of sentinel_router_resigns_total).
_RESIGN_REASONS = {"reorg": "resigned", "fee_bump": "bumped", "nonce_move": "nonce_moved",
                   "cancel": "cancel_requested"}

#: The signer's STATS fields that are levels, not running totals.
_SIGNER_GAUGES = {
    "connections_open": ("sentinel_signer_connections_open", "Connections open to the signer now."),
    "presign_ready": ("sentinel_signer_presign_pool_ready",
                      "Presignatures ready in the signer's pool now (0 when presigning is off)."),
}
_SIGNER_DOCS = {
    "requests": "Requests the signer served.",
    "errors": "Requests the signer answered with an error.",
    "denials": "Requests the signer's policy refused.",
    "signed_digests": "Digests signed (SIGN_DIGEST).",
    "signed_txs": "Transactions signed (SIGN_TX and batches).",
    "attestations": "Attestation documents made.",
    "connections_total": "Connections accepted since the signer started.",
    "presigned": "Signatures made from a presignature.",
    "presign_fallbacks": "RFC 6979 signatures while presigning is on (pool empty, edge cases).",
}


def _histogram(name: str, doc: str, label: str,
               snaps: Iterable[tuple[str, HistogramSnapshot]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for value, snap in snaps:
        buckets = [(repr(b / 1e9), float(c))
                   for b, c in zip(snap.bounds_ns, snap.cumulative, strict=False)]
        buckets.append(("+Inf", float(snap.count)))
        fam.add_metric([value], buckets, snap.sum_ns / 1e9)
    return fam


class RouterCollector(Collector):
    """A `prometheus_client` collector over one router, its intent outcomes and signer stats."""

    def __init__(self, router: Router, outcomes: IntentOutcomes, signer_stats: SignerStatsPoller,
                 *, head_max_age: float, loop_lag: Callable[[], float | None] = lambda: None
                 ) -> None:
        self.router = router
        self.outcomes = outcomes
        self.signer_stats = signer_stats
        self.head_max_age = head_max_age
        self.loop_lag = loop_lag

    def collect(self) -> Iterable[Metric]:
        yield from self._router()
        yield from self._chain()
        yield from self._intents()
        yield from self._broadcasts()
        yield from self._signer_side()
        yield from self._signer()

    def _router(self) -> Iterable[Metric]:
        r = self.router
        info = GaugeMetricFamily("sentinel_router_info", "The router's sender and chain (value 1).",
                                 labels=["sender", "chain_id"])
        info.add_metric([r.config.sender, str(r.config.chain_id)], 1)
        yield info
        yield GaugeMetricFamily("sentinel_router_started", "1 once Router.start() finished.",
                                value=float(r.started))
        ready = check_readiness(r, head_max_age=self.head_max_age)
        yield GaugeMetricFamily("sentinel_router_ready", "1 when /readyz answers 200.",
                                value=float(ready.ready))
        lag = self.loop_lag()
        if lag is not None:
            yield GaugeMetricFamily("sentinel_router_loop_lag_seconds",
                                    "How late the event loop ran the exporter's last heartbeat.",
                                    value=lag)
        yield GaugeMetricFamily("sentinel_router_journal_lease_remaining_seconds",
                                "Seconds left on this router's journal lease.",
                                value=min(r.journal.lease_remaining(), 1e9))
        yield GaugeMetricFamily("sentinel_router_journal_fenced",
                                "1 when the lease was lost to another router (no signing).",
                                value=float(r.fenced))
        counters = CounterMetricFamily(
            "sentinel_router_counter", "Every router event counter (Router.stats() keys), by name.",
            labels=["name"])
        for name, v in sorted(r.counters.items()):
            counters.add_metric([name], v)
        yield counters

    def _chain(self) -> Iterable[Metric]:
        r = self.router
        tip = r.view.tip
        if tip is not None:
            yield GaugeMetricFamily("sentinel_router_tip_block", "The canonical tip's number.",
                                    value=tip.number)
            yield GaugeMetricFamily("sentinel_router_head_age_seconds",
                                    "Seconds since the tip's timestamp (wall clock).",
                                    value=time.time() - tip.timestamp)
        if r.last_head_ns is not None:
            yield GaugeMetricFamily("sentinel_router_head_received_age_seconds",
                                    "Seconds since the last head was received.",
                                    value=(time.perf_counter_ns() - r.last_head_ns) / 1e9)
        depths = dict(r.reorg_depths)
        fam = HistogramMetricFamily("sentinel_router_reorg_depth_blocks",
                                    "Reorgs by depth (blocks removed from the canonical chain).")
        buckets = [(str(b), float(sum(n for d, n in depths.items() if d <= b)))
                   for b in REORG_DEPTH_BUCKETS]
        buckets.append(("+Inf", float(sum(depths.values()))))
        fam.add_metric([], buckets, float(sum(d * n for d, n in depths.items())))
        yield fam
        yield CounterMetricFamily("sentinel_router_deep_reorgs",
                                  "Reorgs deeper than the header ring (reconciled from receipts).",
                                  value=r.counters["deep_reorgs"])
        resigns = CounterMetricFamily("sentinel_router_resigns", "Re-signatures, by reason.",
                                      labels=["reason"])
        for reason, key in _RESIGN_REASONS.items():
            resigns.add_metric([reason], r.counters[key])
        yield resigns
        yield CounterMetricFamily("sentinel_router_presigned",
                                  "Reorg replacements signed ahead of time (standbys).",
                                  value=r.counters["presigned"])

    def _intents(self) -> Iterable[Metric]:
        r, o = self.router, self.outcomes
        yield GaugeMetricFamily("sentinel_router_pending_intents",
                                "Intents signed and not yet landed or settled.",
                                value=len(r.nonces.pending()))
        yield GaugeMetricFamily("sentinel_router_next_nonce", "The nonce the next intent gets.",
                                value=r.nonces.next_nonce)
        term = CounterMetricFamily("sentinel_router_intents",
                                   "Intents by terminal state, each intent once per state.",
                                   labels=["state"])
        for state, n in sorted(o.terminal.items()):
            term.add_metric([state], n)
        yield term
        events = CounterMetricFamily("sentinel_router_intent_events",
                                     "Intent events published on the router's bus, by kind.",
                                     labels=["kind"])
        for kind, n in sorted(o.events.items()):
            events.add_metric([kind], n)
        yield events
        yield CounterMetricFamily("sentinel_router_intent_events_lost",
                                  "Times the exporter fell behind the event bus.", value=o.lost)

    def _broadcasts(self) -> Iterable[Metric]:
        r = self.router
        fam = CounterMetricFamily("sentinel_router_broadcasts",
                                  "Broadcast outcomes by endpoint (scheme://host:port only).",
                                  labels=["endpoint", "outcome"])
        for key, n in sorted(r.broadcaster.counters.items()):
            endpoint, sep, outcome = key.rpartition(" ")
            if sep:  # "label outcome"; the bare keys are totals over endpoints
                fam.add_metric([endpoint, outcome], n)
        yield fam
        yield CounterMetricFamily("sentinel_router_broadcasts_all_refused",
                                  "Transactions every endpoint refused.",
                                  value=r.broadcaster.counters["all_refused"])
        up = GaugeMetricFamily("sentinel_router_endpoint_up",
                               "1 when the RPC endpoint answered its last check.",
                               labels=["endpoint"])
        for rpc in r.rpcs:
            up.add_metric([rpc.label], float(rpc.label not in r.endpoint_errors))
        yield up

    def _signer_side(self) -> Iterable[Metric]:
        s = self.router.signer
        yield GaugeMetricFamily("sentinel_router_signer_available",
                                "1 while the signer breaker is closed.", value=float(s.available))
        yield CounterMetricFamily("sentinel_router_signer_calls", "Signing calls made.",
                                  value=s.calls)
        yield CounterMetricFamily("sentinel_router_signer_failed_fast",
                                  "Signing calls refused at once by the open breaker.",
                                  value=s.failed_fast)
        yield _histogram("sentinel_router_signer_round_trip_seconds",
                         "Signer round trips on the signer thread, by operation (10 µs .. 100 ms "
                         "buckets).", "op",
                         ((op, h.snapshot()) for op, h in sorted(s.round_trips.items())))

    def _signer(self) -> Iterable[Metric]:
        poller = self.signer_stats
        stats = poller.last
        yield GaugeMetricFamily("sentinel_signer_up",
                                "1 when the signer answered the last STATS poll (0: down or no "
                                "STATS; its counters are then absent).",
                                value=float(stats is not None))
        if stats is None:
            return
        if poller.last_at is not None:
            yield GaugeMetricFamily("sentinel_signer_stats_age_seconds",
                                    "Seconds since the signer's counters were read.",
                                    value=time.monotonic() - poller.last_at)
        yield from _signer_families(stats)


def _signer_families(stats: Stats) -> Iterable[Metric]:
    for f in fields(stats):
        value = getattr(stats, f.name)
        if f.name in _SIGNER_GAUGES:
            name, doc = _SIGNER_GAUGES[f.name]
            yield GaugeMetricFamily(name, doc, value=value)
        else:
            yield CounterMetricFamily(f"sentinel_signer_{f.name}",
                                      _SIGNER_DOCS.get(f.name, f"The signer's {f.name} counter."),
                                      value=value)
