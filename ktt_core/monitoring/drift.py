"""Drift of live predictions against a run's reference set, computed with Evidently 0.7.

The reference set (``ktt train --reference``, ``RUN/reference.parquet``) holds one row per
validation text: pooled encoder features in columns ``"0"``, ``"1"``, ..., one probability
column per leaf, ``target`` and ``prediction``. Live rows carry the same features and the
predicted leaf path: ``{"features": [...], "prediction": "Food > Fruit", "score": 0.93}``.

:class:`DriftDetector` keeps the last ``window_size`` live rows and compares them with the
reference:

- features: Evidently's ``DriftedColumnsCount`` (the dataset-level metric of
  ``DataDriftPreset``) with the two-sample Kolmogorov-Smirnov test per column
  (``num_method="ks"``, a column drifts when p < 0.05); the dataset drifts when at least
  ``drift_share`` (0.5) of the tested columns drift, Evidently's own rule and test.
- prediction: Evidently's ``ValueDrift`` on the ``prediction`` column with the chi-square
  test (``method="chisquare"``); its score is the **p-value**, drift when p < 0.05.

Both tests are fixed rather than left to Evidently's automatic choice, which switches to
distances (Wasserstein, Jensen-Shannon) for references over 1000 rows: those ignore the
window's size and flag drift on small windows of undrifted data (measured: Wasserstein on a
300-row reference flagged 36% of undrifted columns; Jensen-Shannon with 30 labels flagged a
500-row undrifted window 20% of the time, chi-square about 5-10%).

Evidently costs about 6 ms per tested column (its per-column bookkeeping, not the test
itself), measured on this project's shared 2-core CPU with a 500-row window: 2.4-4 s for all
384 columns of MiniLM features, 0.3-0.5 s for 64. So by default a fixed random subset
(seed 0) of ``max_features`` = 64 feature columns is tested; ``drift_share`` is then the
share of that subset, an unbiased estimate of the share over all columns (the choice over a
PCA projection: the tested columns stay real features of the reference, named in the HTML
report). ``max_features=None`` tests every column.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATURE_TEST = "ks"              # Evidently's Kolmogorov-Smirnov test: score is a p-value
FEATURE_THRESHOLD = 0.05
PREDICTION_TEST = "chisquare"    # Evidently's chi-square test: score is a p-value
PREDICTION_THRESHOLD = 0.05
DEFAULT_MAX_FEATURES = 64
MIN_REFERENCE_ROWS = 5
RESULT_KEYS = ("drift_share", "dataset_drift", "drifted_columns", "prediction_drift_score", "prediction_drift")


def feature_columns(reference: pd.DataFrame) -> list[str]:
    """The reference's feature columns ``"0"`` .. ``"n-1"`` in order; ValueError if absent or gappy."""
    names = sorted((c for c in reference.columns if isinstance(c, str) and c.isdigit()), key=int)
    if not names:
        raise ValueError("no feature columns (named \"0\", \"1\", ...)")
    if names != [str(i) for i in range(len(names))]:
        missing = sorted(set(range(int(names[-1]) + 1)) - {int(n) for n in names})
        raise ValueError(f"feature columns are not \"0\"..\"{names[-1]}\": column \"{missing[0]}\" is missing")
    return names


def check_reference(reference: pd.DataFrame) -> list[str]:
    """The feature columns of a usable reference set; ValueError saying what is wrong."""
    features = feature_columns(reference)
    if "prediction" not in reference.columns:
        raise ValueError("no \"prediction\" column")
    if len(reference) < MIN_REFERENCE_ROWS:
        raise ValueError(f"{len(reference)} rows; at least {MIN_REFERENCE_ROWS} are needed")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(reference[c])]
    if bad:
        raise ValueError(f"feature column \"{bad[0]}\" is not numeric")
    if reference["prediction"].isna().any():
        raise ValueError("the \"prediction\" column has empty values")
    return features


def validate_rows(rows: Any, n_features: int, max_rows: int | None = None) -> list[tuple[np.ndarray, str]]:
    """Live rows as ``(features, prediction)``; ValueError with a message naming the bad row.

    A row is ``{"features": [n_features numbers], "prediction": "A > B", "score": 0.9}``
    (``score`` optional; other keys are ignored).
    """
    if not isinstance(rows, list):
        raise ValueError(f'"rows" must be a list of objects, got {type(rows).__name__}')
    if max_rows is not None and len(rows) > max_rows:
        raise ValueError(f'"rows" has {len(rows)} items; at most {max_rows} per request')
    out = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f'{where} must be an object with "features" and "prediction", got {type(row).__name__}')
        if "features" not in row:
            raise ValueError(f'{where} has no "features"')
        features = row["features"]
        if not isinstance(features, list):
            raise ValueError(f'{where}.features must be a list of {n_features} numbers, got {type(features).__name__}')
        if len(features) != n_features:
            raise ValueError(f"{where}.features has {len(features)} values; the reference set has {n_features}")
        for j, value in enumerate(features):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{where}.features[{j}] must be a finite number, got {value!r:.40}")
        prediction = row.get("prediction")
        if not isinstance(prediction, str) or not prediction.strip():
            raise ValueError(f'{where}.prediction must be a non-empty label path string such as "Food > Fruit"')
        score = row.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, Real)):
            raise ValueError(f"{where}.score must be a number, got {score!r:.40}")
        out.append((np.asarray(features, dtype=np.float32), prediction))
    return out


