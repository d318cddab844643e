"""The drift monitor: DriftDetector, a real `bentoml serve` KttMonitor, MonitorClient, `ktt monitor`.

No mocks: the monitor runs as a child process on a free 127.0.0.1 port with a private
BentoML home, and fixtures always stop it. Rows come from fixed seeds, so the statistical
tests' answers are the same on every run.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import assert_clean_error, environment

from ktt_core.cli import cli
from ktt_core.monitoring.client import MonitorClient
from ktt_core.monitoring.drift import RESULT_KEYS, DriftDetector
from ktt_core.monitoring.launch import start_monitor
from ktt_core.serving.launch import stop_service, wait_ready

N_FEATURES = 16
LABELS = ["Food > Fruit", "Food > Bakery", "Home > Garden", "Toys > Dolls"]
WEIGHTS = [0.4, 0.3, 0.2, 0.1]
WINDOW = 200
MODEL_LABEL = "test-model"
GAUGES = ["ktt_drift_share", "ktt_dataset_drift", "ktt_drifted_columns", "ktt_prediction_drift_score",
          "ktt_prediction_drift", "ktt_monitor_window_rows"]
COUNTER = "ktt_monitor_rows_received_total"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Shaped like `ktt train --reference` output: features, leaf probabilities, target, prediction."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, N_FEATURES)).astype(np.float32),
                         columns=[str(i) for i in range(N_FEATURES)])
    for label in LABELS:
        frame[label] = rng.random(n).astype(np.float32)
    frame["prediction"] = rng.choice(LABELS, size=n, p=WEIGHTS)
    frame["target"] = frame["prediction"]
    return frame


def live_rows(n: int, seed: int, shift: float = 0.0, label: str | None = None) -> list[dict]:
    """Rows as the inference service sends them; ``shift`` moves every feature, ``label`` fixes the prediction."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, N_FEATURES)) + shift
    predictions = [label] * n if label else rng.choice(LABELS, size=n, p=WEIGHTS).tolist()
    return [{"features": f.tolist(), "prediction": p, "score": 0.9} for f, p in zip(features, predictions)]


def metric_values(url: str) -> dict[str, float]:
    """``name{labels}`` -> value for KTT's metrics on ``url``/metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(ktt_[a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def labelled(name: str) -> str:
    return f'{name}{{model="{MODEL_LABEL}"}}'


def ingest(url: str, rows: list[dict], batch: int = 100) -> dict:
    answer = {}
    for start in range(0, len(rows), batch):
        response = httpx.post(f"{url}/ingest", json={"rows": rows[start:start + batch]}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
    return answer


def drift(url: str) -> dict:
    response = httpx.post(f"{url}/drift", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bento_home(tmp_path_factory):
    """A private BentoML home (and no telemetry) for this module, its children included."""
    with environment(BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml-home")), BENTOML_DO_NOT_TRACK="true",
                     HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"):
        yield os.environ["BENTOML_HOME"]


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.parquet"
    reference_frame().to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def monitor(reference_path, bento_home, tmp_path_factory):
    """A real monitor (window 200, recomputed every second); yields its URL; always stopped."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("monitor-log") / "monitor.log"
    with open(log_path, "w") as log:
        try:
            process = start_monitor(reference_path, MODEL_LABEL, "127.0.0.1", port, window=WINDOW, interval=1,
                                    env={"KTT_MONITOR_MIN_ROWS": "50"}, stdout=log, stderr=subprocess.STDOUT)
        except Exception as e:
            raise AssertionError(f"{e}\n--- monitor log ---\n{log_path.read_text()[-4000:]}") from e
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_service(process)
    assert process.returncode is not None


# -- DriftDetector ---------------------------------------------------------------------------------
def test_detector_is_silent_below_min_rows_and_the_window_slides():
    detector = DriftDetector(reference_frame(), window_size=100, min_rows=20)
    detector.add(live_rows(10, seed=1))
    result = detector.compute()
    assert result["window_rows"] == 10
    assert all(result[key] is None for key in RESULT_KEYS), result

    detector.add(live_rows(40, seed=2))
    result = detector.compute()
    assert result["window_rows"] == 50 and result["dataset_drift"] is False and result["prediction_drift"] is False
    assert 0 <= result["drift_share"] < 0.5 and 0 < result["prediction_drift_score"] <= 1

    # 100 shifted rows push every earlier row out of the 100-row window: all drifted.
    detector.add(live_rows(100, seed=3, shift=3.0, label=LABELS[-1]))
    result = detector.compute()
    assert result["window_rows"] == 100 == len(detector) and detector.received == 150
    assert result["dataset_drift"] is True and result["drift_share"] == 1.0
    assert result["drifted_columns"] == N_FEATURES == result["features_tested"]
    assert result["prediction_drift"] is True and result["prediction_drift_score"] < 0.05

    # ...and 100 reference-like rows push them out again.
    detector.add(live_rows(100, seed=4))
    result = detector.compute()
    assert result["dataset_drift"] is False and result["prediction_drift"] is False, result


