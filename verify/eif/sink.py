"""A byte sink that writes to a file and hashes what it writes on worker threads.

Building a big image is one pass of bytes through several digests (SHA-384 for PCR0 and PCR2,
SHA-256 of a ramdisk, the CRC-32): done in line, each would cost a full pass. Here every chunk is
written once and handed to a few ordered *lanes*, one thread each; hashlib and the CRC drop the
GIL on large buffers, so the lanes run beside the thread that reads and writes. Buffers come from
a fixed pool, so memory stays `depth` chunks whatever the size.

Small writes (cpio headers, names, small files) are gathered into one batch before they are
written and hashed, so lanes see few, large updates, always in stream order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

__all__ = ["ByteSink", "HashingSink", "Update"]

#: One digest's update function (`hashlib` object's `update`, a running CRC...).
Update = Callable[[memoryview], object]

CHUNK = 1 << 20
BATCH = 256 << 10  # headers and small bodies are gathered up to this size before a write
DEPTH = 6  # big buffers in flight between this thread and the lanes


class ByteSink(Protocol):
    """Where a streamed EIF section writes its bytes."""

    def write(self, data: bytes) -> None:
        """Append `data`."""

    def copy_range(self, fd: int, offset: int, size: int) -> int:
        """Append `size` bytes of the open file `fd` from `offset`; returns how many were there
        (fewer only if the file is shorter)."""


class HashingSink:
    """Writes to `f` and feeds every byte, in order, to the updates routed to each lane.

    `route()` chooses the updates for the bytes written after it; call `drain()` before reading a
    digest, and `close()` in every case.
    """

    def __init__(self, f: BinaryIO, *, lanes: int = 2, chunk: int = CHUNK, depth: int = DEPTH
                 ) -> None:
        self.f = f
        self.position = 0
        self._batch = bytearray()
        self._routes: tuple[tuple[Update, ...], ...] = ((),) * lanes
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"sink-{i}")
                       for i in range(lanes)]
        self._free = [bytearray(chunk) for _ in range(depth)]
        self._chunk = chunk
        self._max_inflight = 2 * depth
        self._inflight: deque[tuple[bytearray | bytes, list[Future[None]]]] = deque()

    def route(self, *lanes: Sequence[Update]) -> None:
        """Send the bytes written from now on to `lanes[i]`'s updates on lane i (missing lanes
        get none)."""
        if len(lanes) > len(self._lanes):
            raise ValueError(f"{len(lanes)} lanes routed, the sink has {len(self._lanes)}")
        self._flush()
        self._routes = tuple(tuple(u) for u in lanes) + ((),) * (len(self._lanes) - len(lanes))

    def write(self, data: bytes) -> None:
        self._batch += data
        self.position += len(data)
        if len(self._batch) >= BATCH:
            self._flush()

    def copy_range(self, fd: int, offset: int, size: int) -> int:
        if size <= BATCH:
            data = os.pread(fd, size, offset)
            self.write(data)
            return len(data)
        self._flush()
        done = 0
        while done < size:
            buf = self._buffer()
            view = memoryview(buf)[: min(self._chunk, size - done)]
            n = os.preadv(fd, [view], offset + done)
            if n <= 0:
                self._free.append(buf)
                break
            self._emit(buf, view[:n])
            done += n
        self.position += done
        return done

    def drain(self) -> None:
        """Write any batched bytes and wait until every lane has seen everything written."""
        self._flush()
        self._retire(0)

    def close(self) -> None:
        """Stop the lanes (after what was submitted); the file is the caller's to close."""
        try:
            self._retire(0)
        finally:
            for lane in self._lanes:
                lane.shutdown(wait=True)

    def __enter__(self) -> HashingSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        if self._batch:
            data = bytes(self._batch)
            self._batch.clear()
            self._emit(data, memoryview(data))
            self._retire(self._max_inflight)  # batches are not pooled: bound them here

    def _emit(self, owner: bytearray | bytes, view: memoryview) -> None:
        self.f.write(view)
        futures = [lane.submit(_apply, updates, view)
                   for lane, updates in zip(self._lanes, self._routes, strict=True) if updates]
        self._inflight.append((owner, futures))

    def _buffer(self) -> bytearray:
        while not self._free:
            self._retire(len(self._inflight) - 1)
        return self._free.pop()

    def _retire(self, keep: int) -> None:
        while len(self._inflight) > keep:
            owner, futures = self._inflight.popleft()
            for fut in futures:
                fut.result()
            if isinstance(owner, bytearray):
                self._free.append(owner)


def _apply(updates: tuple[Update, ...], view: memoryview) -> None:
    for update in updates:
        update(view)