class DriftDetector:
    """A sliding window of live rows and its drift against ``reference`` (see the module docstring).

    ``add`` and ``compute`` may be called from several threads: the window has a lock, and
    one Evidently computation runs at a time.
    """

    def __init__(self, reference: pd.DataFrame, window_size: int = 500, min_rows: int = 50,
                 max_features: int | None = DEFAULT_MAX_FEATURES, drift_share: float = 0.5, seed: int = 0):
        from evidently import DataDefinition, Dataset

        if window_size < 1 or min_rows < 1:
            raise ValueError("window_size and min_rows must be positive")
        self.features = check_reference(reference)
        self.n_features = len(self.features)
        self.window_size = window_size
        self.min_rows = min(min_rows, window_size)
        self.drift_share_threshold = drift_share
        if max_features and max_features < self.n_features:
            picked = np.random.default_rng(seed).choice(self.n_features, size=max_features, replace=False)
            self.tested = sorted(picked.tolist())
        else:
            self.tested = list(range(self.n_features))
        self.tested_columns = [self.features[i] for i in self.tested]
        self._definition = DataDefinition(numerical_columns=self.tested_columns, categorical_columns=["prediction"])
        frame = reference[self.tested_columns].astype(np.float32)
        frame["prediction"] = reference["prediction"].astype(str).to_numpy()
        self._reference = Dataset.from_pandas(frame, data_definition=self._definition)
        self._window: deque[tuple[np.ndarray, str]] = deque(maxlen=window_size)
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self.received = 0          # rows added since start
        self.version = 0           # changes whenever the window does
        self.computed_version = -1  # the version of the window that last_result describes
        self.last_result: dict | None = None
        self.last_seconds: float | None = None

    @classmethod
    def from_parquet(cls, path: Path | str, **kwargs) -> "DriftDetector":
        return cls(pd.read_parquet(path), **kwargs)

    # -- the window ---------------------------------------------------------------------------
    def add(self, rows: list[dict], max_rows: int | None = None) -> int:
        """Validate ``rows`` (ValueError on a bad one: none are added) and append them; returns the window size."""
        parsed = validate_rows(rows, self.n_features, max_rows)
        with self._lock:
            self._window.extend(parsed)
            self.received += len(parsed)
            self.version += 1
            return len(self._window)

    def __len__(self) -> int:
        with self._lock:
            return len(self._window)

    def _current(self) -> tuple[pd.DataFrame, int]:
        """The window as a frame of the tested columns and ``prediction``, and its version."""
        with self._lock:
            rows, version = list(self._window), self.version
        if not rows:
            return pd.DataFrame(columns=[*self.tested_columns, "prediction"]), version
        matrix = np.stack([f for f, _ in rows])[:, self.tested]
        frame = pd.DataFrame(matrix, columns=self.tested_columns)
        frame["prediction"] = [p for _, p in rows]
        return frame, version

    # -- drift --------------------------------------------------------------------------------
    def _metrics(self):
        from evidently.metrics import DriftedColumnsCount, ValueDrift

        return [DriftedColumnsCount(columns=self.tested_columns, drift_share=self.drift_share_threshold,
                                    num_method=FEATURE_TEST, num_threshold=FEATURE_THRESHOLD),
                ValueDrift(column="prediction", method=PREDICTION_TEST, threshold=PREDICTION_THRESHOLD)]

    def _run(self, metrics, current: pd.DataFrame):
        from evidently import Dataset, Report

        dataset = Dataset.from_pandas(current, data_definition=self._definition)
        with warnings.catch_warnings():  # scipy warns on labels unseen in the reference (p = 0: drift)
            warnings.simplefilter("ignore")
            return Report(metrics, include_tests=True).run(dataset, self._reference)

    def compute(self) -> dict:
        """Drift of the current window; the drift values are None below ``min_rows`` rows."""
        with self._compute_lock:
            current, version = self._current()
            result: dict[str, Any] = {"window_rows": len(current), "features_tested": len(self.tested_columns),
                                      **{key: None for key in RESULT_KEYS}}
            if len(current) >= self.min_rows:
                started = time.perf_counter()
                columns_metric, prediction_metric = metrics = self._metrics()
                snapshot = self._run(metrics, current)
                self.last_seconds = time.perf_counter() - started
                columns = snapshot.metric_results[columns_metric.metric_id]
                prediction = snapshot.metric_results[prediction_metric.metric_id]
                failed = {t.metric_config.metric_id for t in snapshot.tests_results if t.status.value == "FAIL"}
                result.update(
                    drift_share=float(columns.share.value),
                    drifted_columns=int(columns.count.value),
                    dataset_drift=columns_metric.metric_id in failed,        # Evidently's test: share < drift_share
                    prediction_drift_score=float(prediction.value),
                    prediction_drift=prediction_metric.metric_id in failed,  # Evidently's test: p >= 0.05
                )
            self.last_result = result
            self.computed_version = version
            return result

    def report_html(self, path: Path | str) -> Path:
        """Write Evidently's ``DataDriftPreset`` HTML report of the window (tested columns and prediction)."""
        from evidently.presets import DataDriftPreset

        from ktt_core.files import atomic_path

        preset = DataDriftPreset(columns=[*self.tested_columns, "prediction"], drift_share=self.drift_share_threshold,
                                 num_method=FEATURE_TEST, num_threshold=FEATURE_THRESHOLD,
                                 cat_method=PREDICTION_TEST, cat_threshold=PREDICTION_THRESHOLD)
        with self._compute_lock:  # one Evidently run at a time (they share the reference Dataset)
            current, _ = self._current()
            if len(current) < self.min_rows:
                raise ValueError(f"the window has {len(current)} rows; a report needs at least {self.min_rows}")
            html = self._run([preset], current).get_html_str(as_iframe=False)
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(html, encoding="utf-8")
        return path

