"""Shared fixtures: a tiny random DistilBERT, a synthetic hierarchy, a workspace (built with
the conformance kit, :mod:`ktt_core.testing`, that plugins' own tests use too)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ktt_core.cli import cli
from ktt_core.testing import FILLER, TREE, WORDS, make_tiny_encoder, synthetic_rows  # noqa: F401

# `precision: auto` computes in bf16 on CPUs with native bf16; the suite's comparisons of
# torch with ONNX and its fp32 tolerances assume fp32, so it runs in fp32 on every machine
# (child processes inherit this). test_cpu_defaults.py covers bf16, and so do the plugins'
# conformance tests (plugins/*/tests), which this file does not reach.
os.environ.setdefault("KTT_CPU_BF16", "0")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A randomly initialised 2-layer DistilBERT (dim 32) with the MiniLM vocabulary."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "products.csv"
    synthetic_rows(400).to_csv(path, index=False)
    return path


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


def cli_in(workspace: Path):
    """The CLI in-process in ``workspace``: ``ktt("train", ...)`` -> click Result; the exit
    status must be ``expect`` (None: any)."""
    runner = CliRunner()

    def run(*args, expect: int | None = 0):
        result = runner.invoke(cli, ["--workspace", str(workspace), *map(str, args)])
        if expect is not None and result.exit_code != expect:
            raise AssertionError(f"ktt {' '.join(map(str, args))} exited {result.exit_code}, "
                                 f"expected {expect}:\n{result.output}\n{result.exception!r}")
        return result

    return run


@pytest.fixture
def ktt(workspace):
    """Run the CLI in-process in ``workspace``: ``ktt("train", ...)`` -> click Result."""
    return cli_in(workspace)


@pytest.fixture
def trained(ktt, synthetic_csv, tiny_encoder, workspace):
    """A workspace with dataset 'shop' and one trained db_linear run on it."""
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--epochs", "4", "--set", f"encoder={tiny_encoder}",
        "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16",
        "--set", "dropout=0.0", "--set", "scheduler=constant")
    runs = sorted((workspace / "runs" / "db_linear" / "shop").iterdir())
    return runs[-1]
