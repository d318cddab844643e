"""ONNX export (``ktt export --onnx``) and torch-free prediction (``ktt predict --onnx``).

Every model is trained once for one epoch (module fixture), exported, and compared with
its torch self: graph outputs on padded batches of two shapes, and ``ktt predict``.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_in, synthetic_rows
from helpers import assert_clean_error, run_ktt_blocking, run_python_blocking

from ktt_core.data.batches import Collate, encode_texts
from ktt_core.errors import KttError
from ktt_core.decoding import decode
from ktt_core.jobs import load_model
from ktt_core.onnx_runtime import OnnxModel
from ktt_core.plugins import Plugins

MODELS = ("db_linear", "db_bhcn", "db_bhcn_awx", "db_achmcnn")
EXTRA = {"db_achmcnn": ("--set", "h_hidden_dim=64", "--set", "h_layer_count=2")}
TOLERANCE = 1e-4
#: Five texts of very different lengths: one token to far beyond max_length (64).
TEXTS = ["x", "edible apple", "household pan great value pack new large blue",
         "playful jigsaw " * 60, "premium classic red juice bread doll board shovel"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder, synthetic_csv):
    """Workspace with dataset 'shop', each model trained one epoch and exported to ONNX."""
    workspace = tmp_path_factory.mktemp("onnx") / "ws"
    ktt = cli_in(workspace)
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    runs = {}
    for model in MODELS:
        ktt("train", model, "shop", "--epochs", 1, "--set", f"encoder={tiny_encoder}",
            "--set", "train_batch_size=16", *EXTRA.get(model, ()))
        run = max((workspace / "runs" / model / "shop").iterdir())
        out = ktt("export", model, "shop", "--onnx").output
        assert f"ONNX model written to {run / 'export' / 'onnx'}" in out
        runs[model] = run
    return {"workspace": workspace, "ktt": ktt, "runs": runs,
            "onnx": {m: r / "export" / "onnx" for m, r in runs.items()}}


def _torch_outputs(model, ids, mask) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outputs, features = model.forward_with_features(torch.from_numpy(ids), torch.from_numpy(mask))
        out = {"path_log_scores": model.head.path_log_scores(outputs).float().numpy(),
               "features": features.float().numpy()}
        levels = model.head.level_log_scores(outputs)
        if levels is not None:
            out["level_log_scores"] = torch.cat([x.float() for x in levels], dim=1).numpy()
    return out


@pytest.mark.parametrize("name", MODELS)
def test_export_folder_and_graph_match_torch(exported, name):
    directory = exported["onnx"][name]
    assert sorted(p.name for p in directory.iterdir()) == ["hierarchy.json", "ktt.json", "manifest.json",
                                                           "model.onnx", "tokenizer"]
    assert (directory / "tokenizer" / "tokenizer.json").is_file()
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    info = json.loads((directory / "ktt.json").read_text())
    model = load_model(Plugins(), name, exported["runs"][name] / "best.pt").eval()
    has_levels = name != "db_linear"
    outputs = ["path_log_scores", "features"] + (["level_log_scores"] if has_levels else [])
    assert (info["format"], info["version"], info["model"], info["max_length"]) == ("ktt-onnx", 1, name, 64)
    assert info["config"] == model.config and info["torch"] == torch.__version__ and info["opset"] >= 18
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]
    assert [o["name"] for o in info["outputs"]] == outputs
    assert json.loads((directory / "hierarchy.json").read_text()) == model.hierarchy.to_dict()

    runtime = OnnxModel(directory)
    assert (runtime.name, runtime.max_length, runtime.config) == (name, 64, model.config)
    assert runtime.hierarchy.to_dict() == model.hierarchy.to_dict()
    session = runtime._session
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "sequence"]),
        ("attention_mask", "tensor(int64)", ["batch", "sequence"])]
    assert [o.name for o in session.get_outputs()] == outputs

    worst = 0.0
    for texts in (TEXTS[2:3], TEXTS):  # (1, 11) and (5, 64): two padded shapes
        split = encode_texts(texts, model.tokenizer, 64, model.hierarchy)
        assert runtime.token_ids(texts) == split.input_ids  # the torch-free tokenizer agrees
        batch = Collate(split)(list(range(len(texts))))
        ids, mask = runtime.encode(texts)
        assert np.array_equal(ids, batch["input_ids"].numpy()) and np.array_equal(mask, batch["attention_mask"].numpy())
        want = _torch_outputs(model, ids, mask)
        got = runtime.session_outputs(ids, mask)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].shape == want[key].shape and got[key].dtype == np.float32
            worst = max(worst, float(np.abs(got[key] - want[key]).max()))
    print(f"{name}: max |onnx - torch| = {worst:.3g}")
    assert worst <= TOLERANCE

    # run(): decoded predictions and features, in text order, across several internal batches.
    predictions, features = runtime.run(TEXTS, batch_size=2)
    ids, mask = runtime.encode(TEXTS)
    want = _torch_outputs(model, ids, mask)
    np.testing.assert_allclose(features, want["features"], atol=TOLERANCE)
    # The export carries the checkpoint's calibration and applies it as the model does.
    assert runtime.calibration is not None and runtime.calibration.to_dict() == model.calibration.to_dict()
    expected = decode(model.hierarchy, want["path_log_scores"], calibration=model.calibration)
    np.testing.assert_allclose(predictions.path_probs, expected.path_probs, atol=TOLERANCE)
    for got_level, want_level in zip(predictions.confidences(model.hierarchy), expected.confidences(model.hierarchy)):
        np.testing.assert_allclose(got_level, want_level, atol=TOLERANCE)
    assert (predictions.level_log_scores is not None) == has_levels
    empty, no_features = runtime.run([])
    assert empty.path_probs.shape == (0, model.hierarchy.n_leaves) and no_features.shape == (0, 24)


def _numbers(text: str) -> tuple[str, list[float]]:
    return re.sub(r"\d+\.\d+", "#", text), [float(x) for x in re.findall(r"\d+\.\d+", text)]


@pytest.mark.parametrize("name", MODELS)
def test_predict_onnx_matches_torch(exported, name):
    ktt, directory = exported["ktt"], exported["onnx"][name]
    args = ("predict", name, "shop", *TEXTS, "--top-k", "3")
    torch_lines = [json.loads(x) for x in ktt(*args, "--json").output.splitlines()]
    onnx_lines = [json.loads(x) for x in ktt(*args, "--json", "--onnx", directory).output.splitlines()]
    assert [r["text"] for r in onnx_lines] == TEXTS
    for a, b in zip(torch_lines, onnx_lines):
        assert a["path"] == b["path"] and [k["path"] for k in a["top_k"]] == [k["path"] for k in b["top_k"]]
        assert b["score"] == pytest.approx(a["score"], abs=TOLERANCE)
        assert [k["score"] for k in b["top_k"]] == pytest.approx([k["score"] for k in a["top_k"]], abs=TOLERANCE)
        assert [lv["score"] for lv in b["levels"]] == pytest.approx([lv["score"] for lv in a["levels"]],
                                                                    abs=TOLERANCE)
    # The printed form is the same (numbers are rounded to 3 places, so compared within 1e-3).
    shape_t, numbers_t = _numbers(ktt(*args).output)
    shape_o, numbers_o = _numbers(ktt(*args, "--onnx", directory).output)
    assert shape_t == shape_o and numbers_o == pytest.approx(numbers_t, abs=1.01e-3)


def test_predict_onnx_decodings_and_files(exported, tmp_path):
    ktt, name = exported["ktt"], "db_achmcnn"
    directory = exported["onnx"][name]
    for options in (("--decoding", "per-level"), ("--threshold", "0.3"),
                    ("--decoding", "per-level", "--threshold", "0.6")):
        args = ("predict", name, "shop", *TEXTS, "--json", *options)
        want = [json.loads(x) for x in ktt(*args).output.splitlines()]
        got = [json.loads(x) for x in ktt(*args, "--onnx", directory).output.splitlines()]
        assert [g["path"] for g in got] == [w["path"] for w in want], options

    texts = synthetic_rows(70, seed=3)["title"].tolist()
    pd.DataFrame({"title": texts}).to_csv(tmp_path / "in.csv", index=False)
    common = ("predict", name, "shop", "--input", tmp_path / "in.csv", "--text", "title", "--top-k", "2",
              "--chunk-size", "32")
    ktt(*common, "--output", tmp_path / "torch.jsonl")
    out = ktt(*common, "--output", tmp_path / "onnx.jsonl", "--onnx", directory).output
    assert f"wrote 70 predictions to {tmp_path / 'onnx.jsonl'}" in out
    want = pd.read_json(tmp_path / "torch.jsonl", lines=True)
    got = pd.read_json(tmp_path / "onnx.jsonl", lines=True)
    assert list(got.columns) == list(want.columns) and got["text"].tolist() == texts
    assert got["path"].tolist() == want["path"].tolist()
    assert got["score"].tolist() == pytest.approx(want["score"].tolist(), abs=TOLERANCE)


NO_TORCH = ("torch", "transformers")


def test_onnx_prediction_runs_without_torch(exported, tmp_path):
    name, directory = "db_bhcn", exported["onnx"]["db_bhcn"]
    args = ["predict", name, "shop", *TEXTS, "--json", "--top-k", "3", "--onnx", str(directory)]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    env.update({k: v for k, v in os.environ.items() if k == "PYTHONPATH"})
    done = run_ktt_blocking(NO_TORCH, *args, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "BLOCKED" not in done.stderr, done.stderr[-3000:]
    expected = exported["ktt"](*args).output
    assert done.stdout == expected
    # The runtime's own import pulls in neither.
    check = run_python_blocking(NO_TORCH, "import ktt_core.onnx_runtime, ktt_core.streaming\n", env=env, timeout=120)
    assert check.returncode == 0 and "BLOCKED" not in check.stderr, check.stderr[-3000:]


def test_damaged_or_mismatched_exports_are_refused(exported, tmp_path):
    ktt, source = exported["ktt"], exported["onnx"]["db_linear"]
    copy = tmp_path / "onnx"
    shutil.copytree(source, copy)
    model_file = copy / "model.onnx"
    data = bytearray(model_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    model_file.write_bytes(bytes(data))
    assert_clean_error(ktt("predict", "db_linear", "shop", "edible apple", "--onnx", copy, expect=None),
                       str(model_file), "SHA-256 does not match the export's manifest")
    with pytest.raises(KttError, match="model.onnx"):
        OnnxModel(copy)

    model_file.unlink()
    assert_clean_error(ktt("predict", "db_linear", "shop", "x", "--onnx", copy, expect=None), str(model_file))
    shutil.copy(source / "model.onnx", model_file)
    OnnxModel(copy)  # whole again

    assert_clean_error(ktt("predict", "db_bhcn", "shop", "x", "--onnx", copy, expect=None),
                       "export of db_linear, not db_bhcn")
    assert_clean_error(ktt("predict", "db_linear", "shop", "x", "--onnx", copy, "--run", copy, expect=None),
                       "--onnx")
    assert_clean_error(ktt("predict", "db_linear", "shop", "x", "--onnx", tmp_path / "none", expect=None),
                       "no such folder")
    info = json.loads((copy / "ktt.json").read_text())
    (copy / "ktt.json").write_text(json.dumps({**info, "format": "something-else"}))
    assert_clean_error(ktt("predict", "db_linear", "shop", "x", "--onnx", copy, expect=None),
                       str(copy / "ktt.json"), "not a KTT ONNX export")
    (copy / "ktt.json").write_text("{not json")
    assert_clean_error(ktt("predict", "db_linear", "shop", "x", "--onnx", copy, expect=None), str(copy / "ktt.json"))


def test_failed_verification_writes_nothing(exported, monkeypatch, tmp_path):
    from ktt_core.export import export_with_hook, parity

    plugins = Plugins()
    model = load_model(plugins, "db_linear", exported["runs"]["db_linear"] / "best.pt")
    target = tmp_path / "onnx"
    shutil.copytree(exported["onnx"]["db_linear"], target)  # a previous export
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    monkeypatch.setattr(parity, "TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(KttError, match="onnxruntime differs from the model"):
        export_with_hook(plugins, model, "onnx", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no temporary folder left
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before  # the old export untouched


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # the exporter's own
def test_sparse_ops_export_exactly_with_negative_values(tmp_path):
    """The exporter's ScatterElements translation of ``scatter_reduce`` (include_self False
    and True) gives torch's results, also for negative values that an init of 0 would hide."""
    import onnxruntime as ort

    from ktt_core.ops import leaves_to_levels, max_over_descendants

    ancestors = torch.tensor([[0, 0], [0, 1], [1, 2], [2, 3], [2, 4]])
    parents = [None, torch.tensor([0, 0, 1, 2, 2])]

    class Ops(torch.nn.Module):
        def forward(self, leaves, top):
            amax = leaves_to_levels(leaves, ancestors, [3, 5], reduce="amax")
            total = leaves_to_levels(leaves, ancestors, [3, 5], reduce="sum")
            mcm = max_over_descendants([top, leaves], parents)
            return torch.cat(amax + total + mcm, dim=1)

    rng = np.random.default_rng(0)
    leaves = torch.from_numpy(rng.normal(-3, 1, (4, 5)).astype(np.float32))
    top = torch.from_numpy(rng.normal(-6, 1, (4, 3)).astype(np.float32))
    path = tmp_path / "ops.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(Ops().eval(), (leaves, top), str(path), dynamo=True, external_data=False, verbose=False,
                      input_names=["leaves", "top"], dynamic_shapes={"leaves": {0: batch}, "top": {0: batch}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (slice(0, 4), slice(1, 2)):
        want = Ops()(leaves[rows], top[rows]).numpy()
        got = session.run(None, {"leaves": leaves[rows].numpy(), "top": top[rows].numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
