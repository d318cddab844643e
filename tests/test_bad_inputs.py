"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the CLI.

Every case must end in a clean error (one ``Error: ...`` line naming what is wrong and
where, exit status 1, no traceback) with nothing written or left behind anywhere in the
case's folder, or be handled the way docs/bad-inputs.md says. Adding a case is adding an
entry to cases.yaml (and a data file, or a generator below for large or binary inputs).
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import assert_clean_error

from ktt_core.checkpoint import content_digest
from ktt_core.cli import cli
from ktt_core.files import HOST_TAG

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
MARKER = "PWNED"  # what a malicious pickle would create in the case folder
KINDS = {"import", "config", "hierarchy", "dataset", "checkpoint", "cli"}


# -- workspaces the cases start from -------------------------------------------------------------

def _invoke(workspace: Path, *args) -> None:
    result = CliRunner().invoke(cli, ["--workspace", str(workspace), *map(str, args)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def dataset_template(tmp_path_factory, synthetic_csv) -> Path:
    """A workspace with the synthetic dataset 'shop'."""
    workspace = tmp_path_factory.mktemp("template-dataset") / "ws"
    _invoke(workspace, "import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    return workspace


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory, dataset_template, tiny_encoder) -> Path:
    """'shop' and one db_linear run on it (tiny encoder, one epoch)."""
    workspace = tmp_path_factory.mktemp("template-trained") / "ws"
    shutil.copytree(dataset_template, workspace)
    _invoke(workspace, "train", "db_linear", "shop", "--epochs", "1", "--set", f"encoder={tiny_encoder}")
    return workspace


def _run_dir(workspace: Path) -> Path:
    runs = sorted((workspace / "runs" / "db_linear" / "shop").iterdir())
    assert runs, "the case needs setup: trained"
    return runs[-1]


# -- generated inputs ---------------------------------------------------------------------------

def parquet_with_nan_text(folder: Path, workspace: Path) -> Path:
    path = folder / "nan_text.parquet"
    pd.DataFrame({"title": ["basmati rice", "oat milk", float("nan")],
                  "category": ["Food > Grains", "Drinks > Plant milk", "Food > Dairy"]}).to_parquet(path)
    return path


def a_directory(folder: Path, workspace: Path) -> Path:
    path = folder / "folder.csv"
    path.mkdir()
    return path


def csv_100k_one_bad_row(folder: Path, workspace: Path) -> Path:
    """100,000 rows; data row 73,512 has an empty middle level."""
    paths = ["Food > Fruit", "Food > Bakery", "Home > Garden", "Toys > Games", "Baby"]
    rows = ["title,category"] + [f"product number {i},{paths[i % len(paths)]}" for i in range(100_000)]
    rows[73_512] = "product number 73511,Food >  > Fruit"
    path = folder / "big.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def csv_with_10mb_text(folder: Path, workspace: Path) -> Path:
    words = "lorem ipsum dolor sit amet "
    text = (words * (10 * 2**20 // len(words) + 1))[: 10 * 2**20 - 1] + "x"  # 10,485,760 characters
    path = folder / "long.csv"
    pd.DataFrame({"title": ["basmati rice", text, "oat milk"],
                  "category": ["Food > Grains", "Food > Grains", "Drinks > Plant milk"]}).to_csv(path, index=False)
    return path


def split_without_path_column(folder: Path, workspace: Path) -> Path:
    path = folder / "val.parquet"
    pd.DataFrame({"text": ["edible apple"], "labels": [["Food", "Fruit"]]}).to_parquet(path)
    return path


def split_with_unknown_path(folder: Path, workspace: Path) -> Path:
    path = folder / "test.parquet"
    pd.DataFrame({"text": ["edible apple", "edible beef"],
                  "path": [["Food", "Fruit"], ["Food", "Meat"]]}).to_parquet(path)
    return path


class _Payload:
    """Unpickled, it would create the marker file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def checkpoint_with_pickle_payload(folder: Path, workspace: Path) -> Path:
    path = folder / "evil.pt"
    torch.save({"format": "ktt-checkpoint", "version": 2, "x": _Payload(folder.parent / MARKER)}, path)
    return path


def legacy_checkpoint_with_pickle_payload(folder: Path, workspace: Path) -> Path:
    path = folder / "evil-legacy.pt"
    torch.save({"format": "ktt-checkpoint", "x": _Payload(folder.parent / MARKER)}, path,
               _use_new_zipfile_serialization=False)
    return path


def raw_pickle_with_payload(folder: Path, workspace: Path) -> Path:
    path = folder / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "ktt-checkpoint", "x": _Payload(folder.parent / MARKER)}))
    return path


def reference_with_pickle_payload(folder: Path, workspace: Path) -> Path:
    path = folder / "reference.parquet"
    path.write_bytes(pickle.dumps({"x": _Payload(folder.parent / MARKER)}))
    return path


def pandas_pickle_reference(folder: Path, workspace: Path) -> Path:
    path = folder / "reference.pkl"
    pd.DataFrame({"0": [1.0], "prediction": ["Food > Fruit"], "x": [_Payload(folder.parent / MARKER)]}).to_pickle(path)
    return path


def plain_torch_file(folder: Path, workspace: Path) -> Path:
    path = folder / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    return path


def truncated_checkpoint(folder: Path, workspace: Path) -> Path:
    data = (_run_dir(workspace) / "best.pt").read_bytes()
    path = folder / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _forge(workspace: Path, path: Path, change, rehash: bool) -> Path:
    payload = torch.load(_run_dir(workspace) / "best.pt", weights_only=True)
    change(payload)
    if rehash:
        payload["sha256"] = content_digest({k: v for k, v in payload.items() if k != "sha256"})
    torch.save(payload, path)
    return path


def checkpoint_with_flipped_weight(folder: Path, workspace: Path) -> Path:
    def flip(payload):
        weights = next(v for v in payload["state"]["state_dict"].values() if v.is_floating_point())
        weights.view(-1)[0] += 1.0

    return _forge(workspace, folder / "flipped.pt", flip, rehash=False)


def checkpoint_with_bad_hierarchy(folder: Path, workspace: Path) -> Path:
    import json

    def orphan(payload):  # drop the first top-level class, keep its children
        hierarchy = json.loads(payload["hierarchy_json"])
        hierarchy["levels"][0] = hierarchy["levels"][0][1:]
        payload["hierarchy_json"] = json.dumps(hierarchy)

    return _forge(workspace, folder / "bad-hierarchy.pt", orphan, rehash=True)


def checkpoint_with_bad_config(folder: Path, workspace: Path) -> Path:
    import json

    def spoil(payload):
        config = json.loads(payload["config_json"])
        config["dropout"] = "high"
        payload["config_json"] = json.dumps(config)

    return _forge(workspace, folder / "bad-config.pt", spoil, rehash=True)


def checkpoint_with_bad_encoder_config(folder: Path, workspace: Path) -> Path:
    return _forge(workspace, folder / "bad-encoder.pt", lambda p: p["state"].__setitem__("encoder_config_json", "{}"),
                  rehash=True)


def checkpoint_of_another_model(folder: Path, workspace: Path) -> Path:
    return _forge(workspace, folder / "other-model.pt", lambda p: p.__setitem__("model", "db_bhcn"), rehash=True)


def sqlite_shop(folder: Path, workspace: Path) -> Path:
    """A real SQLite database of 24 products; the cases check it is left byte for byte."""
    import sqlite3

    path = folder / "shop.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE products (id INTEGER, title TEXT, category TEXT)")
    con.executemany("INSERT INTO products VALUES (?, ?, ?)",
                    [(i, f"{w} number {i}", c) for i, (w, c) in enumerate(
                        [("apple", "Food > Fruit"), ("bread", "Food > Bakery"), ("rake", "Home > Garden")] * 8)])
    con.commit()
    con.close()
    return path


def parquet_with_list_text(folder: Path, workspace: Path) -> Path:
    path = folder / "list_text.parquet"
    pd.DataFrame({"title": [["basmati", "rice"], ["oat", "milk"]],
                  "category": ["Food > Grains", "Drinks > Plant milk"]}).to_parquet(path)
    return path


def parquet_with_binary_label(folder: Path, workspace: Path) -> Path:
    path = folder / "binary_label.parquet"
    pd.DataFrame({"title": ["basmati rice", "oat milk"], "category": [b"Food > Grains", b"Drinks"]}).to_parquet(path)
    return path


def a_fifo(folder: Path, workspace: Path) -> Path:
    """A named pipe with no writer: opening it to read would block forever."""
    path = folder / "config.yaml"
    os.mkfifo(path)
    return path


def config_over_1mb(folder: Path, workspace: Path) -> Path:
    path = folder / "big-config.yaml"
    path.write_text("# padding\n" * 110_000 + "epochs: 1\n", encoding="utf-8")
    return path


def dataset_linked_outside(folder: Path, workspace: Path) -> Path:
    """datasets/linked: a symbolic link to a copy of 'shop' outside the workspace."""
    outside = folder / "outside-shop"
    shutil.copytree(workspace / "datasets" / "shop", outside)
    (workspace / "datasets" / "linked").symlink_to(outside)
    return outside


def dataset_with_other_labels(folder: Path, workspace: Path) -> Path:
    """datasets/other: the hierarchy of 'shop' with 'Food' renamed (a model of 'shop' does not know it)."""
    other = workspace / "datasets" / "other"
    shutil.copytree(workspace / "datasets" / "shop", other)
    hierarchy = other / "hierarchy.json"
    hierarchy.write_text(hierarchy.read_text(encoding="utf-8").replace('"Food"', '"Garage"'), encoding="utf-8")
    return other


def export_target_with_user_file(folder: Path, workspace: Path) -> Path:
    """An --output folder whose onnx/ holds a file the user put there."""
    (folder / "out" / "onnx").mkdir(parents=True)
    (folder / "out" / "onnx" / "notes.txt").write_text("mine", encoding="utf-8")
    return folder / "out"


def onnx_export_with_edited_hierarchy(folder: Path, workspace: Path) -> Path:
    """A real ONNX export of the trained run whose hierarchy.json was edited afterwards."""
    _invoke(workspace, "export", "db_linear", "shop", "--onnx", "--output", folder / "exp")
    hierarchy = folder / "exp" / "onnx" / "hierarchy.json"
    hierarchy.write_text(hierarchy.read_text(encoding="utf-8").replace("Fruit", "Vegetable"), encoding="utf-8")
    return folder / "exp" / "onnx"


def _dead_pid() -> int:
    """The PID of a process that has ended (KTT's temporary names carry their writer's PID)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def killed_import_leftovers(folder: Path, workspace: Path) -> Path:
    """What an import of 'shop' killed while writing leaves: its lock file, its temporary
    folder and, when 'shop' exists (killed in a --force replace), the swapped-out version's
    folder; returns a CSV to import."""
    datasets, pid = workspace / "datasets", _dead_pid()
    for suffix in ("tmp", "old") if (datasets / "shop").is_dir() else ("tmp",):
        stale = datasets / f".shop.{pid}-{HOST_TAG}.k1ll3d00.{suffix}"
        stale.mkdir(parents=True)
        (stale / "train.parquet").write_bytes(b"PAR1 half written")
    (datasets / ".shop.lock").write_text("")
    path = folder / "products.csv"
    pd.DataFrame({"title": ["basmati rice", "oat milk", "rye bread", "apple juice"],
                  "category": ["Food > Grains", "Drinks > Plant milk", "Food > Bakery", "Drinks > Juice"]}
                 ).to_csv(path, index=False)
    return path


def killed_test_leftovers(folder: Path, workspace: Path) -> Path:
    """What a ``ktt test`` killed while saving its metrics leaves in the run: lock file and temp."""
    run = _run_dir(workspace)
    (run / ".lock").write_text("")
    (run / f".test_metrics.json.{_dead_pid()}-{HOST_TAG}.k1ll3d00.tmp").write_text('{"half": ')
    return run


MAKERS = {f.__name__: f for f in (
    parquet_with_nan_text, a_directory, csv_100k_one_bad_row, csv_with_10mb_text, split_without_path_column,
    split_with_unknown_path, checkpoint_with_pickle_payload, legacy_checkpoint_with_pickle_payload,
    raw_pickle_with_payload, plain_torch_file, truncated_checkpoint, checkpoint_with_flipped_weight,
    checkpoint_with_bad_hierarchy, checkpoint_with_bad_config, checkpoint_with_bad_encoder_config,
    checkpoint_of_another_model, reference_with_pickle_payload, pandas_pickle_reference, sqlite_shop,
    parquet_with_list_text, parquet_with_binary_label, a_fifo, config_over_1mb,
    dataset_linked_outside, dataset_with_other_labels, export_target_with_user_file,
    onnx_export_with_edited_hierarchy, killed_import_leftovers, killed_test_leftovers)}


# -- checks -----------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, size and modification time (folders too:
    a temporary file made and removed again changes its folder's time)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(root))] = (path.is_dir(), 0 if path.is_dir() else info.st_size, info.st_mtime_ns)
    return out


def assert_usage_error(result, *needles) -> None:
    """click refused an option value: exit status 2, usage lines, then one Error: line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert all(line.startswith(("Usage: ", "Try ")) for line in lines[:-1]), result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def _describe(result) -> str:
    if result.exc_info and not isinstance(result.exception, SystemExit):
        return result.output + "".join(traceback.format_exception(*result.exc_info))
    return result.output


def _case_params():
    seen = set()
    for case in CASES:
        assert case["id"] not in seen, f"duplicate case id {case['id']}"
        seen.add(case["id"])
        assert case.get("kind") in KINDS, case
        assert case.get("expect", "error") in ("error", "usage", "ok"), case
        assert not ("file" in case and "make" in case), case
        assert "make" not in case or case["make"] in MAKERS, case
        assert "file" not in case or (CORPUS / case["file"]).is_file(), case
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
        yield pytest.param(case, id=case["id"], marks=marks)


def test_the_corpus_is_large_and_varied():
    kinds = {}
    for case in CASES:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    assert len(CASES) >= 30 and set(kinds) == KINDS, kinds
    assert len(list((CORPUS / "http").glob("*.json"))) >= 8


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("case", list(_case_params()))
def test_bad_input(case, request, tmp_path, workspace, ktt):
    setup = case.get("setup", "none")
    if setup != "none":
        shutil.copytree(request.getfixturevalue(f"{setup}_template"), workspace)
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = None
    if "file" in case:
        source = inputs / Path(case["file"]).name
        shutil.copyfile(CORPUS / case["file"], source)
    elif "make" in case:
        source = MAKERS[case["make"]](inputs, workspace)
    if "install" in case:
        target = workspace / case["install"]
        assert target.is_file(), f"{case['install']} is not in the {setup} workspace"
        shutil.move(source, target)
    values = {"input": str(source), "encoder": request.getfixturevalue("tiny_encoder") if any(
        "{encoder}" in str(a) for a in case["args"]) else "", "run": str(_run_dir(workspace)) if setup == "trained" else ""}
    args = [str(a).format(**values) for a in case["args"]]

    before = tree(tmp_path)
    result = ktt(*args, expect=None)
    expect = case.get("expect", "error")
    needles = case.get("needles", [])
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"
    if expect == "ok":
        assert result.exit_code == 0, _describe(result)
        for needle in needles:
            assert needle in result.output, result.output
        for path in case.get("creates", []):
            assert (workspace / path).exists(), path
        leftovers = [p for p in workspace.rglob(".*")]
        assert not leftovers, leftovers
        return
    assert isinstance(result.exception, SystemExit), _describe(result)  # no uncaught exception
    if expect == "usage":
        assert_usage_error(result, *needles)
    else:
        assert result.exit_code == 1, result.output
        assert_clean_error(result, *needles)
    assert tree(tmp_path) == before, "the failed command wrote or left something"
