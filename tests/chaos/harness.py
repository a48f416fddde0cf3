"""One seeded chaos run: stream intents through the router while its parts are killed, heal,
wait until quiet, then judge the outcome from the chain.

Threads: the driver submits intents through the router's API (a submit that fails is retried with
the same id once the router answers again: the idempotency key); the chaos thread injects the
planned faults at their times (SIGKILL and restart of the router, the signer, anvil; `anvil_reorg`
of depth 1..5). One lock serialises every start/kill so a restart never races a kill.

The seed fixes the intents, the driver's pacing and the fault plan (kinds, times, depths, down
times); the processes' interleaving is the machine's, so a replay reproduces the plan, not every
scheduling detail.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anvil_support import DEV_ADDR_0, DEV_KEY_0, free_port

from router.api import E_BAD_LENGTH, E_MALFORMED, E_NOT_FOUND, E_TIMEOUT, ApiClient, ApiError
from router.errors import RouterError
from router.intent import Intent

from .check import PENDING, TERMINAL_NOT_LANDED, UNKNOWN, Seen, judge, scan_chain
from .procs import AnvilNode, HarnessError, ProcessFailed, RouterProcess, SignerProcess

SENDER = DEV_ADDR_0
KINDS = ("router", "signer", "anvil", "reorg")
_VALUE_BASE = 10**12  # wei; intent i sends _VALUE_BASE + i to its own address


@dataclass(frozen=True)
class ChaosConfig:
    """What one run does. The defaults are the long form (`nox -s chaos`); `bounded()` is the
    form `nox -s tests` runs."""

    seed: int
    intents: int = 200
    router_kills: int = 4
    signer_kills: int = 3
    anvil_kills: int = 2
    reorgs: int = 6
    max_reorg_depth: int = 5
    #: planned length of the stream; the driver's pacing and the fault times are drawn from it
    stream_seconds: float = 45.0
    #: anvil's interval mining: pooled transactions exist between blocks, as on a real chain
    block_time: int = 1
    max_down_seconds: float = 1.5
    quiesce_timeout: float = 90.0
    #: quiet for this long (no pending STATUS, empty pool) counts as quiescent
    quiet_seconds: float = 4.0

    @classmethod
    def bounded(cls, seed: int) -> ChaosConfig:
        return cls(seed=seed, intents=60, router_kills=2, signer_kills=1, anvil_kills=1,
                   reorgs=3, stream_seconds=15.0, quiesce_timeout=45.0)

    def __post_init__(self) -> None:
        if self.intents < 1 or self.stream_seconds <= 0 or not 1 <= self.max_reorg_depth:
            raise ValueError("intents and stream_seconds must be positive, reorg depth >= 1")
        if min(self.router_kills, self.signer_kills, self.anvil_kills, self.reorgs) < 0:
            raise ValueError("fault counts must be >= 0")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the stream starts
    kind: str  # one of KINDS
    depth: int = 0  # reorg depth
    down: float = 0.0  # seconds a killed process stays down


def plan_faults(cfg: ChaosConfig) -> list[Fault]:
    """Faults at stratified random times over the stream (one per slot, so they spread out)."""
    rng = random.Random(f"{cfg.seed}-faults")
    kinds = (["router"] * cfg.router_kills + ["signer"] * cfg.signer_kills
             + ["anvil"] * cfg.anvil_kills + ["reorg"] * cfg.reorgs)
    rng.shuffle(kinds)
    slot = cfg.stream_seconds / max(len(kinds), 1)
    return [
        Fault(at=slot * (k + rng.uniform(0.1, 0.9)), kind=kind,
              depth=rng.randint(1, cfg.max_reorg_depth) if kind == "reorg" else 0,
              down=0.0 if kind == "reorg" else rng.uniform(0.0, cfg.max_down_seconds))
        for k, kind in enumerate(kinds)
    ]


def intents_for(seed: int, n: int) -> list[Intent]:
    """n intents, each with its own destination and value so the chain tells them apart."""
    return [Intent(to=bytes.fromhex("c4a05eed") + i.to_bytes(16, "big"), value=_VALUE_BASE + i,
                   id=f"chaos-{seed}-{i:04d}") for i in range(n)]


@dataclass
class RunResult:
    """Counts of one run (see check.Verdict for what each means)."""

    seed: int
    intents: int
    accepted: int = 0
    landed: int = 0
    failed: int = 0  # terminal non-landed (failed/replaced/cancelled), not on chain
    duplicates: int = 0
    lost: int = 0
    stalled: int = 0
    unknown_status: int = 0
    mismatched: int = 0
    unexplained: int = 0
    fillers: int = 0
    foreign: int = 0
    nonce_gap: bool = False
    states: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    faults_planned: int = 0
    submit_retries: int = 0
    resubmitted: int = 0  # intents whose SUBMIT was retried (same id) after a failure
    resubmitted_forgotten: int = 0  # accepted intents submitted again: STATUS did not know them
    unexpected_exits: int = 0  # processes that died without being killed
    quiesced: bool = False
    quiesce_seconds: float = 0.0  # from the end of the stream until quiet (or the timeout)
    wall_seconds: float = 0.0
    workdir: str = ""
    examples: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.duplicates == self.lost == self.stalled == 0
                and self.unknown_status == self.mismatched == self.unexplained == 0
                and not self.nonce_gap)

    def line(self) -> str:
        faults = ",".join(f"{k}:{self.faults.get(k, 0)}" for k in KINDS)
        return (f"seed={self.seed} intents={self.intents} accepted={self.accepted} "
                f"landed={self.landed} failed={self.failed} duplicates={self.duplicates} "
                f"lost={self.lost} stalled={self.stalled} unknown={self.unknown_status} "
                f"mismatched={self.mismatched} fillers={self.fillers} faults={faults} "
                f"retries={self.submit_retries} resubmitted={self.resubmitted_forgotten} "
                f"quiet={'yes' if self.quiesced else 'no'}@{self.quiesce_seconds:.0f}s "
                f"wall={self.wall_seconds:.1f}s {'OK' if self.ok else 'FAIL'}"
                + (f" error={self.error}" if self.error else ""))


def config_text(anvil: AnvilNode, signer: SignerProcess, api_path: Path,
                journal: Path) -> str:
    lines = [
        "chain_id = 31337",
        f'signer = "{signer.address}"',
        f'listen = "unix:{api_path}"',
        f'sender = "{SENDER}"',
        f'rpc = ["{anvil.rpc_url}"]',
        f'ws = "{anvil.ws_url}"',
        "signer_timeout = 2.0",
    ]
    lines.append(f'journal = "{journal}"')
    lines += ["", "[router]", "rebroadcast_after_seconds = 1.0", ""]
    return "\n".join(lines)


class _Run:
    def __init__(self, cfg: ChaosConfig, workdir: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.say = say
        self.intents = intents_for(cfg.seed, cfg.intents)
        self.result = RunResult(seed=cfg.seed, intents=cfg.intents, workdir=str(workdir))
        self.anvil = AnvilNode(workdir, free_port(), block_time=cfg.block_time)
        self.signer = SignerProcess(workdir, DEV_KEY_0.hex())
        self.api_path = workdir / "router.sock"
        self.config_file = workdir / "router.toml"
        self.router = RouterProcess(workdir, self.config_file, self.api_path)
        self.lock = threading.Lock()  # every start/kill of a process
        self.stream_done = threading.Event()
        self.accepted: set[str] = set()
        self.faults: Counter[str] = Counter()
        self.errors: list[str] = []

    # --- processes ---------------------------------------------------------------------------

    def _start_router(self, deadline: float) -> None:
        """Start the router, retrying while it exits at start (e.g. the node is still coming
        back); the harness gives up only at `deadline`."""
        while True:
            try:
                self.router.start()
                return
            except ProcessFailed as e:
                if time.monotonic() > deadline:
                    raise HarnessError(f"router does not start: {e}") from e
                self.router.kill()
                time.sleep(0.5)

    def _first_dump(self, timeout: float = 10.0) -> None:
        """Wait for anvil's first state dump: killed before it, anvil would come back with a
        fresh chain, another fault than the "reverted node" this suite injects."""
        deadline = time.monotonic() + timeout
        while not self.anvil.save_state():
            if time.monotonic() > deadline:
                raise HarnessError(f"anvil wrote no state dump within {timeout} s")
            time.sleep(0.1)

    def heal(self) -> None:
        """Everything up; a process that died without our SIGKILL is counted."""
        with self.lock:
            for proc in (self.anvil, self.signer):
                if not proc.alive():
                    if proc.proc is not None:
                        self.result.unexpected_exits += 1
                        self.say(f"{proc.name} exited on its own:\n{proc.log_tail()}")
                    proc.start()
            if not self.router.alive():
                if self.router.proc is not None:
                    self.result.unexpected_exits += 1
                    self.say(f"router exited on its own:\n{self.router.log_tail()}")
                self._start_router(time.monotonic() + 60)

    def inject(self, fault: Fault) -> None:
        if fault.kind == "reorg":
            try:
                tip = int(str(self.anvil.rpc("eth_blockNumber")), 16)
                if tip <= fault.depth:
                    self.faults["reorg_skipped"] += 1
                    return
                self.anvil.rpc("anvil_reorg", fault.depth, [])
                self.faults["reorg"] += 1
                self.faults[f"reorg_depth_{fault.depth}"] += 1
            except (OSError, HarnessError) as e:
                # a harness limitation, not a finding: counted and shown, the run goes on
                self.faults["reorg_failed"] += 1
                self.say(f"anvil_reorg {fault.depth} failed: {e}")
            return
        proc = {"router": self.router, "signer": self.signer, "anvil": self.anvil}[fault.kind]
        with self.lock:
            self.anvil.save_state()
            proc.kill()
            self.faults[fault.kind] += 1
            time.sleep(fault.down)
            if proc is self.router:
                self._start_router(time.monotonic() + 60)
            else:
                proc.start()

    # --- threads -----------------------------------------------------------------------------

    def drive(self) -> None:
        rng = random.Random(f"{self.cfg.seed}-driver")
        mean = self.cfg.stream_seconds / self.cfg.intents
        stop_at = time.monotonic() + 3 * self.cfg.stream_seconds + 180
        client: ApiClient | None = None
        try:
            for intent in self.intents:
                time.sleep(rng.uniform(0, 2 * mean))
                retried = False
                while time.monotonic() < stop_at:
                    try:
                        if client is None:
                            client = ApiClient(str(self.api_path), timeout=15.0)
                        client.submit(intent)
                        self.accepted.add(intent.id)
                        if retried:
                            self._resubmit_forgotten(client)
                        break
                    except ApiError as e:
                        if e.code in (E_MALFORMED, E_BAD_LENGTH):
                            self.errors.append(f"{intent.id} refused as malformed: {e}")
                            break
                    except RouterError:  # the router is down or the link broke
                        if client is not None:
                            client.close()
                            client = None
                    self.result.submit_retries += 1
                    retried = True
                    if not self.router.alive() and self.lock.acquire(blocking=False):
                        # died on its own (not a planned kill: that holds the lock)
                        try:
                            if not self.router.alive():
                                self.result.unexpected_exits += 1
                                self._start_router(time.monotonic() + 60)
                        finally:
                            self.lock.release()
                    time.sleep(0.2)
                self.result.resubmitted += retried
        except HarnessError as e:
            self.errors.append(f"driver: {e}")
        finally:
            if client is not None:
                client.close()
            self.stream_done.set()

    def _resubmit_forgotten(self, client: ApiClient) -> None:
        """After an outage, what a careful bot does: every accepted intent the router says it
        does not know is submitted again under the same id (safe only with idempotency that
        survives restarts; without it, a second transaction for the intent)."""
        for intent in self.intents:
            if intent.id not in self.accepted:
                continue
            try:
                client.status(intent.id)
            except ApiError as e:
                if e.code != E_NOT_FOUND:
                    continue
                try:
                    client.submit(intent)
                    self.result.resubmitted_forgotten += 1
                except RouterError:
                    return
            except RouterError:
                return  # the link broke: the driver's next submit reconnects

    def chaos(self, plan: list[Fault], start: float) -> None:
        try:
            for fault in plan:
                if self.stream_done.wait(max(0.0, start + fault.at - time.monotonic())):
                    return  # the stream is over: faults after it are not "mid-stream"
                self.inject(fault)
        except HarnessError as e:
            self.errors.append(f"chaos: {e}")

    # --- after the stream --------------------------------------------------------------------

    def statuses(self, *, reasons: bool = True) -> dict[str, Seen]:
        seen: dict[str, Seen] = {}
        with ApiClient(str(self.api_path), timeout=15.0) as client:
            for intent in self.intents:
                try:
                    st = client.status(intent.id)
                except ApiError as e:
                    seen[intent.id] = Seen(UNKNOWN if e.code == E_NOT_FOUND
                                           else f"error {e.code}: {e}")
                    continue
                except RouterError as e:
                    seen[intent.id] = Seen(f"error: {e}")
                    continue
                reason = None
                if st.state == "failed" and reasons:
                    reason = self._failure_reason(client, intent.id)
                elif st.state in TERMINAL_NOT_LANDED:
                    reason = st.state
                seen[intent.id] = Seen(st.state, st.tx_hash, reason)
        return seen

    @staticmethod
    def _failure_reason(client: ApiClient, intent_id: str) -> str | None:
        """The router's reason for a failed intent: WAIT answers it as an error message."""
        try:
            client.wait(intent_id, 1, timeout=0.5)
        except ApiError as e:
            return None if e.code in (E_TIMEOUT, E_NOT_FOUND) else str(e) or None
        except RouterError:
            return None
        return None

    def quiesce(self) -> bool:
        """Heal, then wait (bounded) until no known intent is pending and the sender has nothing
        in the node's pool, for `quiet_seconds` in a row."""
        deadline = time.monotonic() + self.cfg.quiesce_timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            try:
                self.heal()
                pool = self.anvil.rpc("txpool_status")
                assert isinstance(pool, dict)
                pooled = int(str(pool["pending"]), 16) + int(str(pool["queued"]), 16)
                seen = self.statuses(reasons=False)
                busy = pooled > 0 or any(
                    s.state == PENDING for i, s in seen.items() if i in self.accepted)
            except (OSError, RouterError, HarnessError) as e:
                busy = True
                self.say(f"quiesce: {e}")
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= self.cfg.quiet_seconds:
                return True
            time.sleep(0.5)
        return False

    def judge(self) -> None:
        r = self.result
        scan = scan_chain(self.anvil.rpc, SENDER, self.intents)
        v = judge(self.intents, scan, self.statuses())
        r.landed, r.failed, r.duplicates, r.lost = v.landed, v.not_landed, v.duplicates, v.lost
        r.stalled, r.unknown_status, r.mismatched = v.stalled, v.unknown_status, v.mismatched
        r.unexplained, r.fillers, r.foreign, r.nonce_gap = (v.unexplained, v.fillers, v.foreign,
                                                            v.nonce_gap)
        r.states = dict(v.states)
        r.examples = v.examples

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        r = self.result
        t0 = time.monotonic()
        self.config_file.write_text(config_text(
            self.anvil, self.signer, self.api_path,
            self.workdir / "journal.sqlite"))
        plan = plan_faults(self.cfg)
        r.faults_planned = len(plan)
        try:
            self.anvil.start()
            self._first_dump()
            self.signer.start()
            self._start_router(time.monotonic() + 60)
            start = time.monotonic()
            driver = threading.Thread(target=self.drive, name="chaos-driver", daemon=True)
            chaos = threading.Thread(target=self.chaos, args=(plan, start), name="chaos-faults",
                                     daemon=True)
            driver.start()
            chaos.start()
            driver.join()
            chaos.join()
            r.accepted = len(self.accepted)
            t_quiet = time.monotonic()
            r.quiesced = self.quiesce()
            r.quiesce_seconds = time.monotonic() - t_quiet
            self.judge()
        except (HarnessError, OSError, RouterError, ValueError) as e:
            r.error = f"{type(e).__name__}: {e}"
        finally:
            for proc in (self.router, self.signer, self.anvil):
                proc.stop()
            if self.anvil.state_restores:
                self.faults["anvil_state_restored"] = self.anvil.state_restores
            r.faults = dict(self.faults)
            r.wall_seconds = time.monotonic() - t0
        if self.errors and r.error is None:
            r.error = "; ".join(self.errors[:3])
        return r


def run_chaos(cfg: ChaosConfig, workdir: Path | None = None, *,
              say: Callable[[str], None] = print, keep: bool = False) -> RunResult:
    """One chaos run. Without `workdir` a short one is made under /tmp (Unix socket paths are
    limited to 107 bytes); it is removed after a run that passed unless `keep`.

    Raises:
        ValueError: an impossible configuration.
    """
    made = workdir is None
    wd = Path(tempfile.mkdtemp(prefix=f"chaos-{cfg.seed}-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    form = (" --bounded" if cfg == ChaosConfig.bounded(cfg.seed)
            else "" if cfg == ChaosConfig(seed=cfg.seed) else f" --intents {cfg.intents}")
    say(f"chaos run seed={cfg.seed} intents={cfg.intents} workdir={wd} "
        f"(replay: nox -s chaos -- --runs 1 --seed {cfg.seed}{form})")
    result = _Run(cfg, wd, say).run()
    if made and result.ok and not keep:
        shutil.rmtree(wd, ignore_errors=True)
    return result
