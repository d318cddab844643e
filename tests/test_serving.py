"""Export to the BentoML model store, a real `ktt serve` on 127.0.0.1, its API, metrics and load.

One trained tiny model and one server (with the drift monitor) serve the whole module; the
server is stopped by the fixture, whatever the tests do.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import synthetic_rows
from helpers import assert_clean_error, environment

REPO = Path(__file__).resolve().parents[1]
HTTP_CASES = sorted((REPO / "tests" / "bad_inputs" / "http").glob("*.json"))
MODEL = "db_linear"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ktt_cli(ws: Path, *args, check=True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(ws), *map(str, args)],
                          capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"ktt {' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def bento_env(tmp_path_factory):
    """A private BentoML home for this module, in this process and its children."""
    with environment(BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml-home")), BENTOML_DO_NOT_TRACK="true"):
        yield os.environ["BENTOML_HOME"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder, bento_env):
    """A workspace with `shop` imported and a tiny db_linear trained with a reference set."""
    ws = tmp_path_factory.mktemp("serving") / "ws"
    csv = ws.parent / "products.csv"
    synthetic_rows(400).to_csv(csv, index=False)
    ktt_cli(ws, "import", csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt_cli(ws, "train", MODEL, "shop", "--epochs", 3, "--reference", "--set", f"encoder={tiny_encoder}",
            "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16")
    # Training may keep raw scores on 40 validation rows (no fit beats the noise); a known,
    # level-specific calibration makes "thresholds compare calibrated scores" testable.
    from ktt_core.calibration import Calibration
    from ktt_core.checkpoint import set_calibration

    run = max((ws / "runs" / MODEL / "shop").iterdir())
    set_calibration(run / "best.pt", Calibration("per-level", [1.6, 2.2], "set by the test"))
    return ws


#: Texts whose served, torch and ONNX answers are compared under one threshold.
THRESHOLD_TEXTS = ["edible apple new", "household pan small", "playful doll red", "edible bread premium",
                   "household shovel", "playful jigsaw board game for the family", "apple pan doll",
                   "premium small red", "edible cheese", "playful ball", "household lamp new", "bread doll"]


def prediction_lines(ws: Path, texts: list[str], *options) -> list[dict]:
    out = ktt_cli(ws, "predict", MODEL, "shop", *texts, "--json", *options).stdout.splitlines()
    return [json.loads(line) for line in out]


@pytest.fixture(scope="module")
def threshold(trained):
    """A threshold that cuts some of THRESHOLD_TEXTS short and not others: the median of their
    calibrated level-2 confidences."""
    import numpy as np

    scores = [p["levels"][1]["score"] for p in prediction_lines(trained, THRESHOLD_TEXTS)]
    return round(float(np.median(scores)), 6)


@pytest.fixture(scope="module")
def server(trained, threshold):
    """`ktt serve --monitoring --threshold T` in a child process; yields (service URL, monitor
    URL, process)."""
    port, monitor_port = free_port(), free_port()
    log = open(trained.parent / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ktt_core", "--workspace", str(trained), "serve", MODEL, "shop",
         "--host", "127.0.0.1", "--port", str(port), "--monitoring", "--monitor-port", str(monitor_port),
         "--max-latency-ms", "1000", "--threshold", str(threshold)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        from ktt_core.serving.launch import wait_ready

        wait_ready(process, url, timeout=240)
        yield url, f"http://127.0.0.1:{monitor_port}", process
    finally:
        from ktt_core.serving.launch import stop_service

        stop_service(process, grace=30)
        log.close()
    assert process.returncode is not None


def error_text(answer: httpx.Response) -> str:
    """Every string in an error answer, unescaped (BentoML wraps messages in JSON)."""
    try:
        data = answer.json()
    except ValueError:
        return answer.text
    strings = []

    def walk(value):
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return " | ".join(strings)


def predict(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=60, **kwargs)


def offline_paths(ws: Path, texts: list[str], *options) -> list[list[str]]:
    return [p["path"] for p in prediction_lines(ws, texts, *options)]


def test_predict_one_and_many_texts_as_the_cli_does(server, trained, threshold):
    url, _, _ = server
    texts = ["edible apple new", "household pan small", "playful doll red", "edible bread premium"]
    one = predict(url, {"text": texts[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model"] == MODEL and len(body["predictions"]) == 1
    first = body["predictions"][0]
    assert first["text"] == texts[0] and "top_k" not in first
    assert [lv["label"] for lv in first["levels"]] == first["path"] and first["label"] == " > ".join(first["path"])
    scores = [lv["score"] for lv in first["levels"]]
    assert scores == sorted(scores, reverse=True)

    many = predict(url, {"texts": texts, "top_k": 3}).json()["predictions"]
    assert [p["text"] for p in many] == texts
    assert [p["path"] for p in many] == offline_paths(trained, texts, "--threshold", threshold)
    for p in many:
        scores = [alt["score"] for alt in p["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert p["top_k"][0]["path"][:len(p["path"])] == p["path"]


def test_thresholds_on_calibrated_scores_agree_across_torch_onnx_and_server(server, trained, threshold):
    """One threshold, three runtimes (torch checkpoint, ONNX export, the served model): the
    same paths cut at the same levels, and the scores compared are the calibrated ones."""
    from ktt_core.checkpoint import load_checkpoint

    url, _, _ = server
    run = sorted((trained / "runs" / MODEL / "shop").iterdir())[-1]
    calibration = load_checkpoint(run / "best.pt")["calibration"]
    assert calibration["method"] == "per-level" and calibration["temperatures"] == [1.6, 2.2]

    served = [p["path"] for p in predict(url, {"texts": THRESHOLD_TEXTS}).json()["predictions"]]
    with_torch = offline_paths(trained, THRESHOLD_TEXTS, "--threshold", threshold)
    export = trained.parent / "threshold-export"
    ktt_cli(trained, "export", MODEL, "shop", "--onnx", "--output", export)
    assert json.loads((export / "onnx" / "ktt.json").read_text())["calibration"] == calibration
    with_onnx = offline_paths(trained, THRESHOLD_TEXTS, "--threshold", threshold, "--onnx", export / "onnx")
    assert served == with_torch == with_onnx
    lengths = {len(path) for path in served}
    assert lengths == {1, 2}, f"threshold {threshold} should cut some paths and keep others: {served}"

    calibrated = prediction_lines(trained, THRESHOLD_TEXTS)
    raw = prediction_lines(trained, THRESHOLD_TEXTS, "--no-calibration")
    assert [p["path"] for p in calibrated] == [p["path"] for p in raw]   # calibration never moves the best path
    assert any(abs(a["levels"][1]["score"] - b["levels"][1]["score"]) > 1e-4 for a, b in zip(calibrated, raw))
    raw_onnx = prediction_lines(trained, THRESHOLD_TEXTS, "--no-calibration", "--onnx", export / "onnx")
    for a, b in zip(raw, raw_onnx):
        assert abs(a["levels"][1]["score"] - b["levels"][1]["score"]) < 1e-4


BAD_BODIES = [  # (raw body, status, text expected in the answer)
    (b'{"text": ', 400, "Invalid JSON"),
    (b'{"text": 42}', 400, '"text" must be a string'),
    (b'{"text": "  "}', 400, '"text" is empty'),
    (b'{"texts": "abc"}', 400, '"texts" must be a list'),
    (b'{"texts": []}', 400, '"texts" is empty'),
    (b'{"texts": ["ok", 3]}', 400, '"texts[1]" must be a string'),
    (b'{}', 400, 'send either "text"'),
    (b'{"text": "a", "texts": ["b"]}', 400, 'send either "text"'),
    (json.dumps({"text": "x" * 10_001}).encode(), 400, "at most 10000"),
    (json.dumps({"texts": ["a"] * 257}).encode(), 400, "at most 256"),
    (b'{"text": "a", "top_k": 0}', 400, '"top_k" must be an integer from 1 to 10'),
    (b'{"text": "a", "top_k": "3"}', 400, '"top_k" must be an integer'),
]


@pytest.mark.parametrize("body,status,needle", BAD_BODIES, ids=[b[:24].decode(errors="replace") for b, _, _ in BAD_BODIES])
def test_bad_requests_get_a_clear_4xx_and_serving_goes_on(server, body, status, needle):
    url, _, _ = server
    answer = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == status, answer.text
    assert needle in error_text(answer)
    assert predict(url, {"text": "edible apple"}).status_code == 200


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.stem for c in HTTP_CASES])
def test_bad_input_corpus_http_cases(server, case):
    url, _, _ = server
    spec = json.loads(case.read_text())
    answer = httpx.post(f"{url}/predict", content=spec["body"].encode("utf-8", "surrogateescape"),
                        headers={"content-type": spec.get("content_type", "application/json")}, timeout=30)
    assert answer.status_code == spec["status"], (case.name, answer.text)
    assert spec["needle"] in error_text(answer), (case.name, answer.text)
    assert predict(url, {"text": "edible apple"}).status_code == 200


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_health_metrics_and_adaptive_batching(server):
    url, _, _ = server
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/livez").status_code == 200

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{url}/predict", json={"text": f"playful doll {i}"})
                                          for i in range(64)))

    import asyncio

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers)
    metrics = httpx.get(f"{url}/metrics").text
    predicted = metric_values(metrics, "ktt_predictions_total")
    assert sum(predicted.values()) >= 64
    assert any('label="Toys > Dolls"' in labels for labels in predicted)
    assert sum(metric_values(metrics, "ktt_request_latency_seconds_count").values()) >= 64
    # Concurrent requests were batched: the model saw fewer calls than texts.
    sizes = metric_values(metrics, "ktt_batch_size_sum")
    calls = metric_values(metrics, "ktt_batch_size_count")
    assert sum(sizes.values()) / sum(calls.values()) > 1.5, (sizes, calls)


@pytest.mark.parametrize("layout, workers", [("split", 1), ("single", 2)])
def test_other_layouts_serve_the_same_answers(trained, layout, workers):
    """`ktt serve --layout split` (BentoML's API + runner services) and `--workers 2` (two
    serving processes, a model copy each) answer as `ktt predict` does and batch concurrent
    requests."""
    import asyncio

    import psutil

    from ktt_core.serving.launch import process_tree, stop_service, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A BentoML home of its own: every `bentoml serve` empties its home's Prometheus folder,
    # which would take the module's server's metrics away (docs/serving.md, caveats).
    env = {**os.environ, "BENTOML_HOME": str(trained.parent / f"bentoml-{layout}-{workers}")}
    with open(trained.parent / f"serve-{layout}-{workers}.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ktt_core", "--workspace", str(trained), "serve", MODEL, "shop",
             "--host", "127.0.0.1", "--port", str(port), "--layout", layout, "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            wait_ready(process, url, timeout=240)
            expected = {p["text"]: p["path"] for p in prediction_lines(trained, THRESHOLD_TEXTS)}

            async def burst():
                async with httpx.AsyncClient(timeout=60) as client:
                    return await asyncio.gather(*(client.post(f"{url}/predict", json={"text": t})
                                                  for t in THRESHOLD_TEXTS * 4))

            answers = asyncio.run(burst())
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            for answer in answers:
                [p] = answer.json()["predictions"]
                assert p["path"] == expected[p["text"]], p
            metrics = httpx.get(f"{url}/metrics").text
            calls = sum(metric_values(metrics, "ktt_batch_size_count").values())
            assert 0 < calls < len(answers)  # concurrent requests shared model calls
            services = []
            for proc in process_tree(process.pid):
                try:
                    if "_bentoml_impl.worker.service" in " ".join(proc.cmdline()):
                        services.append(proc)
                except psutil.NoSuchProcess:
                    continue
            if layout == "split":
                assert metric_values(metrics, "bentoml_service_adaptive_batch_size_count")  # BentoML's batching
                assert len(services) == 2  # the API and the runner
            else:
                assert len(services) == workers
        finally:
            stop_service(process, grace=30)


def test_monitor_receives_the_served_rows(server):
    url, monitor_url, _ = server
    for i in range(10):
        predict(url, {"texts": [f"edible juice {i}-{j}" for j in range(10)]})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received = metric_values(httpx.get(f"{monitor_url}/metrics").text, "ktt_monitor_rows_received_total")
        if sum(received.values()) >= 100:
            break
        time.sleep(0.5)
    assert sum(received.values()) >= 100
    drift = httpx.post(f"{monitor_url}/drift", json={}, timeout=60).json()
    assert drift["window_rows"] >= 100
    sent = metric_values(httpx.get(f"{url}/metrics").text, "ktt_monitor_rows_sent_total")
    assert sum(sent.values()) >= 100


def test_compose_dashboard_queries_name_metrics_the_services_expose(server, trained):
    url, monitor_url, _ = server
    out = ktt_cli(trained, "export", MODEL, "shop", "--bento", "--monitoring", "--output", trained.parent / "exp")
    compose_dir = trained.parent / "exp" / "compose"
    assert "docker-compose stack written" in out.stdout
    compose = yaml.safe_load((compose_dir / "docker-compose.yaml").read_text())
    assert {"ktt", "monitor", "prometheus", "grafana"} <= set(compose["services"])
    assert compose["services"]["ktt"]["environment"]["KTT_MONITOR_URL"].startswith("http://monitor:")
    prometheus = yaml.safe_load((compose_dir / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"ktt:3000", "monitor:3001"}
    datasource = yaml.safe_load((compose_dir / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert yaml.safe_load((compose_dir / "grafana/provisioning/dashboards/ktt.yaml").read_text())["providers"]
    assert (compose_dir / "reference.parquet").is_file()

    # Every metric a dashboard query names is exposed by the live service or monitor.
    exposed = set()
    for text in (httpx.get(f"{url}/metrics").text, httpx.get(f"{monitor_url}/metrics").text):
        exposed |= {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M)}
    dashboard = json.loads((compose_dir / "grafana" / "dashboards" / f"{MODEL}.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\b(ktt_[a-z_]+|bentoml_[a-z_]+)\b", target["expr"]))
            assert names, target
            queried |= names
    assert queried - exposed == set(), f"dashboard queries unknown metrics: {sorted(queried - exposed)}"


def test_stored_model_holds_safe_files_and_refuses_a_pickle(trained, bento_env, tmp_path):
    import bentoml

    out = ktt_cli(trained, "export", MODEL, "shop", "--bento").stdout
    tag = re.search(r"BentoML model saved: (\S+)", out).group(1)
    again = ktt_cli(trained, "export", MODEL, "shop", "--bento").stdout
    assert tag in again  # the same checkpoint is not stored twice
    folder = Path(bentoml.models.get(tag).path)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert {"checkpoint.pt", "hierarchy.json", "ktt.json", "reference.parquet"} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))]

    from ktt_core.errors import KttError
    from ktt_core.export.bento import load_predictor

    predictor = load_predictor(folder)
    predictions, features = predictor.run(["edible apple"])
    assert predictions.path_probs.shape[0] == 1 and features.shape[0] == 1

    # A stored model whose checkpoint was swapped for a pickle bomb is refused, unexecuted.
    import pickle
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tampered / "checkpoint.pt").write_bytes(pickle.dumps({"format": "ktt-checkpoint", "x": Bomb()}))
    with pytest.raises(KttError, match="checkpoint.pt"):
        load_predictor(tampered)
    # Even with ktt.json and the manifest forged to match, the pickle is not unpickled.
    from ktt_core.manifest import write_manifest

    info = json.loads((tampered / "ktt.json").read_text())
    info["checkpoint_sha256"] = __import__("hashlib").sha256((tampered / "checkpoint.pt").read_bytes()).hexdigest()
    (tampered / "ktt.json").write_text(json.dumps(info))
    write_manifest(tampered, ignore=("model.yaml",))
    with pytest.raises(KttError, match="checkpoint.pt"):
        load_predictor(tampered)
    assert not marker.exists()


def test_build_bento_offline(trained, bento_env):
    import bentoml

    out = ktt_cli(trained, "export", MODEL, "shop", "--bento", "--build", "--output", trained.parent / "b").stdout
    bento_tag = re.search(r"Bento built: (\S+)", out).group(1)
    bento = bentoml.get(bento_tag)
    assert bento.tag.name == "ktt-db-linear"
    bentofile = yaml.safe_load((trained.parent / "b" / "bento" / "bentofile.yaml").read_text())
    assert bentofile["python"]["lock_packages"] is False
    assert any(p.startswith("torch==") for p in bentofile["python"]["packages"])
    assert any("ktt_db_linear" in w for w in bentofile["python"]["wheels"])
    assert [m for m in bento.info.models if m.tag.name == "ktt-db_linear-shop"]


def test_export_and_serve_errors(ktt, workspace):
    assert_clean_error(ktt("export", MODEL, "shop", expect=None), "--onnx and/or --bento")
    assert_clean_error(ktt("export", MODEL, "shop", "--onnx", "--build", expect=None), "go with --bento")
    assert_clean_error(ktt("serve", "no_such_model", "shop", expect=None), "no_such_model")


def test_load_with_bad_requests_and_the_monitor_killed_midway(trained, tmp_path):
    """The reliability run: 2,000 requests at concurrency 32, 10% malformed, monitor killed halfway."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_load

    report = tmp_path / "load.json"
    code = serve_load.main([MODEL, "shop", "--workspace", str(trained), "--requests", "2000",
                            "--concurrency", "32", "--bad-share", "0.1", "--monitoring",
                            "--stop-monitor-at", "0.5", "--json", str(report)])
    result = json.loads(report.read_text())
    assert code == 0, result
    assert result["server_errors_5xx"] == 0 and result["transport_errors"] == 0
    assert result["wrong_answers"] == 0 and result["bad_requests_not_4xx"] == 0
    assert result["status"].get("200", 0) == result["good_requests"]
    assert result["monitor_stopped_after"] is not None
    assert result["rss_growth"] < 0.10, result


def test_stored_model_with_onnx_serves_the_same_paths(trained, bento_env):
    """`ktt export --bento --onnx` stores the ONNX export; the runner's onnx runtime agrees with torch."""
    import bentoml
    import numpy as np

    from ktt_core.export.bento import load_predictor

    out = ktt_cli(trained, "export", MODEL, "shop", "--bento", "--onnx", "--output", trained.parent / "o").stdout
    tag = re.search(r"BentoML model saved: (\S+)", out).group(1)
    folder = Path(bentoml.models.get(tag).path)
    assert (folder / "onnx" / "model.onnx").is_file()
    texts = ["edible apple new", "household shovel", "playful jigsaw board game for the family"]
    torch_predictions, torch_features = load_predictor(folder, "torch").run(texts)
    onnx_predictions, onnx_features = load_predictor(folder, "onnx").run(texts)
    assert np.array_equal(torch_predictions.level_ids, onnx_predictions.level_ids)
    assert np.allclose(torch_predictions.path_probs, onnx_predictions.path_probs, atol=1e-4)
    assert np.allclose(torch_features, onnx_features, atol=1e-4)
