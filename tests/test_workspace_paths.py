"""Issue 11, families 2 and 3: names stay inside the workspace, exports never delete what
KTT did not write, and every file of an export is verified against its manifest.

One module workspace (tiny db_linear, one epoch; tfidf_lsgd; both exported to ONNX) is
copied by the tests that change it. Every refused command must give one ``Error:`` line and
leave the whole folder around the workspace exactly as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_in, synthetic_rows
from helpers import assert_clean_error

from ktt_core.errors import KttError
from ktt_core.manifest import write_manifest

BAD_NAMES = {
    "parent": "../../../outside/db_linear/evil",
    "newline": "sh\nop",
    "long": "x" * 300,
    "dotdot": "..",
    "dots": "...",
    "slash": "shop/../shop",
}


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed) with its type, size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(root))] = (path.is_symlink(), path.is_dir(), info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_encoder, synthetic_csv) -> Path:
    """``base/ws``: 'shop', db_linear and tfidf_lsgd trained and exported to ONNX;
    ``base/outside``: a real run where ``../../../outside/db_linear/evil`` would find it."""
    base = tmp_path_factory.mktemp("paths")
    ktt = cli_in(base / "ws")
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}")
    ktt("train", "tfidf_lsgd", "shop", "--set", "min_df=1")
    for model in ("db_linear", "tfidf_lsgd"):
        ktt("export", model, "shop", "--onnx")
    run = run_of(base / "ws", "db_linear")
    shutil.copytree(run, base / "outside" / "db_linear" / "evil" / "run1")
    return base


def run_of(ws: Path, model: str) -> Path:
    return max((ws / "runs" / model / "shop").iterdir())


@pytest.fixture
def copy(base, tmp_path) -> Path:
    """A private copy of ``base`` (for tests that change it)."""
    target = tmp_path / "base"
    shutil.copytree(base, target, symlinks=True)
    return target


# -- family 2: names ------------------------------------------------------------------------------

COMMANDS = {
    "train": lambda n: ["train", "db_linear", n],
    "test": lambda n: ["test", "db_linear", n],
    "predict": lambda n: ["predict", "db_linear", n, "edible apple"],
    "export": lambda n: ["export", "db_linear", n, "--onnx"],
    "serve": lambda n: ["serve", "db_linear", n, "--port", "1"],
    "monitor": lambda n: ["monitor", "db_linear", n, "--port", "1"],
    "tune-dataset": lambda n: ["tune", "db_linear", n, "--trials", "1"],
    "tune-study": lambda n: ["tune", "db_linear", "shop", "--trials", "1", "--study", n],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_names_are_refused_and_nothing_is_written(base, command):
    ktt = cli_in(base / "ws")
    before = tree(base)
    for key, name in BAD_NAMES.items():
        result = ktt(*COMMANDS[command](name), expect=None)
        what = "study" if command == "tune-study" else "dataset"
        assert_clean_error(result, f"{what} name")
        if key == "long":
            assert "300 characters, at most 100" in result.output
        assert tree(base) == before, (command, key)


def test_import_refuses_bad_names(base, synthetic_csv):
    ktt = cli_in(base / "ws")
    before = tree(base)
    for name in [*BAD_NAMES.values(), "new\n"]:  # a trailing newline too
        result = ktt("import", synthetic_csv, name, "--text", "title", "--labels", "category", expect=None)
        assert_clean_error(result, "dataset name")
    assert tree(base) == before


def test_links_leading_outside_the_workspace_are_refused(copy, synthetic_csv):
    ws, outside = copy / "ws", copy / "outside"
    shutil.copytree(ws / "datasets" / "shop", outside / "shop-copy")
    os.symlink(outside / "shop-copy", ws / "datasets" / "linked")
    os.symlink(outside / "db_linear" / "evil", ws / "runs" / "db_linear" / "evil")
    ktt = cli_in(ws)
    before = tree(copy)
    for args in (["test", "db_linear", "linked"], ["train", "db_linear", "linked"],
                 ["import", synthetic_csv, "linked", "--text", "title", "--labels", "category", "--force"],
                 ["predict", "db_linear", "evil", "edible apple"], ["export", "db_linear", "evil", "--onnx"]):
        result = ktt(*args, expect=None)
        assert_clean_error(result, "outside the workspace")
        assert f"dataset '{args[2]}'" in result.output
    assert tree(copy) == before
    # A run outside the workspace named on purpose is used.
    out = ktt("predict", "db_linear", "shop", "edible apple", "--run", outside / "db_linear" / "evil" / "run1")
    assert "edible apple" in out.output


# -- family 2: export targets ---------------------------------------------------------------------

def test_export_never_deletes_files_it_did_not_write(copy):
    ktt = cli_in(copy / "ws")
    out = copy / "exports"
    (out / "onnx").mkdir(parents=True)
    notes = out / "onnx" / "notes.txt"
    notes.write_text("mine")
    before = tree(copy)
    for force in ((), ("--force",)):
        result = ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", out, *force, expect=None)
        assert_clean_error(result, str(notes), "never deletes files it did not write")
        assert tree(copy) == before
    assert notes.read_text() == "mine"

    # An export replaces its own earlier export, and only that.
    fresh = copy / "fresh"
    ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", fresh)
    ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", fresh)
    ktt("predict", "tfidf_lsgd", "shop", "edible apple", "--onnx", fresh / "onnx")
    extra = fresh / "onnx" / "extra.json"
    extra.write_text("{}")
    for force in ((), ("--force",)):
        assert_clean_error(ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", fresh, *force, expect=None),
                           str(extra), "did not write")
    assert extra.read_text() == "{}"
    extra.unlink()
    # An export changed since it was written is replaced only with --force.
    hierarchy = fresh / "onnx" / "hierarchy.json"
    hierarchy.write_text(hierarchy.read_text().replace("Fruit", "Vegetable"))
    assert_clean_error(ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", fresh, expect=None),
                       "was changed", "hierarchy.json", "--force")
    assert "Vegetable" in hierarchy.read_text()
    ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", fresh, "--force")
    assert "Vegetable" not in hierarchy.read_text()
    ktt("predict", "tfidf_lsgd", "shop", "edible apple", "--onnx", fresh / "onnx")
    # A file where the folder should be is not replaced either.
    (copy / "file-out").mkdir()
    (copy / "file-out" / "onnx").write_text("a file")
    assert_clean_error(ktt("export", "tfidf_lsgd", "shop", "--onnx", "--output", copy / "file-out",
                           "--force", expect=None), "not a folder KTT wrote")
    assert (copy / "file-out" / "onnx").read_text() == "a file"


# -- family 3: every file of an export is verified ------------------------------------------------

def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace("Fruit", "Vegetable"), encoding="utf-8")


TAMPERS = {
    "db_linear": {"hierarchy.json": _edit_json, "tokenizer/tokenizer.json": lambda p: p.write_text(
        p.read_text(encoding="utf-8").replace('"apple"', '"appel"'), encoding="utf-8"),
        "model.onnx": _flip, "ktt.json": lambda p: p.write_text(
            p.read_text(encoding="utf-8").replace('"max_length": 64', '"max_length": 8'), encoding="utf-8")},
    "tfidf_lsgd": {"hierarchy.json": _edit_json, "model.onnx": _flip,
                   "ktt.json": lambda p: p.write_text(
                       p.read_text(encoding="utf-8").replace('"model": "tfidf_lsgd"', '"model": "tfidf_lsgd" '),
                       encoding="utf-8")},
}


@pytest.mark.parametrize("model", sorted(TAMPERS))
def test_a_changed_file_of_an_onnx_export_is_refused_by_name(base, tmp_path, model):
    ktt = cli_in(base / "ws")
    source = run_of(base / "ws", model) / "export" / "onnx"
    ktt("predict", model, "shop", "edible apple", "--onnx", source)  # the export as written loads
    for rel, tamper in TAMPERS[model].items():
        folder = tmp_path / rel.replace("/", "_")
        shutil.copytree(source, folder)
        before = (folder / rel).read_bytes()
        tamper(folder / rel)
        assert (folder / rel).read_bytes() != before, rel
        assert_clean_error(ktt("predict", model, "shop", "edible apple", "--onnx", folder, expect=None),
                           str(folder / rel), "SHA-256 does not match the export's manifest",
                           "changed after it was written")
    # A file added, a file removed, the manifest removed.
    added = tmp_path / "added"
    shutil.copytree(source, added)
    (added / "labels.txt").write_text("Food")
    assert_clean_error(ktt("predict", model, "shop", "x", "--onnx", added, expect=None),
                       str(added / "labels.txt"), "not in its manifest")
    removed = tmp_path / "removed"
    shutil.copytree(source, removed)
    (removed / "hierarchy.json").unlink()
    assert_clean_error(ktt("predict", model, "shop", "x", "--onnx", removed, expect=None),
                       str(removed / "hierarchy.json"), "missing")
    unlisted = tmp_path / "unlisted"
    shutil.copytree(source, unlisted)
    (unlisted / "manifest.json").unlink()
    assert_clean_error(ktt("predict", model, "shop", "x", "--onnx", unlisted, expect=None),
                       str(unlisted / "manifest.json"), "export it again")


@pytest.mark.parametrize(("change", "needles"), [
    ({"max_length": "64"}, ["max_length: expected an integer, got a string"]),
    ({"inputs_kind": "words"}, ["inputs_kind: expected one of"]),
    ({"model": None}, ["model: expected a string, got null"]),
    ({"sha256": "abc"}, ["sha256:", "not of the expected form"]),
    ({"truncation_side": 3}, ["truncation_side:"]),
    ({"config": []}, ["config: expected an object, got a list"]),
    ({"max_length": None, "drop": "max_length"}, ["missing field 'max_length'"]),
])
def test_bad_ktt_json_fields_are_named(base, tmp_path, change, needles):
    """A ktt.json whose manifest was forged to match still has its fields checked."""
    folder = tmp_path / "onnx"
    shutil.copytree(run_of(base / "ws", "db_linear") / "export" / "onnx", folder)
    info = json.loads((folder / "ktt.json").read_text())
    drop = change.pop("drop", None)
    info.update(change)
    if drop:
        del info[drop]
    (folder / "ktt.json").write_text(json.dumps(info))
    write_manifest(folder)
    result = cli_in(base / "ws")("predict", "db_linear", "shop", "x", "--onnx", folder, expect=None)
    assert_clean_error(result, str(folder / "ktt.json"), *needles)


def test_a_changed_file_of_a_stored_bento_model_is_refused(base, tmp_path):
    """The Bento model's files are verified by load_predictor (what the service runner calls)."""
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(base / "ws"), "export",
                           "tfidf_lsgd", "shop", "--bento"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = [p.parent for p in (home / "models").rglob("ktt.json")]
    assert len(stored) == 1
    from ktt_core.export.bento import load_predictor
    from ktt_core.manifest import MANIFEST

    folder = tmp_path / "stored"
    shutil.copytree(stored[0], folder)
    assert (folder / MANIFEST).is_file() and (folder / "model.yaml").is_file()
    predictions, _ = load_predictor(folder).run(["edible apple"])
    assert predictions.path_probs.shape[0] == 1
    _edit_json(folder / "hierarchy.json")
    with pytest.raises(KttError, match="hierarchy.json: SHA-256 does not match the stored model's manifest"):
        load_predictor(folder)
    shutil.copyfile(stored[0] / "hierarchy.json", folder / "hierarchy.json")
    (folder / "notes.txt").write_text("x")
    with pytest.raises(KttError, match="notes.txt: not part of the stored model"):
        load_predictor(folder)
    (folder / "notes.txt").unlink()
    load_predictor(folder)  # whole again
    info = json.loads((folder / "ktt.json").read_text())
    (folder / "ktt.json").write_text(json.dumps({**info, "checkpoint_sha256": 42}))
    write_manifest(folder, ignore=("model.yaml",))
    with pytest.raises(KttError, match="checkpoint_sha256: expected a string, got an integer"):
        load_predictor(folder)


