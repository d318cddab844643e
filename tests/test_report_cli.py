"""`ktt report` end to end: every installed model (transformer heads, TF-IDF, an ensemble)
trained for real on a small dataset, its report written into the run and rendered by
headless Chromium."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import cli_in
from test_report_browser import chromium, run_chromium

from ktt_core.plugins import get_plugins

SECTIONS = ("summary", "levels", "classes", "confusions", "errors", "calibration", "thresholds", "training")


def installed_models() -> list[str]:
    return sorted(get_plugins().models)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, synthetic_csv, tiny_encoder):
    """`shop`, and one run of every installed model on it (the ensemble: db_linear + tfidf_lsgd)."""
    from ktt_core.config import defaults_for

    workspace = tmp_path_factory.mktemp("report-cli") / "ws"
    ktt = cli_in(workspace)
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    plugins = get_plugins()
    for name in installed_models():
        if name == "ensemble":
            continue
        defaults = defaults_for(plugins.model(name))
        options = ["--set", "min_df=1"] if "min_df" in defaults else []
        if "encoder" in defaults:
            options = ["--epochs", "2", "--set", f"encoder={tiny_encoder}", "--set", "train_batch_size=16",
                       "--set", "scheduler=constant"]
        ktt("train", name, "shop", *options)
    if "ensemble" in installed_models():
        ktt("train", "ensemble", "shop", "--set", "members=db_linear,tfidf_lsgd")
    return workspace, ktt


@pytest.mark.parametrize("model", installed_models())
def test_report_of_every_model(zoo, model):
    workspace, ktt = zoo
    out = ktt("report", model, "shop").output
    path = Path(re.search(r"report: (\S+)", out).group(1))
    run = max((workspace / "runs" / model / "shop").iterdir())
    assert path == run / "report-test.html"
    page = path.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert f"{model} on shop" in page
    assert page.count("<svg") >= 3                         # reliability, sweep, training (or peers)
    assert "http://" not in page and "https://" not in page   # self-contained
    ktt("test", model, "shop")
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert f"{metrics['exact_path_accuracy'] * 100:.1f}%" in page   # the headline is the test metric


def test_peers_from_a_quality_benchmark_are_shown(zoo):
    workspace, ktt = zoo
    reports = workspace / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "quality-shop.json").write_text(json.dumps([
        {"name": "TF-IDF + LogisticRegression (flat over paths)", "kind": "peer",
         "exact_path_accuracy": 0.5, "hierarchical_f1": 0.6}]))
    ktt("report", "tfidf_lsgd", "shop", "--output", workspace / "r.html")
    page = (workspace / "r.html").read_text(encoding="utf-8")
    assert "TF-IDF + LogisticRegression (flat over paths)" in page and "tfidf_lsgd (this report)" in page
    bad = workspace / "bad.json"
    bad.write_text("{not json")
    result = ktt("report", "tfidf_lsgd", "shop", "--peers", bad, expect=1)
    assert "bad.json" in result.output and "Traceback" not in result.output


def test_a_real_report_renders_in_chromium(zoo, tmp_path):
    workspace, ktt = zoo
    chromium()
    ktt("report", "ensemble", "shop", "--output", tmp_path / "ensemble.html")
    dom = run_chromium(tmp_path, "--dump-dom", (tmp_path / "ensemble.html").as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body and 'data-errors="0"' in body
    for table_id in ("levels-table", "classes-table", "thresholds-table"):  # errors: none on easy data
        assert f'id="{table_id}"' in dom
    run_chromium(tmp_path, f"--screenshot={tmp_path / 'shot.png'}", (tmp_path / "ensemble.html").as_uri())
    assert (tmp_path / "shot.png").stat().st_size > 20_000