def test_detector_tests_a_fixed_subset_of_wide_features():
    frame = reference_frame(n=100)
    wide = pd.concat([frame[[str(i) for i in range(N_FEATURES)]]] * 4, axis=1)
    wide.columns = [str(i) for i in range(4 * N_FEATURES)]
    wide["prediction"] = frame["prediction"]
    a, b = DriftDetector(wide, max_features=10), DriftDetector(wide, max_features=10)
    assert a.tested_columns == b.tested_columns and len(a.tested_columns) == 10 and a.n_features == 64
    assert len(DriftDetector(wide, max_features=None).tested_columns) == 64


BAD_ROWS = [
    ("not a list", '"rows" must be a list'),
    ([42], "rows[0] must be an object"),
    ([{"prediction": "A"}], 'rows[0] has no "features"'),
    ([{"features": "1,2", "prediction": "A"}], "rows[0].features must be a list of 16 numbers"),
    ([{"features": [1.0] * 3, "prediction": "A"}], "rows[0].features has 3 values; the reference set has 16"),
    ([{"features": [1.0] * 15 + ["x"], "prediction": "A"}], "rows[0].features[15] must be a finite number"),
    ([{"features": [1.0] * 15 + [True], "prediction": "A"}], "rows[0].features[15] must be a finite number"),
    ([{"features": [math.nan] * 16, "prediction": "A"}], "rows[0].features[0] must be a finite number"),
    ([{"features": [0.0] * 16}], "rows[0].prediction must be a non-empty label path"),
    ([{"features": [0.0] * 16, "prediction": "A", "score": "high"}], "rows[0].score must be a number"),
]


@pytest.mark.parametrize("rows,needle", BAD_ROWS, ids=[n for _, n in BAD_ROWS])
def test_detector_refuses_bad_rows_and_adds_none(rows, needle):
    detector = DriftDetector(reference_frame(n=50), min_rows=5)
    if isinstance(rows, list):  # after two good rows, which must not be added either
        rows, needle = live_rows(2, seed=5) + rows, needle.replace("rows[0]", "rows[2]")
    with pytest.raises(ValueError, match=re.escape(needle)):
        detector.add(rows)
    assert len(detector) == 0 and detector.received == 0