# -- family 3: a checkpoint of another dataset ----------------------------------------------------

def test_predict_refuses_a_checkpoint_of_another_dataset_as_test_does(copy, tmp_path):
    ws = copy / "ws"
    ktt = cli_in(ws)
    rows = synthetic_rows(60)
    rows["category"] = rows["category"].str.replace("Food", "Garage")
    csv = tmp_path / "other.csv"
    rows.to_csv(csv, index=False)
    ktt("import", csv, "other", "--text", "title", "--labels", "category", "--sep", " > ")
    best = run_of(ws, "db_linear") / "best.pt"
    before = tree(copy)
    for args in (["test", "db_linear", "other"], ["predict", "db_linear", "other", "edible apple"]):
        result = ktt(*args, "--checkpoint", best, expect=None)
        assert_clean_error(result, "dataset 'other'", "label paths the model was not trained on", "Garage")
        result = ktt(*args, "--run", best.parent, expect=None)
        assert_clean_error(result, "dataset 'other'", "not trained on")
    inputs = tmp_path / "in.csv"
    pd.DataFrame({"text": ["edible apple"]}).to_csv(inputs, index=False)
    assert_clean_error(ktt("predict", "db_linear", "other", "--input", inputs, "--output", tmp_path / "out.csv",
                           "--checkpoint", best, expect=None), "dataset 'other'", "not trained on")
    assert not (tmp_path / "out.csv").exists()
    assert tree(copy) == before
    ktt("predict", "db_linear", "shop", "edible apple", "--checkpoint", best)  # its own dataset
