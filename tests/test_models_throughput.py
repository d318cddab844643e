"""benchmarks/models_throughput.py runs end to end: a torch model (both variants), a TF-IDF
model and their ensemble, on a few rows of the bundled sample with the tiny encoder."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_row_has_positive_figures(tiny_encoder, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import models_throughput

    out = tmp_path / "models.json"
    models_throughput.main(["--models", "db_linear,tfidf_lsgd,ensemble", "--ensemble", "db_linear,tfidf_lsgd",
                            "--rows", "32", "--val-rows", "16", "--data", str(REPO / "data" / "walmart_sample.parquet"),
                            "--encoder", tiny_encoder, "--device", "cpu", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {(r["model"], r["variant"]): r for r in report["rows"]}
    assert list(rows) == [("db_linear", "fine-tuned"), ("db_linear", "frozen encoder"),
                          ("tfidf_lsgd", "TF-IDF (sgd)"), ("ensemble", "db_linear + tfidf_lsgd (predict only)")]
    assert not [r for r in rows.values() if "skipped" in r]
    for (model, _), row in rows.items():
        assert row["predict_texts_per_s"] > 0 and row["predict_seconds"] > 0 and row["predict_rows"] == 32
        assert row["build_seconds"] >= 0
        if model != "ensemble":
            assert row["train_samples_per_s"] > 0 and row["train_seconds"] > 0 and row["train_rows"] == 32
            assert row["epochs"] == 1
    assert rows[("db_linear", "frozen encoder")]["config"]["freeze_encoder"] is True
    assert rows[("db_linear", "fine-tuned")]["config"]["encoder"] == tiny_encoder
    assert rows[("db_linear", "fine-tuned")]["precision"] in ("bf16", "fp32")
    assert report["torch_threads"] >= 1 and report["cpu_count"] >= 1 and report["date"]