@pytest.mark.parametrize("change,needle", [
    (lambda f: f.drop(columns=["prediction"]), 'no "prediction" column'),
    (lambda f: f.drop(columns=["3"]), 'column "3" is missing'),
    (lambda f: f[[c for c in f.columns if not c.isdigit()]], "no feature columns"),
    (lambda f: f.head(2), "at least 5 are needed"),
])
def test_detector_refuses_a_bad_reference(change, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        DriftDetector(change(reference_frame(n=50)))


def test_detector_is_thread_safe_and_writes_an_html_report(tmp_path):
    detector = DriftDetector(reference_frame(), window_size=150, min_rows=20)
    errors = []

    def feed(seed):
        try:
            for i in range(20):
                detector.add(live_rows(5, seed=seed * 100 + i))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=feed, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        detector.compute()  # concurrently with the adds
    for t in threads:
        t.join()
    assert not errors and detector.received == 400 and len(detector) == 150

    report = detector.report_html(tmp_path / "out" / "drift.html")
    html = report.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>") and "Drift" in html
    assert sorted(p.name for p in report.parent.iterdir()) == ["drift.html"]  # no temporary file left
    with pytest.raises(ValueError, match="at least 20"):
        DriftDetector(reference_frame(), min_rows=20).report_html(tmp_path / "empty.html")


# -- the service -----------------------------------------------------------------------------------
def test_metric_names_on_metrics(monitor):
    ingest(monitor, live_rows(5, seed=6))
    values = metric_values(monitor)
    for name in GAUGES + [COUNTER]:
        assert labelled(name) in values, sorted(values)
    assert values[labelled(COUNTER)] >= 5
    assert not any("pid=" in key for key in values), sorted(values)  # one worker: no per-process series


def test_monitor_sees_no_drift_then_drift(monitor):
    answer = ingest(monitor, live_rows(WINDOW, seed=7))
    assert answer == {"received": 100, "window_rows": WINDOW}  # the last batch of 100; the window is full
    result = drift(monitor)
    assert result["window_rows"] == WINDOW and result["features_tested"] == N_FEATURES
    assert result["dataset_drift"] is False and result["prediction_drift"] is False, result
    assert result["drift_share"] < 0.5 and result["prediction_drift_score"] >= 0.05
    values = metric_values(monitor)
    assert values[labelled("ktt_dataset_drift")] == 0.0
    assert values[labelled("ktt_prediction_drift")] == 0.0
    assert values[labelled("ktt_monitor_window_rows")] == WINDOW
    assert values[labelled("ktt_drift_share")] == pytest.approx(result["drift_share"])

    ingest(monitor, live_rows(WINDOW, seed=8, shift=3.0, label=LABELS[-1]))
    # The background thread (every second) updates the gauges without a call to /drift.
    values = wait_for(lambda: (v := metric_values(monitor))[labelled("ktt_dataset_drift")] == 1.0 and v,
                      what="ktt_dataset_drift 1.0 on /metrics")
    assert values[labelled("ktt_prediction_drift")] == 1.0
    assert values[labelled("ktt_drift_share")] == 1.0
    assert values[labelled("ktt_drifted_columns")] == N_FEATURES
    assert values[labelled("ktt_prediction_drift_score")] < 0.05
    result = drift(monitor)
    assert result["dataset_drift"] is True and result["prediction_drift"] is True
    assert result["drifted_columns"] == N_FEATURES and result["drift_share"] == 1.0


def test_report_endpoint_writes_the_html_report(monitor, reference_path):
    ingest(monitor, live_rows(60, seed=9))
    response = httpx.post(f"{monitor}/report", timeout=120)
    assert response.status_code == 200, response.text
    path = Path(response.json()["path"])
    assert path == reference_path.parent / "drift_report.html" and path.stat().st_size > 1000


ROW = {"features": [0.0] * N_FEATURES, "prediction": "Food > Fruit"}
BAD_BODIES = [  # (raw body, text expected in the answer)
    (b'{"rows": ', "Invalid JSON"),
    (b"{}", 'send {"rows"'),
    (b'{"rows": "abc"}', '"rows" must be a list'),
    (json.dumps({"rows": [{"prediction": "A"}]}).encode(), 'rows[0] has no "features"'),
    (json.dumps({"rows": [ROW, {**ROW, "features": [1.0] * 3}]}).encode(),
     "rows[1].features has 3 values; the reference set has 16"),
    (json.dumps({"rows": [{**ROW, "features": [0.0] * 15 + ["x"]}]}).encode(),
     "rows[0].features[15] must be a finite number"),
    (json.dumps({"rows": [{"features": ROW["features"]}]}).encode(), "rows[0].prediction must be a non-empty"),
    (json.dumps({"rows": [ROW], "colour": "red"}).encode(), "colour"),
    (json.dumps({"rows": [{}] * 10_001}).encode(), "at most 10000 per request"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES, ids=[n for _, n in BAD_BODIES])
def test_bad_ingest_bodies_get_a_clear_400_and_add_nothing(monitor, body, needle):
    before = metric_values(monitor)[labelled(COUNTER)]
    response = httpx.post(f"{monitor}/ingest", content=body, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 400, response.text
    assert needle in str(response.json()), response.text  # the message, JSON escapes undone
    assert metric_values(monitor)[labelled(COUNTER)] == before
    assert httpx.get(f"{monitor}/readyz", timeout=10).status_code == 200


# -- MonitorClient ---------------------------------------------------------------------------------
def test_client_delivers_rows_to_the_monitor(monitor):
    before_received = metric_values(monitor)[labelled(COUNTER)]
    before_window = drift(monitor)["window_rows"]
    sent = []
    client = MonitorClient(monitor, batch_size=32, on_sent=sent.append)
    try:
        for start in range(0, 100, 10):
            client.send(live_rows(10, seed=100 + start))
        wait_for(lambda: client.stats()["sent"] == 100, what="100 rows sent")
    finally:
        client.close()
    assert client.stats() == {"sent": 100, "dropped": 0, "queued": 0} and sum(sent) == 100
    assert metric_values(monitor)[labelled(COUNTER)] == before_received + 100
    assert drift(monitor)["window_rows"] == min(before_window + 100, WINDOW)


def test_client_with_nothing_listening_never_blocks_and_counts_drops():
    dropped = []
    client = MonitorClient(f"http://127.0.0.1:{free_port()}", queue_size=100, on_dropped=dropped.append)
    row = live_rows(1, seed=11)
    try:
        for _ in range(1000):  # queued, never blocking on the unreachable monitor
            client.send(row)
        wait_for(lambda: client.stats()["dropped"] == 1000, what="1000 rows dropped")
    finally:
        client.close(timeout=5)
    assert client.stats() == {"sent": 0, "dropped": 1000, "queued": 0} and sum(dropped) == 1000


def test_client_tiny_queue_overflows_and_counts_drops(monitor):
    before = metric_values(monitor)[labelled(COUNTER)]
    client = MonitorClient(monitor, queue_size=5, batch_size=5)
    try:
        client.send(live_rows(1000, seed=12))   # returns at once: a full queue drops, never waits
        assert client.stats()["dropped"] >= 900
        wait_for(lambda: client.stats()["queued"] == 0 and sum(client.stats().values()) == 1000,
                 what="every row sent or dropped")
    finally:
        client.close()
    stats = client.stats()
    assert stats["sent"] + stats["dropped"] == 1000 and stats["sent"] > 0
    assert metric_values(monitor)[labelled(COUNTER)] == before + stats["sent"]


# -- `ktt monitor` -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_ws(tmp_path_factory, tiny_encoder, synthetic_csv, bento_home) -> Path:
    """A workspace with `shop` imported and a 1-epoch db_linear run with a reference set."""
    ws = tmp_path_factory.mktemp("monitoring") / "ws"
    runner = CliRunner()
    for args in (["import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > "],
                 ["train", "db_linear", "shop", "--epochs", 1, "--reference", "--set", f"encoder={tiny_encoder}"]):
        result = runner.invoke(cli, ["--workspace", str(ws), *map(str, args)])
        assert result.exit_code == 0, result.output
    return ws


@pytest.fixture
def workspace(trained_ws) -> Path:
    """The `ktt` fixture of conftest.py runs in this module's trained workspace."""
    return trained_ws


def test_ktt_monitor_errors_are_one_line(ktt, trained_ws, tmp_path):
    run = next((trained_ws / "runs" / "db_linear" / "shop").iterdir())
    bare = tmp_path / "bare-run"
    bare.mkdir()
    shutil.copy(run / "best.pt", bare / "best.pt")
    assert_clean_error(ktt("monitor", "db_linear", "shop", "--run", bare, expect=None),
                       f"run {bare} has no reference set: train with --reference")
    assert_clean_error(ktt("monitor", "db_linear", "shop", "--reference", tmp_path / "nope.parquet", expect=None),
                       "nope.parquet: no such file")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet\n")
    assert_clean_error(ktt("monitor", "db_linear", "shop", "--reference", text, expect=None),
                       "not a readable parquet file")
    no_prediction = tmp_path / "no_prediction.parquet"
    pd.read_parquet(run / "reference.parquet").drop(columns=["prediction"]).to_parquet(no_prediction)
    assert_clean_error(ktt("monitor", "db_linear", "shop", "--reference", no_prediction, expect=None),
                       'not a KTT reference set: no "prediction" column')
    assert_clean_error(ktt("monitor", "db_linear", "other", expect=None), "no trained run of db_linear on other")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_clean_error(ktt("monitor", "db_linear", "shop", "--port", port, expect=None),
                           f"port {port} on 127.0.0.1 is in use by another process; pick another with --port")


def test_ktt_monitor_serves_until_stopped_and_the_client_survives(trained_ws, tmp_path):
    run = next((trained_ws / "runs" / "db_linear" / "shop").iterdir())
    reference = pd.read_parquet(run / "reference.parquet")
    width = sum(c.isdigit() for c in reference.columns)
    rows = [{"features": reference.loc[i, [str(j) for j in range(width)]].astype(float).tolist(),
             "prediction": reference.loc[i, "prediction"], "score": 0.5} for i in range(len(reference))]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "ktt-monitor.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ktt_core", "--workspace", str(trained_ws), "monitor",
                                "db_linear", "shop", "--port", str(port), "--window", "50"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = MonitorClient(url, batch_size=8, timeout=0.5)
    try:
        wait_ready(process, url, timeout=120)
        # `ktt monitor` says "ready" once it waits for Ctrl-C/SIGTERM (and will stop its child).
        wait_for(lambda: "ready: POST" in (tmp_path / "ktt-monitor.log").read_text(), what="ktt monitor ready")
        client.send(rows)
        wait_for(lambda: client.stats()["sent"] == len(rows), what="the reference rows sent")
        assert drift(url)["window_rows"] == min(len(rows), 50)

        os.killpg(process.pid, signal.SIGTERM)  # as Ctrl-C / docker stop: the monitor goes away
        assert process.wait(30) == 0
        started = time.perf_counter()
        for _ in range(200):
            client.send(rows[:5])
        assert time.perf_counter() - started < 0.5
        wait_for(lambda: client.stats()["dropped"] == 1000 and client.stats()["queued"] == 0,
                 what="rows dropped while the monitor is down")
        assert client.stats()["sent"] == len(rows)
    finally:
        client.close(timeout=2)
        stop_service(process)
        log.close()
    output = (tmp_path / "ktt-monitor.log").read_text()
    assert f"drift monitor of db_linear on {url}" in output and "ready: POST" in output, output
