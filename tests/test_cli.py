"""End to end through the CLI: import, train, test, predict, and bad input."""
from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from helpers import assert_clean_error

from ktt_core.checkpoint import load_checkpoint


def test_import_writes_splits_hierarchy_and_report(ktt, synthetic_csv, workspace):
    out = ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ").output
    folder = workspace / "datasets" / "shop"
    splits = {s: pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 400
    assert len(splits["val"]) == pytest.approx(40, abs=8) and len(splits["test"]) == pytest.approx(40, abs=8)
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])
    assert list(splits["train"]["path"].iloc[0])[0] in {"Food", "Home", "Toys"}
    hierarchy = json.loads((folder / "hierarchy.json").read_text())
    assert [len(level) for level in hierarchy["levels"]] == [3, 8]
    assert "rows read: 400, kept: 400" in out and "level 1: 3, level 2: 8" in out
    assert json.loads((folder / "import.json").read_text())["report"]["kept"] == 400


def test_import_from_real_sqlite_database(ktt, tmp_path, workspace):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE products (title TEXT, cat1 TEXT, cat2 TEXT)")
        con.executemany("INSERT INTO products VALUES (?, ?, ?)",
                        [(f"item {i}", "Food" if i % 2 else "Home", f"sub{i % 4}" if i % 5 else None)
                         for i in range(60)])
    ktt("import", "shop", "--sql-url", f"sqlite:///{db}", "--query", "SELECT * FROM products",
        "--text", "title", "--labels", "cat1,cat2")
    folder = workspace / "datasets" / "shop"
    rows = pd.concat(pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "val", "test"))
    assert len(rows) == 60
    assert sorted({len(p) for p in rows["path"]}) == [1, 2]  # rows with no cat2 keep one level


def test_train_test_predict_end_to_end(ktt, trained, workspace):
    assert {"best.pt", "metrics.jsonl", "config.json", "training.png"} <= {p.name for p in trained.iterdir()}
    assert not (trained / "last.pt").exists()  # a finished run keeps best.pt only (--keep-last keeps it)
    assert (trained / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epochs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]

    result = ktt("test", "db_linear", "shop", "--json")
    metrics = json.loads(result.output)
    # 8 leaves: chance is 1/8; the keywords make the task learnable
    assert metrics["exact_path_accuracy"] > 0.6
    assert metrics["level_1_accuracy"] >= metrics["exact_path_accuracy"]
    assert metrics["consistency_rate"] == 1.0
    for key in ("level_2_macro_f1", "leaf_weighted_precision", "hierarchical_f1", "leaf_auprc_micro"):
        assert 0 <= metrics[key] <= 1
    assert json.loads((trained / "test_metrics.json").read_text())["exact_path_accuracy"] == \
        metrics["exact_path_accuracy"]

    out = ktt("predict", "db_linear", "shop", "edible apple new", "--top-k", "3", "--json").output
    prediction = json.loads(out)
    assert prediction["path"] == ["Food", "Fruit"]
    assert len(prediction["top_k"]) == 3
    scores = [p["score"] for p in prediction["top_k"]]
    assert scores == sorted(scores, reverse=True)
    assert prediction["levels"][0]["score"] >= prediction["levels"][1]["score"]
    # a threshold no level-2 score reaches keeps only the top level, and is scored fairly (raw
    # scores: calibrated ones of a model that gets all validation rows right may round to 1.0)
    raw = ("--no-calibration", "--threshold", "1.0")
    cut = json.loads(ktt("predict", "db_linear", "shop", "edible apple new", "--json", *raw).output)
    assert cut["path"] == ["Food"] and len(cut["levels"]) == 1
    partial = json.loads(ktt("test", "db_linear", "shop", "--json", *raw).output)
    assert partial["exact_path_accuracy"] == 0.0 and partial["hierarchical_precision"] >= partial["level_1_accuracy"] - 1e-9
    assert partial["hierarchical_recall"] < metrics["hierarchical_recall"]
    per_level = json.loads(ktt("test", "db_linear", "shop", "--json", "--decoding", "per-level").output)
    assert 0 <= per_level["consistency_rate_per_level"] <= 1 and per_level["consistency_rate_consistent"] == 1.0
    human = ktt("predict", "db_linear", "shop", "playful jigsaw", "--top-k", "2").output
    assert "Toys (" in human and "1. Toys > Puzzles" in human


def test_checkpoint_rebuilds_the_exact_model(trained, ktt):
    checkpoint = load_checkpoint(trained / "best.pt")
    assert checkpoint["model"] == "db_linear"
    assert checkpoint["optimizer"] is None, "best.pt holds the weights only (last.pt, for resuming, the rest)"
    a = ktt("predict", "db_linear", "shop", "household pan", "--json", "--checkpoint", trained / "best.pt").output
    b = ktt("predict", "db_linear", "shop", "household pan", "--json", "--run", trained).output
    assert json.loads(a) == json.loads(b)


def test_dry_run_writes_nothing(ktt, synthetic_csv, tiny_encoder, workspace):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    out = ktt("train", "db_linear", "shop", "--dry-run", "--set", f"encoder={tiny_encoder}").output
    assert "dry run" in out and "320" in out or "train" in out
    assert not (workspace / "runs").exists()


def test_reference_set(ktt, synthetic_csv, tiny_encoder, workspace):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--epochs", "1", "--reference", "--set", f"encoder={tiny_encoder}",
        "--set", "reference_features=8")
    run = next((workspace / "runs" / "db_linear" / "shop").iterdir())
    frame = pd.read_parquet(run / "reference.parquet")
    assert [str(i) for i in range(8)] == list(frame.columns[:8])
    assert "Food > Fruit" in frame.columns and {"target", "prediction"} <= set(frame.columns)
    leaf_columns = frame.columns[8:-2]
    assert len(leaf_columns) == 8
    assert frame[leaf_columns].sum(axis=1).round(4).eq(1).all()


