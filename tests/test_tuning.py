"""ktt tune: trials with pruning, shared SQLite studies, best config and plots."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from ktt_core.errors import KttError
from ktt_core.plugins import Plugins
from ktt_core.tuning import tune, validate_space
from ktt_core.workspace import Workspace

FAST = ("--freeze-encoder", "--epochs", "2")


@pytest.fixture
def shop(ktt, synthetic_csv):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")


def test_tune_writes_trials_best_config_and_plots(ktt, shop, tiny_encoder, workspace):
    out = ktt("tune", "db_linear", "shop", "--trials", "3", *FAST, "--seed", "1",
              "--set", f"encoder={tiny_encoder}").output
    folder = workspace / "runs" / "db_linear" / "shop" / "tune-db_linear-shop"
    best = json.loads((folder / "best_config.json").read_text())
    assert best["encoder"] == tiny_encoder and 1e-5 <= best["classifier_lr"] <= 1e-2
    assert (folder / "trials.csv").read_text().count("\n") == 4
    assert (folder / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "param_importances.png").is_file()
    assert "best trial" in out
    # the best config is a valid --config for ktt train
    ktt("train", "db_linear", "shop", "--config", folder / "best_config.json", "--epochs", "1", "--dry-run")
    # a second call on the same study has nothing left to do
    again = ktt("tune", "db_linear", "shop", "--trials", "3", *FAST, "--set", f"encoder={tiny_encoder}").output
    assert "trial 3:" not in again
    study = optuna.load_study(study_name="db_linear-shop", storage=f"sqlite:///{workspace.resolve()}/tuning.db")
    assert len(study.trials) == 3


def test_pruner_stops_trials_after_the_first_epoch(shop, tiny_encoder, workspace):
    plugins = Plugins()
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never >= 2: prune at once
    result = tune(Workspace(workspace), plugins, plugins.model("db_linear"), "shop",
                  [("test", {"encoder": tiny_encoder, "epochs": 4, "freeze_encoder": True})],
                  trials=2, pruner=always, echo=lambda *_: None)
    assert result["pruned"] == 2 and result["complete"] == 0
    study = optuna.load_study(study_name="db_linear-shop", storage=f"sqlite:///{workspace.resolve()}/tuning.db")
    assert all(len(t.intermediate_values) == 1 for t in study.trials)


def test_two_processes_share_one_sqlite_study(shop, tiny_encoder, workspace, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "ktt_core", "--workspace", str(workspace), "tune", "db_linear", "shop",
               "--trials", "6", *FAST, "--storage", storage, "--study", "shared",
               "--set", f"encoder={tiny_encoder}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6, [t.state for t in study.trials]
    workers = {t.user_attrs["worker"] for t in finished}
    assert 1 <= len(workers) <= 2
    print("trials per worker:", {w: sum(t.user_attrs["worker"] == w for t in finished) for w in workers})


def test_bad_search_spaces_and_options(ktt, shop, tmp_path, tiny_encoder):
    spec = Plugins().model("db_linear")
    with pytest.raises(KttError, match="'colour' is not a hyperparameter"):
        validate_space({"colour": {"type": "float", "low": 0, "high": 1}}, spec, "s.yaml")
    with pytest.raises(KttError, match="needs low < high"):
        validate_space({"dropout": {"type": "float", "low": 0.5, "high": 0.1}}, spec, "s.yaml")
    with pytest.raises(KttError, match="needs choices"):
        validate_space({"train_batch_size": {"type": "categorical"}}, spec, "s.yaml")
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {type: gaussian}\n")
    result = ktt("tune", "db_linear", "shop", "--trials", "1", "--space", space, expect=None)
    assert result.exit_code == 1 and "space.yaml: 'dropout' needs a type" in result.output
    result = ktt("tune", "db_linear", "shop", "--trials", "1", "--metric", "speed", expect=None)
    assert result.exit_code == 1 and "'monitor'" in result.output
