"""Shared fixtures: a tiny random DistilBERT, a synthetic hierarchy, a workspace."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ktt_core.cli import cli
from ktt_core.encoders import resolve_encoder

# Synthetic hierarchy: each top class and each child has its own keyword, so a small model
# can learn it; texts also carry shared filler words.
TREE = {
    "Food": ["Fruit", "Bakery", "Drinks"],
    "Home": ["Kitchen", "Garden"],
    "Toys": ["Puzzles", "Dolls", "Games"],
}
WORDS = {"Food": "edible", "Home": "household", "Toys": "playful", "Fruit": "apple", "Bakery": "bread",
         "Drinks": "juice", "Kitchen": "pan", "Garden": "shovel", "Puzzles": "jigsaw", "Dolls": "doll",
         "Games": "board"}
FILLER = ["great", "value", "pack", "new", "large", "small", "blue", "red", "premium", "classic"]


def synthetic_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        top = rng.choice(sorted(TREE))
        child = rng.choice(TREE[top])
        words = [WORDS[top], WORDS[child]] + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"id": i, "title": " ".join(words) + f" {i}", "category": f"{top} > {child}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A randomly initialised 2-layer DistilBERT (dim 32) with the MiniLM vocabulary."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    folder = tmp_path_factory.mktemp("tiny-distilbert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"))
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                              hidden_dim=64, max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "products.csv"
    synthetic_rows(400).to_csv(path, index=False)
    return path


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def ktt(workspace):
    """Run the CLI in-process in ``workspace``: ``ktt("train", ...)`` -> click Result."""
    runner = CliRunner()

    def run(*args, expect: int | None = 0):
        result = runner.invoke(cli, ["--workspace", str(workspace), *map(str, args)])
        if expect is not None and result.exit_code != expect:
            raise AssertionError(f"ktt {' '.join(map(str, args))} exited {result.exit_code}, "
                                 f"expected {expect}:\n{result.output}\n{result.exception!r}")
        return result

    return run


@pytest.fixture
def trained(ktt, synthetic_csv, tiny_encoder, workspace):
    """A workspace with dataset 'shop' and one trained db_linear run on it."""
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--epochs", "4", "--set", f"encoder={tiny_encoder}",
        "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16",
        "--set", "dropout=0.0")
    runs = sorted((workspace / "runs" / "db_linear" / "shop").iterdir())
    return runs[-1]
