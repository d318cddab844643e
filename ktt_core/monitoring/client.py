"""Send live rows to the drift monitor without ever slowing down the caller.

``MonitorClient.send`` only puts rows on a bounded queue (``put_nowait``): rows that do not
fit are dropped and counted. A daemon thread takes up to ``batch_size`` rows at a time and
POSTs them to ``URL/ingest`` with a short timeout. A failed post drops that batch, counts it,
and the thread goes on; only the first failure and the recovery are logged:

- monitor down (connection refused, timeout, 5xx): the rows already queued are dropped too
  (they are stale), and the thread waits before its next try, 0.25 s doubling up to
  ``max_backoff`` seconds; meanwhile the queue fills and further rows are dropped at once,
  at no cost to the caller;
- 4xx (the monitor refused these rows): only that batch is dropped.

``stats()`` counts rows: ``sent`` (delivered), ``dropped`` (never delivered), ``queued``.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from ktt_core.secrets import mask_url

log = logging.getLogger("ktt.monitoring")


class MonitorClient:
    """A non-blocking sender of rows to ``url + "/ingest"`` (see the module docstring)."""

    def __init__(self, url: str, queue_size: int = 1000, batch_size: int = 64, timeout: float = 2.0,
                 on_sent: Callable[[int], object] | None = None,
                 on_dropped: Callable[[int], object] | None = None, max_backoff: float = 5.0):
        from ktt_core.environment import check_url

        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        self.url = check_url(url, "drift monitor URL").rstrip("/")
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._on_sent = on_sent
        self._on_dropped = on_dropped
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._closed = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="ktt-monitor-client", daemon=True)
        self._thread.start()

    # -- the caller's side: never blocks ------------------------------------------------------------
    def send(self, rows: list[dict]) -> None:
        """Queue ``rows`` for the monitor; rows that do not fit (or come after ``close``) are dropped."""
        if not rows:
            return
        if self._closed.is_set():
            self._count_dropped(len(rows))
            return
        for i, row in enumerate(rows):
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._count_dropped(len(rows) - i)
                return

    def stats(self) -> dict:
        """Rows delivered, rows dropped (queue full, monitor down or refusing), rows waiting."""
        with self._lock:
            return {"sent": self._sent, "dropped": self._dropped, "queued": self._queue.qsize()}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread: queued rows are sent for up to ``timeout`` seconds, the rest dropped."""
        if self._closed.is_set():
            return
        self._closed.set()  # the thread sends what is queued, then stops
        self._thread.join(timeout)
        self._drop_queued()  # what the thread did not get to in time

    def __enter__(self) -> "MonitorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- counting -----------------------------------------------------------------------------------
    def _count_sent(self, n: int) -> None:
        with self._lock:
            self._sent += n
        self._callback(self._on_sent, n)

    def _count_dropped(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._dropped += n
        self._callback(self._on_dropped, n)

    @staticmethod
    def _callback(function, n: int) -> None:
        if function is None:
            return
        try:
            function(n)
        except Exception:  # a broken metrics callback must not stop sending
            log.exception("drift monitor client: callback %r failed", function)

    # -- the sending thread ---------------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[dict], bool]:
        """Up to ``batch_size`` rows (waits for the first); ``True`` once closed and drained."""
        while True:
            try:
                batch = [self._queue.get(timeout=0.2)]
                break
            except queue.Empty:
                if self._closed.is_set():
                    return [], True
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch, False

    def _run(self) -> None:
        import httpx

        backoff = 0.0
        with httpx.Client(timeout=self.timeout) as http:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    if backoff:
                        self._closed.wait(backoff)  # the monitor was down last time: do not hammer it
                    outcome = self._post(http, batch)
                    if outcome == "down":
                        self._drop_queued()  # rows waiting for a monitor that is down are stale: drop them now
                        backoff = min(max(2 * backoff, 0.25), self.max_backoff)
                    else:
                        backoff = 0.0
                if stop:
                    return

    def _drop_queued(self) -> None:
        n = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            n += 1
        self._count_dropped(n)

    def _post(self, http, batch: list[dict]) -> str:
        """POST one batch: "sent", "refused" (4xx: the rows were bad; the monitor is up) or "down"."""
        try:
            response = http.post(f"{self.url}/ingest", json={"rows": batch})
            outcome = "sent" if response.status_code < 400 else "refused" if response.status_code < 500 else "down"
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except Exception as e:  # connection refused, timeout, rows that are not JSON
            outcome, problem = "down", f"{type(e).__name__}: {e}"
        if outcome == "sent":
            self._count_sent(len(batch))
            if self._failing:
                log.warning("drift monitor at %s takes rows again", mask_url(self.url))
                self._failing = False
            return outcome
        self._count_dropped(len(batch))
        if not self._failing:
            log.warning("drift monitor at %s: %s; dropping rows until it takes them again (counted in stats)",
                        mask_url(self.url), mask_url(problem))
            self._failing = True
        return outcome
