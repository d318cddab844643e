"""The commands a user runs first answer at once: none of them imports torch or transformers.

``ktt --help``, ``list-models``, ``plugins``, ``import`` and every check of the input that
fails before a model is needed run in a child interpreter where torch and transformers
cannot be imported (and any attempt is reported, even one the code would swallow).
"""
from __future__ import annotations

import pytest
from helpers import run_ktt_blocking

HEAVY = ("torch", "transformers")


@pytest.fixture(scope="module")
def shop_workspace(tmp_path_factory, synthetic_csv):
    workspace = tmp_path_factory.mktemp("startup") / "ws"
    done = run_ktt_blocking(HEAVY, "--workspace", workspace, "import", synthetic_csv, "shop",
                            "--text", "title", "--labels", "category", "--sep", " > ")
    assert done.returncode == 0 and "BLOCKED" not in done.stderr, done.stderr[-2000:]
    assert (workspace / "datasets" / "shop" / "hierarchy.json").is_file()
    return workspace


@pytest.mark.parametrize("args, needle", [
    (["--help"], "list-models"),
    (["train", "--help"], "--epochs"),
    (["list-models"], "db_linear"),
    (["plugins"], "ktt-tfidf"),
    (["config", "db_linear"], "encoder_lr"),
    (["config", "tfidf_lsgd", "--json"], "char_ngram_max"),
])
def test_listing_commands_do_not_import_torch(shop_workspace, args, needle):
    done = run_ktt_blocking(HEAVY, "--workspace", shop_workspace, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BLOCKED" not in done.stderr and needle in done.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "db_linear", "nosuch"], "unknown dataset 'nosuch'"),
    (["train", "nosuch_model", "shop"], "unknown model 'nosuch_model'"),
    (["train", "db_linear", "shop", "--set", "no_such_key=1"], "no_such_key"),
    (["train", "db_linear", "shop", "--set", "dropout=2"], "dropout"),
    (["train", "db_linear", "shop", "--config", "missing.yaml"], "missing.yaml"),
    (["test", "db_linear", "shop"], "no trained run of db_linear on shop"),
    (["predict", "db_linear", "shop", "some text"], "no trained run of db_linear on shop"),
    (["export", "db_linear", "shop", "--onnx"], "no trained run of db_linear on shop"),
])
def test_input_errors_come_before_torch(shop_workspace, args, needle):
    done = run_ktt_blocking(HEAVY, "--workspace", shop_workspace, *args)
    assert done.returncode in (1, 2), done.stderr[-2000:]
    assert "BLOCKED" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert needle in done.stderr.strip().splitlines()[-1]
