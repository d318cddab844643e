"""The plugin author's kit (:mod:`ktt_core.testing`) and the checks that catch a broken head.

The documented transformer head of docs/plugins.md is installed as a real plugin and passes
the kit's ``check_model``; heads with the mistakes a plugin author makes are refused in one
line before anything trains.
"""
from __future__ import annotations

import re
import sys

import pytest
from helpers import docs_python_block

from ktt_core.testing import Cli, check_model, install_plugin, write_synthetic_csv


def docs_head_example() -> str:
    return docs_python_block("plugins.md", "### A transformer head")


def test_the_documented_head_passes_the_conformance_kit(tmp_path, tiny_encoder):
    env = {**install_plugin(tmp_path / "site", "ktt_per_level", docs_head_example()),
           "KTT_LOAD_PLUGINS": "ktt_per_level"}
    metrics = check_model("per_level", tmp_path / "ws", epochs=4, env=env,
                          train_args=["--set", f"encoder={tiny_encoder}", "--set", "encoder_lr=1e-3",
                                      "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16",
                                      "--set", "dropout=0.0", "--set", "scheduler=constant"])
    # check_model asserts the model learned (>= 0.6 exact path, keyword texts right); the
    # coarse level of 3 classes is learned first.
    assert metrics["level_1_accuracy"] > 0.8


def test_the_kit_checks_a_non_torch_model_and_its_onnx_export(tmp_path):
    metrics = check_model("tfidf_lsgd", tmp_path / "ws", train_args=["--set", "n_jobs=1", "--set", "min_df=1"])
    assert metrics["exact_path_accuracy"] > 0.9
    assert (tmp_path / "ws-onnx" / "onnx" / "model.onnx").is_file()


BROKEN_HEADS = {
    # forward gives (batch, n_classes) where path_log_scores must give (batch, n_leaves).
    "wrong_shape": ("""
    def forward(self, features):
        return self.linear(features)
    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets[:, 0])
    def path_log_scores(self, outputs):
        return F.log_softmax(outputs, dim=1)
""", "nn.Linear(input_dim, hierarchy.n_classes)", r"head BrokenHead: path_log_scores returned shape \(2, 11\); "
     r"expected \(batch, n_leaves\) = \(2, 8\)"),
    # reads a config key its spec never declared.
    "missing_key": ("""
    def forward(self, features):
        return self.linear(features) * self.config["temperature"]
    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets[:, -1])
    def path_log_scores(self, outputs):
        return F.log_softmax(outputs, dim=1)
""", "nn.Linear(input_dim, hierarchy.n_leaves)", r"model broken: its code reads config key 'temperature', which is "
     r"not among its keys; add it to the defaults of its ModelSpec"),
    # a loss per row instead of a scalar.
    "loss_per_row": ("""
    def forward(self, features):
        return self.linear(features)
    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets[:, -1], reduction="none")
    def path_log_scores(self, outputs):
        return F.log_softmax(outputs, dim=1)
""", "nn.Linear(input_dim, hierarchy.n_leaves)", r"head BrokenHead: loss returned shape \(2,\); expected a scalar"),
}


@pytest.mark.parametrize("mistake", sorted(BROKEN_HEADS))
def test_a_broken_head_is_refused_before_training(tmp_path, tiny_encoder, mistake):
    methods, layer, message = BROKEN_HEADS[mistake]
    source = f'''
from torch import nn
from torch.nn import functional as F
from ktt_core import hookimpl
from ktt_core.model import ClassifierHead
from ktt_core.registry import ModelSpec

class BrokenHead(ClassifierHead):
    def __init__(self, hierarchy, config, input_dim):
        super().__init__(hierarchy, config, input_dim)
        self.linear = {layer}
{methods}

@hookimpl
def ktt_register_models(register):
    register(ModelSpec(name="broken", display_name="Broken", head=BrokenHead, key_help={{}}))
'''
    env = {**install_plugin(tmp_path / "site", "ktt_broken", source), "KTT_LOAD_PLUGINS": "ktt_broken"}
    cli = Cli(tmp_path / "ws", env)
    cli("import", write_synthetic_csv(tmp_path / "shop.csv"), "shop", "--text", "title", "--labels", "category",
        "--sep", " > ")
    for extra in (["--dry-run"], []):
        done = cli.run("train", "broken", "shop", "--set", f"encoder={tiny_encoder}", *extra, expect=1)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").rglob("best.pt"))


def test_dry_run_runs_a_forward_pass_on_training_texts(ktt, synthetic_csv, tiny_encoder):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    out = ktt("train", "db_linear", "shop", "--dry-run", "--set", f"encoder={tiny_encoder}").output
    assert re.search(r"dry run: a forward pass on 8 training texts, loss \d+\.\d{4}; scores have the expected shapes",
                     out), out


def test_the_kit_imports_without_torch():
    from helpers import run_python_blocking

    done = run_python_blocking(("torch", "transformers", "pytest"), "import ktt_core.testing\n",
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0 and "BLOCKED" not in done.stderr, done.stderr[-2000:]
