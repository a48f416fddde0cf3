"""The metrics exporter: `/metrics` (Prometheus text format), `/healthz` and `/readyz` over HTTP on
loopback, served from the router's own event loop.

Serving from the router's loop is deliberate: an answer from /healthz proves the loop is
responsive (a wedged loop answers nothing, which a probe reads as unhealthy), and a scrape reads
the router's state without locks. A scrape costs the loop the time to format a few hundred
samples; nothing is computed between scrapes except the signer's STATS poll (every
`stats_interval` s, on the signer thread) and a 4 Hz heartbeat measuring loop lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from ..errors import ConfigError
from ..listen import ListenAddress, parse_listen
from .collector import RouterCollector
from .outcomes import IntentOutcomes
from .readiness import check_readiness
from .signer_stats import SignerStatsPoller

if TYPE_CHECKING:
    from ..core import Router

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)

_BEAT = 0.25
#: /healthz fails when the heartbeat has not run for this long (the task died, or the loop was
#: wedged and has only just come back).
_BEAT_STALE = 5.0


class MetricsServer:
    """`await start()` after building the router (before or after `router.start()`: readiness
    says when it is started); `await close()` before closing the router.

    Raises (constructor):
        ConfigError: the address is not loopback and `allow_remote` is False, or is malformed.
        ValueError: a non-positive `stats_interval` or `head_max_age`.
    """

    def __init__(self, router: Router, address: ListenAddress | str, *,
                 allow_remote: bool = False, stats_interval: float = 2.0,
                 head_max_age: float = 60.0) -> None:
        if isinstance(address, str):
            address = parse_listen(address, service="metrics", allow_remote=allow_remote,
                                   example="127.0.0.1:9464")
        elif not address.loopback and not allow_remote:
            raise ConfigError(f"metrics: {address} is not a loopback address; metrics stays on "
                              "this host unless metrics_allow_remote = true")
        if not head_max_age > 0:
            raise ValueError(f"head_max_age must be positive, got {head_max_age}")
        self.router = router
        self.address = address
        self.head_max_age = head_max_age
        self.outcomes = IntentOutcomes(router.bus)
        self.signer_stats = SignerStatsPoller(router.signer, interval=stats_interval)
        self._lag: float | None = None
        self._beat_at: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RouterCollector(router, self.outcomes, self.signer_stats,
                                               head_max_age=head_max_age,
                                               loop_lag=lambda: self._lag))
        self.registry.register(ProcessCollector(registry=None))
        self._beat: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen, subscribe to the event bus, start polling the signer's STATS.

        Raises:
            ConfigError: the address cannot be bound (in use, not on this host).
        """
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.address.host, self.address.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError(f"metrics: cannot listen on {self.address}: "
                              f"{e.strerror or e}") from e
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the bound port (0 asks for any free one)
        await self.outcomes.start()
        self.signer_stats.start()
        self._beat = asyncio.create_task(self._heartbeat(), name="metrics-heartbeat")
        log.info("metrics on %s", self.url, extra={"url": self.url})

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        await self.signer_stats.close()
        await self.outcomes.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(_BEAT)
            self._beat_at = loop.time()
            self._lag = max(0.0, self._beat_at - before - _BEAT)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        stale = self._beat_at is not None and now - self._beat_at > _BEAT_STALE
        body = {"status": "stale" if stale else "ok", "loop_lag_seconds": self._lag}
        return _json(body, 503 if stale else 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = check_readiness(self.router, head_max_age=self.head_max_age)
        return _json(ready.to_json(), 200 if ready.ready else 503)


def _json(body: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")
