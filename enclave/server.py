"""The signer server: one thread per connection, pinned to a CPU, busy-polling its socket.

Hot path, per frame: one non-blocking `recv_into` into a preallocated buffer (usually the whole frame),
`struct.unpack_from` of the header on a memoryview, a table dispatch on the opcode, the operation, one
`sendall`. A bounded spin of non-blocking reads (`spin_us`) keeps the thread on its CPU between
requests that come close together, then it falls back to a blocking read so an idle connection costs
nothing. Nothing on that path logs; connection open/close and internal errors do (without payloads).

Deadlines (looked at only once a read or send would block, so the hot path pays nothing for them):
a frame must arrive whole, and its answer be taken, within `frame_timeout` of the first blocked
read of it (one deadline per frame, however slowly its bytes trickle in); a connection silent for
`idle_timeout` is closed. When all connection slots are taken, a new connection is still served: the
one waiting in a read the longest is closed for it, preferring a peer holding the most connections,
then one stuck mid-frame. Only when every connection is busy in a request is a new one refused.
Any process on the parent can open VSOCK connections, so none may hold the signer from the others.

Every frame gets exactly one answer: the response, or an ERROR frame with a code from
`enclave.errors.ErrorCode`. Malformed frames, policy denials and operation failures never close the
connection; only EOF or a socket error does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from enclave import wire
from enclave.errors import (
    AttestationUnavailable,
    EnclaveError,
    ErrorCode,
    PolicyDenied,
    ProtocolError,
)
from enclave.keys import SigningKey
from enclave.policy import Policy, RateLimiter
from enclave.presign import NonceSource, PresignPool
from enclave.transport import (
    Address,
    accept,
    listen,
    listening_address,
    parse_address,
    peer_of,
    unlink_if_own,
)
from enclave.tx import sign_tx_answer
from enclave.wire import HEADER, HEADER_SIZE, MAGIC, MAX_PAYLOAD, RESPONSE_BIT, VERSION, Op, Stats

_decode_sign_tx = wire.decode_sign_tx

if TYPE_CHECKING:  # the NSM package is only needed by whoever builds the Nsm object
    from enclave.nsm import Nsm

__all__ = ["DEFAULT_FRAME_TIMEOUT", "DEFAULT_IDLE_TIMEOUT", "DEFAULT_SPIN_US", "SignerServer"]

logger = logging.getLogger(__name__)

#: Default busy-poll window before a blocking read, in microseconds.
DEFAULT_SPIN_US = 200
#: Receive buffer: the largest frame plus room for the start of a pipelined next frame.
_BUFFER_SIZE = 2 * (HEADER_SIZE + MAX_PAYLOAD)
_MAX_CONNECTIONS = 64
#: Seconds a started frame may take to arrive whole (and its answer to be taken by the peer).
DEFAULT_FRAME_TIMEOUT = 2.0
#: Seconds of silence after which a connection is closed. Generous: a client reconnects on its
#: next call (router/signer_client.py re-opens broken connections), and full tables evict anyway.
DEFAULT_IDLE_TIMEOUT = 300.0

# Per-connection state (list indices), written by its thread only around blocking waits and read by
# the accept thread to choose whom to evict: monotonic ns the wait began (0: not waiting), whether
# the wait is mid-frame (a partial frame or an answer not taken), evicted flag, peer identity.
_WAITING, _PARTIAL, _EVICTED, _PEER = range(4)

# Per-connection counters (list indices), summed into `Stats` on demand: no lock on the hot path.
_REQUESTS, _ERRORS, _DENIALS, _DIGESTS, _TXS, _ATTESTS = range(6)

_Handler = Callable[[memoryview, list[int]], bytes]


class _Closed(Exception):
    """The peer closed the connection or the socket failed: leave the connection loop."""


class SignerServer:
    """Serve the Sentinel protocol for one key under one policy.

    Args:
        key: the signing key (held in memory; never sent anywhere but as signatures).
        policy: the baked-in policy; checked against `key` here (production refuses dev keys).
        nsm: the Nitro Secure Module for ATTEST, or None (ATTEST then answers UNAVAILABLE).
            Its documents always carry `key`'s public key in `public_key`.
        cpu: CPU to pin connection threads to (os.sched_setaffinity), or None.
        spin_us: busy-poll window before blocking reads; 0 disables busy-polling.
        frame_timeout: seconds a frame may take from its first blocked read to its last byte, and
            its answer to be sent.
        idle_timeout: seconds a connection may stay silent between frames.
        idle: called by the presignature refill thread about once a second while the pool is
            full (`python -m enclave serve` collects garbage there); unused without a pool.

    With `policy.presign_pool` > 0 the server attaches a presignature pool to `key` (its nonces mix
    in the NSM's GetRandom when `nsm` is given), fills it before serving and refills it from a
    background thread kept off `cpu`; `close()` detaches the pool and wipes what is left.

    Raises:
        PolicyDenied: the policy refuses this key.
    """

    def __init__(
        self,
        key: SigningKey,
        policy: Policy,
        *,
        nsm: Nsm | None = None,
        cpu: int | None = None,
        spin_us: int = DEFAULT_SPIN_US,
        idle: Callable[[], None] | None = None,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        for name, value in (("frame_timeout", frame_timeout), ("idle_timeout", idle_timeout)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number of seconds > 0 (got {value})")
        policy.check_key(key)
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            raise ValueError(
                f"cpu {cpu} is not available to this process ({os.sched_getaffinity(0)})"
            )
        if spin_us < 0:
            raise ValueError("spin_us must be >= 0")
        self._key = key
        self._policy = policy
        self._limiter = RateLimiter(policy.rate_per_second, policy.rate_burst)
        # Bound once: the signing handlers run per request.
        self._check_tx = policy.check_tx
        self._take = self._limiter.take
        self._nsm = nsm
        self._cpu = cpu
        self._spin_ns = spin_us * 1000
        self._frame_ns = int(frame_timeout * 1e9)
        self._idle_ns = int(idle_timeout * 1e9)
        self._key_info = key.public_key + key.address_bytes
        self._lock = threading.Lock()
        self._live: dict[int, tuple[socket.socket, list[int], list[object]]] = {}
        self._closed_totals = [0] * 6
        self._connections_total = 0
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._address: Address | None = None
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)  # drained after a signal's wake-up; never waits
        os.set_blocking(self._wake_w, False)  # signal.set_wakeup_fd requires it
        self._serving = False
        self._stop_requested = False  # set by request_stop(), which must not take any lock
        self._released = False
        self._accept_thread: threading.Thread | None = None
        self._refilling = False
        table: list[_Handler | None] = [None] * 256
        table[Op.PING] = self._op_ping
        table[Op.GET_KEY] = self._op_get_key
        table[Op.SIGN_DIGEST] = self._op_sign_digest
        table[Op.SIGN_TX] = self._op_sign_tx
        table[Op.ATTEST] = self._op_attest
        table[Op.STATS] = self._op_stats
        table[Op.SIGN_TX_BATCH] = self._op_sign_tx_batch
        self._table = tuple(table)
        self._idle = idle
        self._pool: PresignPool | None = None
        if policy.presign_pool:
            self._pool = PresignPool(policy.presign_pool, nonces=NonceSource(nsm))
            key.use_presignatures(self._pool)

    def __repr__(self) -> str:
        return f"SignerServer(address={self._address}, key={self._key!r})"

    # --- lifecycle --------------------------------------------------------------------------------

    def bind(self, address: Address | str) -> Address:
        """Listen on `address`; returns it with the kernel-chosen port if port 0 was asked.

        Raises:
            TransportError: malformed address or the socket could not listen.
        """
        addr = parse_address(address) if isinstance(address, str) else address
        self._listener = listen(addr)
        self._address = listening_address(self._listener, addr)
        if addr.kind == "unix":  # close() removes the path only while it is still this socket
            st = os.stat(addr.path)
            self._inode = (st.st_dev, st.st_ino)
        return self._address

    @property
    def address(self) -> Address | None:
        return self._address

    def serve_forever(self) -> None:
        """Accept connections until `close()`; each gets its own thread."""
        if self._listener is None or self._address is None:
            raise RuntimeError("bind() first")
        listener, addr = self._listener, self._address
        # Wait on the listener *and* a wake-up pipe: shutdown() of a listening AF_VSOCK socket does
        # not wake a thread blocked in accept() (it does for AF_UNIX/AF_INET), a pipe always does.
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        listener.setblocking(False)
        # Python runs signal handlers in the main thread only, and a signal the kernel hands to
        # another thread (any thread may take a process-directed one) does not interrupt the main
        # thread's poll(): without a wake-up fd a SIGTERM could wait for the next connection.
        on_main = threading.current_thread() is threading.main_thread()
        previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False) if on_main else -1
        self._start_refill()
        logger.info("serving %s for %s", addr, self._key.address)
        self._serving = True
        try:
            self._accept_loop(poller, listener, addr)
        finally:
            if on_main:
                signal.set_wakeup_fd(previous_wakeup)
            self._release_listener()

    def _accept_loop(self, poller: select.poll, listener: socket.socket, addr: Address) -> None:
        wake_fd = self._wake_r
        while not (self._closing.is_set() or self._stop_requested):
            ready = poller.poll()
            if self._closing.is_set() or self._stop_requested:
                break
            if any(fd == wake_fd for fd, _ in ready):
                # A signal's byte (its handler, if any, runs before the loop's next check) or a
                # request_stop racing the flag: drain, so poll blocks again.
                with contextlib.suppress(OSError):
                    os.read(wake_fd, 4096)
                continue
            try:
                conn = accept(listener, addr)
            except BlockingIOError:  # the peer went away between poll and accept
                continue
            except OSError:
                if self._closing.is_set():
                    break
                logger.warning("accept failed on %s; continuing", addr, exc_info=True)
                time.sleep(0.01)
                continue
            counters = [0] * 6
            state: list[object] = [0, 0, 0, peer_of(conn, addr)]
            with self._lock:
                refuse, victim = self._make_room(state[_PEER])
                if not refuse:
                    self._live[id(conn)] = (conn, counters, state)
                    self._connections_total += 1
            if refuse:
                logger.warning("refusing a connection: %d busy in requests", _MAX_CONNECTIONS)
                conn.close()
                continue
            if victim is not None:
                logger.warning("connection table full: closing the longest-waiting connection")
                with contextlib.suppress(OSError):
                    victim.shutdown(socket.SHUT_RDWR)  # wakes its thread, which cleans up
            threading.Thread(
                target=self._serve_connection,
                args=(conn, counters, state),
                name="sentinel-conn",
                daemon=True,
            ).start()

    def _make_room(self, peer: object) -> tuple[bool, socket.socket | None]:
        """With the lock held: (False, None) if there is room, (False, the connection to evict,
        marked) if not, (True, None) if every connection is busy in a request (refuse the new)."""
        live = [(c, st) for c, _, st in self._live.values() if not st[_EVICTED]]
        if len(live) < _MAX_CONNECTIONS:
            return False, None
        per_peer: dict[object, int] = {}
        for _, st in live:
            per_peer[st[_PEER]] = per_peer.get(st[_PEER], 0) + 1
        per_peer[peer] = per_peer.get(peer, 0) + 1
        waiting = [(c, st) for c, st in live if st[_WAITING]]
        if not waiting:
            return True, None
        # The peer holding most, then a wait mid-frame, then the oldest wait.
        conn, st = min(
            waiting,
            key=lambda cs: (-per_peer[cs[1][_PEER]], -int(cs[1][_PARTIAL]), cs[1][_WAITING]),  # type: ignore[call-overload]
        )
        st[_EVICTED] = 1
        return False, conn

    def _start_refill(self) -> None:
        pool = self._pool
        if pool is None or self._closing.is_set():
            return
        with self._lock:
            if self._refilling:
                return
            self._refilling = True
        pool.start_refill(avoid_cpu=self._cpu, idle=self._idle)

    def start(self) -> threading.Thread:
        """Run `serve_forever` in a background thread (tests, embedding)."""
        t = threading.Thread(target=self.serve_forever, name="sentinel-accept", daemon=True)
        t.start()
        self._accept_thread = t
        return t

    def request_stop(self) -> None:
        """Make `serve_forever` return soon; then call `close()`. For signal handlers: it takes no
        lock and waits for nothing. (`close()` there could deadlock: the handler runs in the main
        thread, between any two of its bytecodes, possibly while that thread holds the server's
        lock in the accept loop.)"""
        self._stop_requested = True
        if not self._released:  # same thread as _release_listener: the flag is set before the close
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Stop accepting, disconnect every client, remove a Unix socket file."""
        if self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if not self._serving:
            self._release_listener()
        with self._lock:
            conns = [c for c, _, _ in self._live.values()]
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._address is not None and self._address.kind == "unix" and self._inode is not None:
            unlink_if_own(self._address.path, self._inode)
        if self._pool is not None:
            self._key.use_presignatures(None)
            self._pool.close()

    def _release_listener(self) -> None:
        # By whoever owns the accept loop, or by close() if it never ran; exactly once, because a
        # second os.close() could hit a descriptor number some other code has opened since.
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._listener is not None:
            self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> SignerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> Stats:
        """Current counters (approximate while connections are busy: no lock on their counters)."""
        with self._lock:
            totals = list(self._closed_totals)
            for _, counters, _ in self._live.values():
                for i, v in enumerate(counters):
                    totals[i] += v
            open_now = len(self._live)
            total = self._connections_total
        requests, errors, denials, digests, txs, attests = totals
        pool = self._pool
        return Stats(
            requests, errors, denials, digests, txs, attests, open_now, total,
            *((len(pool), pool.presigned, pool.fallbacks) if pool is not None else (0, 0, 0)),
        )  # fmt: skip

    # --- connection loop --------------------------------------------------------------------------

    def _serve_connection(
        self, conn: socket.socket, counters: list[int], state: list[object]
    ) -> None:
        if self._cpu is not None:
            try:
                os.sched_setaffinity(0, {self._cpu})  # pid 0: this thread only
            except OSError as e:
                logger.warning("cannot pin connection thread to cpu %d: %s", self._cpu, e)
        logger.debug("connection opened")
        try:
            self._loop(conn, counters, state)
        except _Closed:
            pass
        finally:
            with self._lock:
                self._live.pop(id(conn), None)
                for i, v in enumerate(counters):
                    self._closed_totals[i] += v
            with contextlib.suppress(OSError):
                conn.close()
            logger.debug("connection closed")

    def _loop(self, conn: socket.socket, counters: list[int], state: list[object]) -> None:
        buf = bytearray(_BUFFER_SIZE)
        mv = memoryview(buf)
        recv_into, send = conn.recv_into, conn.send
        spin_ns, frame_ns, idle_ns = self._spin_ns, self._frame_ns, self._idle_ns
        clock = time.monotonic_ns
        dontwait = socket.MSG_DONTWAIT
        unpack_header, pack_header = HEADER.unpack_from, HEADER.pack
        table = self._table
        start = end = 0
        frame_deadline = 0  # set by the first blocked read of a frame, cleared at each frame start
        poller = select.poll()
        poller.register(conn, select.POLLIN)

        def wait(partial: bool, events: int = select.POLLIN) -> None:
            """Slow path: block until `conn` is ready, or close it at the frame/idle deadline."""
            nonlocal frame_deadline
            now = clock()
            if partial:
                if not frame_deadline:
                    frame_deadline = now + frame_ns
                deadline = frame_deadline
            else:
                deadline = now + idle_ns
            state[_PARTIAL] = partial
            state[_WAITING] = now
            p = poller
            if events != select.POLLIN:
                p = select.poll()
                p.register(conn, events)
            try:
                while True:
                    left = deadline - clock()
                    if left <= 0:
                        logger.info("closing a connection: %s", "frame deadline" if partial
                                    else "idle deadline")  # fmt: skip
                        raise _Closed
                    if p.poll(-(-left // 1_000_000)):  # ms, rounded up
                        return
            finally:
                state[_WAITING] = 0

        def fill() -> int:
            """Read more bytes at `end`: spin on non-blocking reads, then wait. 0 means EOF."""
            room = mv[end:]
            try:
                try:
                    return recv_into(room, 0, dontwait)
                except BlockingIOError:
                    pass
                if spin_ns:
                    spin_end = clock() + spin_ns
                    while True:
                        try:
                            return recv_into(room, 0, dontwait)
                        except BlockingIOError:
                            if clock() > spin_end:
                                break
                while True:
                    wait(end > start)
                    try:
                        return recv_into(room, 0, dontwait)
                    except BlockingIOError:  # woken without data
                        continue
            except OSError as e:
                raise _Closed from e

        def send_frame(frame: bytes) -> None:
            """Send a whole answer; a peer that does not take it by the frame deadline is cut."""
            try:
                try:
                    sent = send(frame, dontwait)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
                rest = memoryview(frame)[sent:]
                while rest:
                    wait(True, select.POLLOUT)
                    try:
                        rest = rest[send(rest, dontwait) :]
                    except BlockingIOError:
                        continue
            except OSError as e:
                raise _Closed from e

        while True:
            frame_deadline = 0
            # Frame boundary: keep at least one maximal frame of room after `start`.
            if start == end:
                start = end = 0
            elif start > _BUFFER_SIZE // 2:
                buf[: end - start] = buf[start:end]
                end -= start
                start = 0
            while end - start < HEADER_SIZE:
                got = fill()
                if not got:
                    raise _Closed
                end += got
            magic, version, op, rid, n = unpack_header(buf, start)
            counters[_REQUESTS] += 1
            if magic != MAGIC or version != VERSION or n > MAX_PAYLOAD:
                start, end = self._reject_frame(
                    conn, buf, mv, start, end, (magic, version, n, rid), wait, send_frame
                )
                counters[_ERRORS] += 1
                continue
            frame_end = start + HEADER_SIZE + n
            while end < frame_end:
                got = fill()
                if not got:
                    raise _Closed
                end += got
            payload = mv[start + HEADER_SIZE : frame_end]
            start = frame_end
            handler = table[op]
            try:
                if handler is None:
                    raise ProtocolError(ErrorCode.UNKNOWN_OPCODE, f"unknown opcode 0x{op:02x}")
                out = handler(payload, counters)
                frame = pack_header(MAGIC, VERSION, op | RESPONSE_BIT, rid, len(out)) + out
            except EnclaveError as e:
                counters[_ERRORS] += 1
                if isinstance(e, PolicyDenied):
                    counters[_DENIALS] += 1
                frame = wire.encode_error(rid, e.code, str(e))
            except Exception as e:  # a bug must cost one request, not the connection or the server
                counters[_ERRORS] += 1
                # Type name only: an exception text could quote request bytes.
                logger.error("internal error on opcode 0x%02x: %s", op, type(e).__name__)
                frame = wire.encode_error(rid, ErrorCode.INTERNAL, "internal error")
            finally:
                payload.release()
            send_frame(frame)

    def _reject_frame(
        self,
        conn: socket.socket,
        buf: bytearray,
        mv: memoryview,
        start: int,
        end: int,
        head: tuple[bytes, int, int, int],
        wait: Callable[[bool], None],
        send_frame: Callable[[bytes], None],
    ) -> tuple[int, int]:
        """Consume a frame whose header is unacceptable (12 + n bytes, whatever they are), answer
        it with an error frame, and return the new (start, end). Oversized payloads are read and
        discarded in buffer-sized chunks, never stored, under the frame's deadline."""
        magic, version, n, rid = head
        try:
            wire.check_header(magic, version, n)
            raise AssertionError("unreachable: header was rejected")  # pragma: no cover
        except ProtocolError as e:
            error = wire.encode_error(rid, e.code, str(e))
        remaining = HEADER_SIZE + n
        buffered = end - start
        if buffered >= remaining:
            start += remaining
        else:
            remaining -= buffered
            start = end = 0
            while remaining:
                try:
                    got = conn.recv_into(mv, min(remaining, len(buf)), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    wait(True)
                    continue
                except OSError as exc:
                    raise _Closed from exc
                if not got:
                    raise _Closed
                remaining -= got
        send_frame(error)
        return start, end

    # --- operations (payload is a view into the receive buffer, valid during the call) ------------

    def _op_ping(self, p: memoryview, c: list[int]) -> bytes:
        wire.expect_length("ping", len(p), 0)
        return b""

    def _op_get_key(self, p: memoryview, c: list[int]) -> bytes:
        wire.expect_length("get-key", len(p), 0)
        return self._key_info

    def _op_sign_digest(self, p: memoryview, c: list[int]) -> bytes:
        if len(p) != 32:
            wire.expect_length("sign-digest", len(p), 32)
        self._policy.check_digest()
        self._limiter.take()
        sig = self._key.sign_digest(bytes(p))
        c[_DIGESTS] += 1
        return sig

    def _op_sign_tx(self, p: memoryview, c: list[int]) -> bytes:
        tx = _decode_sign_tx(p)
        self._check_tx(tx)
        self._take()
        out = sign_tx_answer(self._key, tx)
        c[_TXS] += 1
        if len(out) > MAX_PAYLOAD:  # MAX_TX_DATA keeps this from happening; never send it
            raise EnclaveError(f"signed transaction of {len(out)} bytes exceeds the frame limit")
        return out

    def _op_sign_tx_batch(self, p: memoryview, c: list[int]) -> bytes:
        # Framing faults refuse the frame; after that each transaction stands alone: decoding,
        # policy and rate limit per item, a refusal of one is its own result.
        items = wire.decode_sign_tx_batch(p)
        out = [wire.BATCH_COUNT.pack(len(items), 0)]
        check_tx, take, key = self._check_tx, self._take, self._key
        pack_result = wire.BATCH_RESULT.pack
        try:
            for item in items:
                try:
                    tx = _decode_sign_tx(item)
                    check_tx(tx)
                    take()
                    answer = sign_tx_answer(key, tx)  # hash || raw, the item's body
                    c[_TXS] += 1
                    out.append(pack_result(0, len(answer)))
                    out.append(answer)
                except EnclaveError as e:
                    c[_ERRORS] += 1
                    if isinstance(e, PolicyDenied):
                        c[_DENIALS] += 1
                    out.append(wire.encode_batch_error(e.code, str(e)))
                except Exception as e:  # a bug costs one item, as it costs one request elsewhere
                    c[_ERRORS] += 1
                    logger.error("internal error in a sign-tx batch: %s", type(e).__name__)
                    out.append(wire.encode_batch_error(ErrorCode.INTERNAL, "internal error"))
        finally:
            for item in items:
                item.release()
        # decode_sign_tx_batch bounds the answer by MAX_PAYLOAD; this only guards that arithmetic.
        answer = b"".join(out)
        if len(answer) > MAX_PAYLOAD:
            raise EnclaveError(f"batch answer of {len(answer)} bytes exceeds the frame limit")
        return answer

    def _op_attest(self, p: memoryview, c: list[int]) -> bytes:
        nonce, user_data, public_key = wire.decode_attest(p)
        if public_key is not None:
            # The NSM signs whatever key it is given as *this enclave's* key, and KMS encrypts
            # CiphertextForRecipient to it: relaying a caller's key would hand the caller every
            # secret the KMS key policy releases to these PCRs, the signing key's blob included.
            raise ProtocolError(
                ErrorCode.MALFORMED,
                "attest public_key must be empty: documents bind the signer's own key, never a "
                "caller's",
            )
        if self._nsm is None:
            raise AttestationUnavailable(
                "no Nitro Secure Module (device absent, emulator not allowed)"
            )
        # The signing key in public_key ties the PCRs a relying party checks to the key that
        # signs (what GET_KEY reports): PROTOCOL.md, "ATTEST".
        doc = self._nsm.attestation(
            user_data=user_data, nonce=nonce, public_key=self._key.public_key
        )
        if len(doc) > MAX_PAYLOAD:
            raise EnclaveError(f"attestation document of {len(doc)} bytes exceeds the frame limit")
        c[_ATTESTS] += 1
        return doc

    def _op_stats(self, p: memoryview, c: list[int]) -> bytes:
        wire.expect_length("stats", len(p), 0)
        return self.stats().encode()
