"""Dynamic batching for `dlc serve`: concurrent requests merged into one onnxruntime run.

Requests wait in an asyncio queue. One worker takes the first, then keeps taking those that
arrive within `max_wait` of it, up to `max_batch` rows (a request that would overflow the batch,
or whose per-sample shapes differ, waits for the next one); it concatenates their inputs, runs
the model once in a worker thread (so the event loop keeps accepting requests, which then form
the next batch) and hands each request its own slice of the outputs. With max_wait 0 only the
requests that queued up during the previous run are merged: no added latency. A merged run that
fails is retried request by request, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from dlc.data.multi import Columns


@dataclass
class _Job:
    feed: Columns
    done: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.feed)

    @property
    def signature(self) -> tuple:
        return tuple((k, v.shape[1:], v.dtype.str) for k, v in self.feed.items())


@dataclass
class Batcher:
    run: object  # Columns -> {output name: array}, blocking (Model.run)
    max_batch: int = 64
    max_wait: float = 0.0  # seconds
    stats: dict = field(default_factory=lambda: {"requests": 0, "rows": 0, "runs": 0,
                                                 "largest_run": 0})

    def __post_init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self._held: _Job | None = None

    async def predict(self, feed: Columns) -> dict[str, np.ndarray]:
        """The model's outputs for `feed`, run together with whatever arrives meanwhile."""
        job = _Job(feed, asyncio.get_running_loop().create_future())
        self.stats["requests"] += 1
        self.stats["rows"] += job.rows
        await self.queue.put(job)
        return await job.done

    async def work(self) -> None:
        """The worker loop (one task for the server's lifetime)."""
        while True:
            batch = await self._gather()
            await self._run(batch)

    async def _gather(self) -> list[_Job]:
        first, self._held = self._held or await self.queue.get(), None
        batch, rows = [first], first.rows
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while rows < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if rows + job.rows > self.max_batch or job.signature != first.signature:
                self._held = job
                break
            batch.append(job)
            rows += job.rows
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        feed = Columns({k: np.concatenate([j.feed[k] for j in batch]) for k in batch[0].feed})
        try:
            out = await self._call(feed)
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests
            if len(batch) > 1:  # find the request that fails; the others get their answer
                for job in batch:
                    await self._run([job])
                return
            if not batch[0].done.done():
                batch[0].done.set_exception(e)
            return
        start = 0
        for job in batch:
            if not job.done.done():  # a client that went away cancelled its future
                job.done.set_result({k: v[start:start + job.rows] for k, v in out.items()})
            start += job.rows

    async def _call(self, feed: Columns) -> dict[str, np.ndarray]:
        self.stats["runs"] += 1
        self.stats["largest_run"] = max(self.stats["largest_run"], len(feed))
        return await asyncio.to_thread(self.run, feed)