# -- bad input: one line, non-zero exit, no traceback, nothing written ----------------------


@pytest.fixture
def shop(ktt, synthetic_csv):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")


def test_import_errors(ktt, tmp_path, synthetic_csv, workspace):
    bad = tmp_path / "bad.csv"
    bad.write_text("title,category\nok,A > B\n   ,A > C\n")
    assert_clean_error(ktt("import", bad, "x", "--text", "title", "--labels", "category", "--sep", " > ",
                           expect=None), "bad.csv", "row 2", "title", "empty text")
    assert_clean_error(ktt("import", tmp_path / "missing.csv", "x", "--text", "t", "--labels", "c", expect=None),
                       "missing.csv")
    assert_clean_error(ktt("import", synthetic_csv, "x", "--text", "titel", "--labels", "category", expect=None),
                       "titel")
    assert_clean_error(ktt("import", synthetic_csv, "x", "--text", "title", "--labels", "category",
                           "--sep", " > ", "--depth", "5", expect=None), "--depth 5")
    (tmp_path / "data.xlsx").write_text("x")
    assert_clean_error(ktt("import", tmp_path / "data.xlsx", "x", "--text", "t", "--labels", "c", expect=None),
                       ".xlsx")
    assert not (workspace / "datasets" / "x").exists()


def test_existing_dataset_needs_force(ktt, shop, synthetic_csv, workspace):
    before = (workspace / "datasets" / "shop" / "train.parquet").read_bytes()
    assert_clean_error(ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category",
                           expect=None), "already exists", "--force")
    assert (workspace / "datasets" / "shop" / "train.parquet").read_bytes() == before
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ",
        "--force", "--seed", "7")
    assert (workspace / "datasets" / "shop" / "train.parquet").read_bytes() != before
    assert not [p for p in (workspace / "datasets").iterdir() if p.name.startswith(".")]


def test_train_errors(ktt, shop, tmp_path, workspace):
    assert_clean_error(ktt("train", "nope", "shop", expect=None), "unknown model 'nope'", "db_linear")
    assert_clean_error(ktt("train", "db_linear", "nowhere", expect=None), "unknown dataset 'nowhere'", "shop")
    assert_clean_error(ktt("train", "db_linear", "shop", "--set", "colour=red", expect=None),
                       "unknown key 'colour'")
    assert_clean_error(ktt("train", "db_linear", "shop", "--set", "dropout=high", expect=None),
                       "'dropout'", "number")
    config = tmp_path / "c.yaml"
    config.write_text("epochs: -2\n")
    assert_clean_error(ktt("train", "db_linear", "shop", "--config", config, expect=None), "c.yaml", "'epochs'")
    assert_clean_error(ktt("train", "db_linear", "shop", "--set", "encoder=/no/such/encoder", expect=None),
                       "encoder", "/no/such/encoder")
    assert_clean_error(ktt("train", "db_linear", "shop", "--set", "encoder=org/not-downloaded-model",
                           expect=None), "not available", "allow_download")
    assert not (workspace / "runs").exists()


def test_test_and_predict_errors(ktt, trained, tmp_path):
    assert_clean_error(ktt("test", "db_linear", "other", expect=None), "unknown dataset 'other'")
    assert_clean_error(ktt("test", "db_linear", "shop", "--checkpoint", tmp_path / "none.pt", expect=None),
                       "none.pt", "no such checkpoint")
    not_ours = tmp_path / "weights.pt"
    import torch

    torch.save({"weights": torch.zeros(2)}, not_ours)
    assert_clean_error(ktt("test", "db_linear", "shop", "--checkpoint", not_ours, expect=None),
                       "weights.pt", "not a KTT checkpoint")
    # A checkpoint of another model is refused by name.
    other = tmp_path / "other.pt"
    payload = torch.load(trained / "best.pt", weights_only=True)
    payload["model"] = "db_bhcn"
    from ktt_core.checkpoint import content_digest  # a forged file must carry a matching content hash

    payload["sha256"] = content_digest({k: v for k, v in payload.items() if k != "sha256"})
    torch.save(payload, other)
    assert_clean_error(ktt("test", "db_linear", "shop", "--checkpoint", other, expect=None),
                       "holds a db_bhcn model, not db_linear")
    assert_clean_error(ktt("predict", "db_linear", "shop", "  ", expect=None), "text 1 is empty")


def test_pickled_checkpoint_is_refused_without_running_it(ktt, trained, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"format": "ktt-checkpoint", "x": Payload()}, evil)
    assert_clean_error(ktt("test", "db_linear", "shop", "--checkpoint", evil, expect=None), "evil.pt", "refused")
    assert not marker.exists()


def test_compare_tests_each_latest_run_into_a_table_and_a_chart(trained, ktt, workspace):
    ktt("train", "tfidf_lsgd", "shop", "--set", "n_jobs=1", "--set", "min_df=1")
    assert_clean_error(ktt("compare", "db_linear,db_bhcn", "shop", expect=1), "no trained run of db_bhcn on shop")
    assert not (workspace / "reports").exists()  # refused before any model was tested
    out = ktt("compare", "db_linear,tfidf_lsgd", "shop").output
    chart = workspace / "reports" / "compare-shop.png"
    assert f"chart: {chart}" in out and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert {"db_linear", "tfidf_lsgd"} <= set(rows)
    saved = json.loads((trained / "test_metrics.json").read_text())
    assert f"{saved['exact_path_accuracy']:.4f}" in rows["db_linear"]
