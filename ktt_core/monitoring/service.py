"""The drift monitor as a BentoML service: ``bentoml serve ktt_core.monitoring.service:KttMonitor``.

One worker holds the sliding window in memory (:class:`ktt_core.monitoring.drift.DriftDetector`);
a background thread recomputes drift every ``KTT_MONITOR_INTERVAL`` seconds when new rows
arrived and publishes it as Prometheus gauges on BentoML's ``/metrics``.

Settings (environment; ``ktt monitor`` and ``ktt serve --monitoring`` set them):

- ``KTT_MONITOR_REFERENCE``: the reference set (parquet), required;
- ``KTT_MONITOR_MODEL``: the value of the ``model`` label of every metric (default ``ktt``);
- ``KTT_MONITOR_WINDOW``: live rows kept (default 500);
- ``KTT_MONITOR_INTERVAL``: seconds between background recomputations (default 5);
- ``KTT_MONITOR_MIN_ROWS``: rows needed before drift is computed (default 50);
- ``KTT_MONITOR_FEATURES``: feature columns tested, a fixed random subset (default 64; 0: all);
- ``KTT_MONITOR_REPORT_DIR``: where ``POST /report`` writes ``drift_report.html``
  (default: the reference set's folder, or ``$TMPDIR/ktt-monitor`` when that is read-only).

APIs: ``POST /ingest`` ``{"rows": [{"features": [...], "prediction": "A > B", "score": 0.9}]}``,
``POST /drift`` (recomputes now), ``POST /report`` (Evidently's HTML report).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import bentoml
from bentoml import IODescriptor
from bentoml.exceptions import InvalidArgument
from pydantic import ConfigDict

from ktt_core.serving.guard import guard
from ktt_core.serving.settings import (
    MONITOR_MAX_REQUEST_BYTES,
    env_int,
    max_request_bytes,
)

log = logging.getLogger("ktt.monitoring")

MAX_ROWS_PER_REQUEST = 10_000

# Gauges: (name, help). Exposed names are exactly these (see docs/monitoring.md).
GAUGES = {
    "ktt_drift_share": "Share of the tested feature columns that drifted (K-S p < 0.05); NaN below min rows",
    "ktt_dataset_drift": "1 when at least half of the tested feature columns drifted, else 0",
    "ktt_drifted_columns": "Number of tested feature columns that drifted",
    "ktt_prediction_drift_score": "Chi-square p-value of the predicted labels against the reference",
    "ktt_prediction_drift": "1 when the predicted labels drifted (chi-square p < 0.05), else 0",
    "ktt_monitor_window_rows": "Live rows in the sliding window",
}
RECEIVED = "ktt_monitor_rows_received"   # a Counter: exposed as ktt_monitor_rows_received_total


class IngestRequest(IODescriptor):
    """The body of ``POST /ingest``: ``{"rows": [...]}``. The rows are checked by
    :func:`ktt_core.monitoring.drift.validate_rows`, whose messages name the bad row and
    field; an unknown field (a typo) is refused rather than ignored."""

    model_config = ConfigDict(extra="forbid")
    rows: Any = None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected a number") from None
    if not value > 0:
        raise ValueError(f"environment variable {name}={raw!r}: must be positive")
    return value


def _gauge_value(value) -> float:
    return math.nan if value is None else float(value)


@bentoml.service(name="ktt-monitor", workers=1, traffic={"timeout": 300})
class KttMonitor:
    """Drift of live predictions against the reference set (see the module docstring)."""

    def __init__(self) -> None:
        import prometheus_client  # imported here: BentoML sets up multiprocess metrics before the worker starts

        from ktt_core.monitoring.drift import DriftDetector

        reference = os.environ.get("KTT_MONITOR_REFERENCE", "")
        if not reference:
            raise ValueError("KTT_MONITOR_REFERENCE is not set: the path of the reference set (parquet)")
        self.reference = Path(reference)
        self.model = os.environ.get("KTT_MONITOR_MODEL", "") or "ktt"
        self.interval = _env_float("KTT_MONITOR_INTERVAL", 5.0)
        features = env_int("KTT_MONITOR_FEATURES", 64, low=0)
        self.detector = DriftDetector.from_parquet(
            self.reference, window_size=env_int("KTT_MONITOR_WINDOW", 500),
            min_rows=env_int("KTT_MONITOR_MIN_ROWS", 50), max_features=features or None)
        self.report_dir = Path(os.environ.get("KTT_MONITOR_REPORT_DIR", "") or self.reference.parent)
        if not os.environ.get("KTT_MONITOR_REPORT_DIR") and not os.access(self.report_dir, os.W_OK):
            import tempfile  # a read-only mount (docker): reports go to the temporary folder

            self.report_dir = Path(tempfile.gettempdir()) / "ktt-monitor"

        # One worker, so "livemostrecent" exposes each gauge without a pid label.
        self.gauges = {name: prometheus_client.Gauge(name, doc, labelnames=["model"],
                                                     multiprocess_mode="livemostrecent").labels(model=self.model)
                       for name, doc in GAUGES.items()}
        self.received = prometheus_client.Counter(RECEIVED, "Live rows received by the drift monitor",
                                                  labelnames=["model"]).labels(model=self.model)
        self._publish(self.detector.compute())
        log.warning("drift monitor of %s: reference %s (%d features, %d tested), window %d, every %gs",
                    self.model, self.reference, self.detector.n_features, len(self.detector.tested_columns),
                    self.detector.window_size, self.interval)
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="ktt-drift", daemon=True)
        self._thread.start()

    # -- background recomputation -------------------------------------------------------------
    def _publish(self, result: dict) -> None:
        g = self.gauges
        g["ktt_monitor_window_rows"].set(result["window_rows"])
        g["ktt_drift_share"].set(_gauge_value(result["drift_share"]))
        g["ktt_dataset_drift"].set(_gauge_value(result["dataset_drift"]))
        g["ktt_drifted_columns"].set(_gauge_value(result["drifted_columns"]))
        g["ktt_prediction_drift_score"].set(_gauge_value(result["prediction_drift_score"]))
        g["ktt_prediction_drift"].set(_gauge_value(result["prediction_drift"]))

    def _refresh(self) -> dict:
        result = self.detector.compute()
        self._publish(result)
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.detector.version == self.detector.computed_version:
                continue  # no new rows: the gauges are up to date
            try:
                self._refresh()
                if self._failing:
                    log.warning("drift computation works again")
                self._failing = False
            except Exception:  # keep the thread alive; say it once, not every interval
                if not self._failing:
                    log.exception("drift computation failed (retrying every %gs)", self.interval)
                self._failing = True

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    # -- APIs -----------------------------------------------------------------------------------
    @bentoml.api(route="/ingest", input_spec=IngestRequest)
    def ingest(self, rows: Any = None) -> dict:
        """Add live rows ``{"features": [...], "prediction": "A > B", "score": 0.9}`` to the window."""
        if rows is None:
            raise InvalidArgument('send {"rows": [{"features": [...], "prediction": "..."}, ...]}')
        try:
            window = self.detector.add(rows, MAX_ROWS_PER_REQUEST)  # all rows or none
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        self.received.inc(len(rows))
        self.gauges["ktt_monitor_window_rows"].set(window)
        return {"received": len(rows), "window_rows": window}

    @bentoml.api(route="/drift")
    def drift(self) -> dict:
        """Drift of the current window, recomputed now (None values below the minimum rows)."""
        return self._refresh()

    @bentoml.api(route="/report")
    def report(self) -> dict:
        """Write Evidently's HTML drift report of the window; returns its path."""
        started = time.perf_counter()
        try:
            path = self.detector.report_html(self.report_dir / "drift_report.html")
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        return {"path": str(path.resolve()), "window_rows": len(self.detector),
                "seconds": round(time.perf_counter() - started, 2)}


# Oversized, non-JSON and abandoned requests are shed before they cost memory.
guard(KttMonitor, max_request_bytes(MONITOR_MAX_REQUEST_BYTES), setting="KTT_MAX_REQUEST_BYTES")
