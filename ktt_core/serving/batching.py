"""Adaptive batching inside one process: the texts of concurrent requests share model calls.

The single-process service (:mod:`ktt_core.serving.service`, layout ``single``) awaits
:meth:`MicroBatcher.submit` from its request handlers. One model call runs at a time, in a
worker thread (torch and onnxruntime release the GIL, so the event loop goes on reading
requests meanwhile). When a call ends, every request that arrived during it goes into the
next one, up to ``max_batch_size`` texts: batches grow with the load by themselves, and an
idle server answers a lone request at once instead of waiting for company.

A request whose wait for the model passes ``max_latency_ms`` is answered 503 rather than
queued without end: an overloaded server sheds load (BentoML's adaptive batching does the
same with its ``max_latency_ms``).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


class Overloaded(Exception):
    """A request waited longer than the latency budget for the model."""


class MicroBatcher:
    """Gathers concurrent ``submit`` calls into calls of ``run_batch(texts) -> results``."""

    def __init__(self, run_batch: Callable[[list[str]], list], max_batch_size: int, max_latency_ms: int) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_latency_ms / 1000
        self._waiting: deque = deque()  # (texts, future, arrival time)
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: model calls never overlap, so each gets all the model's CPU threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ktt-model")

    async def submit(self, texts: list[str]) -> list:
        """The results of ``texts``, in order, computed in a shared batch. Raises
        :class:`Overloaded` when the wait passed the budget; an error of the batch's
        model call is raised in every request of that batch."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._serve_batches())
        future = loop.create_future()
        self._waiting.append((texts, future, time.monotonic()))
        self._wake.set()
        return await future

    def _next_batch(self) -> list[tuple[list[str], asyncio.Future]]:
        """Whole requests, oldest first, up to ``max_batch_size`` texts (a larger request
        alone); requests that waited too long are answered with :class:`Overloaded`."""
        batch, size, now = [], 0, time.monotonic()
        while self._waiting:
            texts, future, arrived = self._waiting[0]
            if future.done():  # the client went away
                self._waiting.popleft()
                continue
            if now - arrived > self.max_wait:
                self._waiting.popleft()
                future.set_exception(Overloaded(
                    f"the request waited {now - arrived:.1f}s for the model, over the "
                    f"{self.max_wait * 1000:.0f} ms budget (KTT_MAX_LATENCY_MS); the server is overloaded"))
                continue
            if batch and size + len(texts) > self.max_batch_size:
                break
            self._waiting.popleft()
            batch.append((texts, future))
            size += len(texts)
        return batch

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._next_batch():
                texts = [text for request, _ in batch for text in request]
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, texts)
                except Exception as e:  # noqa: BLE001 - delivered to the requests that asked
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                start = 0
                for request, future in batch:
                    if not future.done():
                        future.set_result(results[start:start + len(request)])
                    start += len(request)
