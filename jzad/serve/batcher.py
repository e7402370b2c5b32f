"""Dynamic batching: images that arrive together go to the device as one batch.

Requests put their decoded images on a bounded queue (all of a request's images or none: a full queue is
``Busy``, HTTP 503 with Retry-After). One consumer task takes the oldest image, waits until ``max_batch``
images are queued or ``max_wait_s`` has passed since that image arrived, and scores the batch in one worker
thread (the event loop keeps serving requests meanwhile). Batches are formed in arrival order, so the stream
sees the images in the order the service accepted them; each result carries its index in that order.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from jzad.serve.engine import Decoded, Inspector, Result


class Busy(Exception):
    """The queue cannot take a request now; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Pending:
    item: Decoded
    arrived: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    """The bounded queue and its consumer around an ``Inspector``.

    ``on_batch(results, seconds)`` is called on the event loop after each batch (metrics, live page);
    ``checkpoint_every_s`` > 0 checkpoints after a batch once that many seconds passed since the last one."""

    def __init__(self, inspector: Inspector, max_batch: int, max_wait_s: float, queue_size: int,
                 checkpoint_every_s: float = 0.0, on_batch: Callable | None = None,
                 on_checkpoint: Callable | None = None):
        if max_batch > inspector.streamer.batch:
            raise ValueError(f"max_batch: {max_batch} is larger than the compiled stream batch "
                             f"{inspector.streamer.batch}")
        self.inspector = inspector
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.checkpoint_every_s = checkpoint_every_s
        self.on_batch = on_batch
        self.on_checkpoint = on_checkpoint
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jzad-serve-device")
        self._last_checkpoint = time.monotonic()
        self._seconds_per_batch = 0.0

    @property
    def depth(self) -> int:
        """Images waiting in the queue (the batch being scored not included)."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        """True once ``close`` began: new requests are refused."""
        return self._closing

    def start(self) -> None:
        """Start the consumer on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._consume())

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the recent batch time (at least 1)."""
        batches = math.ceil((len(self._queue) + 1) / self.max_batch)
        return max(1, math.ceil(batches * self._seconds_per_batch))

    async def submit(self, items: list[Decoded], arrived: float) -> list[Result]:
        """Queue a request's images together and wait for their results (in the request's order)."""
        if self._closing:
            raise Busy("the service is shutting down", 5)
        if len(self._queue) + len(items) > self.queue_size:
            raise Busy(f"queue full ({len(self._queue)} of {self.queue_size} images waiting); retry later",
                       self.retry_after())
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, arrived, loop.create_future()) for item in items]
        self._queue.extend(pending)
        self._idle.clear()
        self._wake.set()
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def _next_batch(self) -> list[_Pending]:
        while not self._queue:
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()
        deadline = self._queue[0].arrived + self.max_wait_s
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.inspector.score,
                                                     [p.item for p in batch], [p.arrived for p in batch])
            except Exception as err:  # a failed batch fails its requests, never the service
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            seconds = time.perf_counter() - started
            self._seconds_per_batch = seconds if not self._seconds_per_batch else (
                0.8 * self._seconds_per_batch + 0.2 * seconds)
            for p, result in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(results, seconds)
            if self.checkpoint_every_s > 0 and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Checkpoint in the worker thread (between batches, never during one)."""
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(self._executor, self.inspector.checkpoint)
        self._last_checkpoint = time.monotonic()
        if path is not None and self.on_checkpoint is not None:
            self.on_checkpoint(path)

    async def close(self) -> None:
        """Refuse new requests, score everything queued, then checkpoint, wait until it is on disk and stop the
        worker."""
        self._closing = True
        self._wake.set()
        while self._queue or not self._idle.is_set():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.inspector.done != self.inspector.saved:
            await self.checkpoint()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.inspector.close_checkpoints)
        self._executor.shutdown(wait=True)
