"""Prometheus metrics for the router and its signer: an exporter on loopback (/metrics, /healthz,
/readyz), read from the router's state at scrape time so the hot paths pay (almost) nothing.

Modules, one concept each: `latency` (the signer thread's round-trip histogram; no dependency),
`address` (the exporter's bind address and the loopback rule), `outcomes` (intents by terminal
state, from the event bus), `signer_stats` (the enclave's STATS, polled through the signer
thread), `readiness` (the /readyz rule), `collector` (router state -> metric families at scrape
time), `server` (the HTTP exporter). Only `server`, `collector` and `outcomes` need
`prometheus_client` (the `router` extra); importing this package does not.
"""
