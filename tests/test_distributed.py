"""torchrun with 2 CPU processes (gloo): every row once per epoch, rank-0 files, usable checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd


def test_torchrun_two_processes(ktt, synthetic_csv, tiny_encoder, workspace):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ktt_core", "--workspace", str(workspace), "train", "db_linear", "shop", "--epochs", "2",
               "--device", "cpu", "--set", f"encoder={tiny_encoder}", "--set", "train_batch_size=16",
               "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1:") == 1, "only rank 0 prints"
    assert "2 processes" in done.stdout

    runs = list((workspace / "runs" / "db_linear" / "shop").iterdir())
    assert len(runs) == 1, "one run folder, made by rank 0"
    run = runs[0]
    train_rows = len(pd.read_parquet(workspace / "datasets" / "shop" / "train.parquet"))
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2
    for epoch in epochs:
        assert epoch["processes"] == 2
        assert epoch["train_rows"] == epoch["train_rows_unique"] == train_rows
    assert json.loads((run / "config.json").read_text())["processes"] == 2

    metrics = json.loads(ktt("test", "db_linear", "shop", "--json").output)
    assert metrics["rows"] > 0 and metrics["exact_path_accuracy"] > 1 / 8
    prediction = json.loads(ktt("predict", "db_linear", "shop", "edible apple", "--json").output)
    assert len(prediction["path"]) == 2
