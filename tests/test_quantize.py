"""int8 quantization of an ONNX export (``ktt export --onnx --quantize int8``).

One module workspace: db_linear trained on the tiny encoder as the ``trained`` fixture
trains it (a confident model: an untrained one has near-ties that any rounding flips) and
exported once with ``--quantize int8``; a tfidf_lsgd run, alone and in an ensemble.
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import cli_in, synthetic_rows
from helpers import assert_clean_error, environment

from ktt_core.manifest import verify_manifest
from ktt_core.onnx_runtime import OnnxModel, open_onnx

LINE = re.compile(r"int8: exact-path accuracy (\d\.\d{4}) vs fp32 (\d\.\d{4}) \(([+-]\d\.\d{4})\) "
                  r"on (\d+) test rows; (\d+\.\d)x texts/s")
#: Quantization parity on the tiny encoder. Dynamic int8 rounds every weight to one of 127
#: steps of its channel's range (7-bit) and every activation to one of 255 of its batch's,
#: so scores move by a few hundredths at most: path probabilities may differ from fp32 by
#: up to 0.05 (measured: below 0.02), and
#: the best path may change only where two paths are nearly tied, for at most 10% of texts
#: (measured: none on these texts; the bundled sample with MiniLM changes 4%, docs/export.md).
PROB_TOLERANCE = 0.05
MIN_SAME_PATH = 0.90
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_encoder, synthetic_csv):
    workspace = tmp_path_factory.mktemp("quantize") / "ws"
    ktt = cli_in(workspace)
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--epochs", "4", "--set", f"encoder={tiny_encoder}",
        "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16",
        "--set", "dropout=0.0", "--set", "scheduler=constant")
    ktt("train", "tfidf_lsgd", "shop", "--set", "min_df=1")
    run = max((workspace / "runs" / "db_linear" / "shop").iterdir())
    output = ktt("export", "db_linear", "shop", "--onnx", "--quantize", "int8").output
    return {"workspace": workspace, "ktt": ktt, "run": run, "output": output,
            "fp32": run / "export" / "onnx", "int8": run / "export" / "onnx-int8"}


def _ops(folder) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node)


def test_export_prints_the_comparison_and_stores_it(quantized):
    out, int8 = quantized["output"], quantized["int8"]
    assert f"ONNX model written to {quantized['fp32']}" in out
    assert f"int8 ONNX model written to {int8} (ktt predict db_linear shop --onnx {int8} TEXT)" in out
    found = LINE.search(out)
    assert found, out
    accuracy_int8, accuracy_fp32, delta, rows, speedup = found.groups()
    # The whole test split (the check reads at most its first 2,000 rows).
    assert int(rows) == len(pd.read_parquet(quantized["workspace"] / "datasets" / "shop" / "test.parquet")) > 0
    assert float(delta) == pytest.approx(float(accuracy_int8) - float(accuracy_fp32), abs=1e-4)
    assert ("warning:" in out) == (float(accuracy_fp32) - float(accuracy_int8) > 0.005)

    info = json.loads((int8 / "ktt.json").read_text())
    stored = info.pop("quantization")
    assert stored["accuracy_int8"] == pytest.approx(float(accuracy_int8), abs=5e-5)
    assert stored["accuracy_fp32"] == pytest.approx(float(accuracy_fp32), abs=5e-5)
    assert stored["rows"] == int(rows) and stored["speedup"] == pytest.approx(float(speedup), abs=0.05)
    # Everything else is the fp32 export's, the calibration included; only the graph differs.
    reference = json.loads((quantized["fp32"] / "ktt.json").read_text())
    assert info.pop("quantized") == "int8" and "quantized" not in reference
    assert info.pop("sha256") != reference.pop("sha256")
    assert info == reference and info["calibration"] is not None


def test_int8_folder_loads_and_verifies(quantized):
    int8, fp32 = quantized["int8"], quantized["fp32"]
    assert sorted(p.name for p in int8.iterdir()) == sorted(p.name for p in fp32.iterdir())
    assert not [p for p in int8.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    verify_manifest(int8)
    runtime = OnnxModel(int8)  # checks model.onnx's sha256 against ktt.json
    reference = OnnxModel(fp32)
    assert runtime.info["quantized"] == "int8"
    assert runtime.calibration.to_dict() == reference.calibration.to_dict()
    assert runtime.hierarchy.to_dict() == reference.hierarchy.to_dict()
    assert (int8 / "tokenizer" / "tokenizer.json").read_bytes() == (fp32 / "tokenizer" / "tokenizer.json").read_bytes()


def test_int8_graph_holds_quantized_ops_and_is_smaller(quantized):
    int8, fp32 = quantized["int8"], quantized["fp32"]
    ops = _ops(int8)
    assert QUANTIZED_OPS <= set(ops), ops
    # Every MatMul and Gemm (the head's linear layer) with a constant weight became
    # MatMulInteger; the float MatMuls left are attention's, between two activations.
    graph = onnx.load(str(int8 / "model.onnx")).graph
    constants = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    assert "Gemm" in _ops(fp32) and "MatMul" in ops
    assert not QUANTIZED_OPS & set(_ops(fp32))
    # The tiny encoder's bytes are mostly its embedding table (30522 x 32 floats), which is
    # quantized too, so the file shrinks to about a quarter even for this small a model.
    ratio = (int8 / "model.onnx").stat().st_size / (fp32 / "model.onnx").stat().st_size
    assert ratio < 0.35, ratio


def test_int8_scores_like_fp32_within_tolerance(quantized):
    texts = synthetic_rows(200, seed=5)["title"].tolist() + ["x", "playful jigsaw " * 60]
    # Raw scores: calibration (the same in both) would only rescale the quantization error
    # (a sharp temperature fit on an easy validation split multiplies it).
    fp32, int8 = OnnxModel(quantized["fp32"]), OnnxModel(quantized["int8"])
    assert fp32.calibration == int8.calibration
    fp32.calibration = int8.calibration = None
    want, _ = fp32.run(texts)
    got, _ = int8.run(texts)
    worst = float(np.abs(got.path_probs - want.path_probs).max())
    same = float(np.mean(got.leaf_ids == want.leaf_ids))
    print(f"int8 vs fp32: max |path prob difference| {worst:.4f}, same best path {same:.3f}")
    assert worst <= PROB_TOLERANCE and same >= MIN_SAME_PATH


def test_predict_runs_the_int8_folder_unchanged(quantized):
    ktt, int8 = quantized["ktt"], quantized["int8"]
    texts = ["edible apple", "household pan great value pack new large blue"]
    options = ("--json", "--top-k", "2", "--no-calibration")  # raw: see the test above
    got = [json.loads(x) for x in ktt("predict", "db_linear", "shop", *texts, *options,
                                      "--onnx", int8).output.splitlines()]
    want = [json.loads(x) for x in ktt("predict", "db_linear", "shop", *texts, *options,
                                       "--onnx", quantized["fp32"]).output.splitlines()]
    assert [g["text"] for g in got] == texts and all(len(g["top_k"]) == 2 for g in got)
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=PROB_TOLERANCE)


def test_large_drop_warns_and_bento_stores_the_int8_export(quantized, monkeypatch, tmp_path):
    """A drop beyond 0.005 prints a warning but writes the export (the user decides); with
    --bento the model store holds the int8 folder, not an fp32 one stored before."""
    from ktt_core.export import bento, quantize

    ktt = quantized["ktt"]
    measured = quantize.exact_path_accuracy

    def worse_int8(runtime, data, batch_size):
        accuracy, seconds = measured(runtime, data, batch_size)
        return (accuracy - 0.05 if runtime.info.get("quantized") else accuracy), seconds

    monkeypatch.setattr(quantize, "exact_path_accuracy", worse_int8)
    with environment(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true"):
        ktt("export", "db_linear", "shop", "--onnx", "--bento")  # an fp32 export stored first
        out = ktt("export", "db_linear", "shop", "--onnx", "--quantize", "int8", "--bento").output
        tag = re.search(r"BentoML model saved: (\S+)", out).group(1)
        stored = bento.load_predictor(bento.stored_model_dir(tag), runtime="onnx")
    fp32, int8 = (float(x) for x in LINE.search(out).group(2, 1))
    assert fp32 - int8 == pytest.approx(0.05, abs=1e-4)
    assert re.search(r"^warning: int8 loses 0\.0500 exact-path accuracy \(more than 0\.005\)", out, re.MULTILINE), out
    assert json.loads((quantized["int8"] / "ktt.json").read_text())["quantization"]["accuracy_int8"] == \
        pytest.approx(int8, abs=5e-5)
    assert stored.info["quantized"] == "int8"


def test_quantize_needs_onnx(quantized):
    assert_clean_error(quantized["ktt"]("export", "db_linear", "shop", "--bento", "--quantize", "int8", expect=None),
                       "--quantize int8 goes with --onnx")


def test_tfidf_quantizes_its_linear_layer(quantized):
    """The TF-IDF graph (strings in, its own vectorizer) quantizes too: its linear layer over
    the TF-IDF vector becomes MatMulInteger; tokenizing and the vectorizer stay as they are."""
    ktt = quantized["ktt"]
    run = max((quantized["workspace"] / "runs" / "tfidf_lsgd" / "shop").iterdir())
    out = ktt("export", "tfidf_lsgd", "shop", "--onnx", "--quantize", "int8").output
    assert LINE.search(out), out
    fp32, int8 = run / "export" / "onnx", run / "export" / "onnx-int8"
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= set(_ops(int8)) and "Gemm" not in _ops(int8)
    assert {"Tokenizer", "TfIdfVectorizer"} <= set(_ops(int8))
    # The file shrinks by about 3/4 of the layer's float weights (the vocabulary, strings, stays).
    graph = onnx.load(str(fp32 / "model.onnx")).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    weights = next(t for t in graph.initializer if t.name == gemm.input[1])
    saved = (fp32 / "model.onnx").stat().st_size - (int8 / "model.onnx").stat().st_size
    assert saved > 0.6 * np.prod(weights.dims) * 4, saved
    texts = synthetic_rows(200, seed=6)["title"].tolist() + ["Crème brûlée 製品 ✓ 100%"]
    want, _ = OnnxModel(fp32).run(texts)
    got, _ = OnnxModel(int8).run(texts)
    assert float(np.abs(got.path_probs - want.path_probs).max()) <= PROB_TOLERANCE
    assert float(np.mean(got.leaf_ids == want.leaf_ids)) >= MIN_SAME_PATH


def test_graphs_dynamic_quantization_cannot_handle_are_refused(quantized, tmp_path):
    """Refused with one line, never a crash: custom operators with undeclared output types
    (onnx's shape inference may segfault on them) and a graph with no weights to quantize."""
    from onnx import TensorProto, helper

    from ktt_core.errors import KttError
    from ktt_core.export.quantize import quantize_graph

    run = max((quantized["workspace"] / "runs" / "tfidf_lsgd" / "shop").iterdir())
    graph = onnx.load(str(run / "export" / "onnx" / "model.onnx"))
    del graph.graph.value_info[:]  # as the TF-IDF graph was before it declared its Tokenizer outputs
    onnx.save(graph, str(tmp_path / "untyped.onnx"))
    with pytest.raises(KttError, match=r"output '\w+' of its com\.microsoft\.Tokenizer node has no declared type"):
        quantize_graph(tmp_path / "untyped.onnx", tmp_path / "out.onnx")

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(KttError, match="no weights dynamic quantization quantizes"):
        quantize_graph(tmp_path / "plain.onnx", tmp_path / "out.onnx")


def test_ensemble_quantizes_every_member(quantized):
    ktt, workspace = quantized["ktt"], quantized["workspace"]
    ktt("train", "ensemble", "shop", "--set", "members=db_linear,tfidf_lsgd")
    run = max((workspace / "runs" / "ensemble" / "shop").iterdir())
    out = ktt("export", "ensemble", "shop", "--onnx", "--quantize", "int8").output
    assert LINE.search(out), out
    int8 = run / "export" / "onnx-int8"
    info = json.loads((int8 / "ktt.json").read_text())
    assert info["quantized"] == "int8" and info["quantization"]["rows"] > 0
    for member in (int8 / "members" / "0", int8 / "members" / "1"):  # db_linear, tfidf_lsgd
        assert json.loads((member / "ktt.json").read_text())["quantized"] == "int8"
        assert "MatMulInteger" in _ops(member)
        verify_manifest(member)
    assert open_onnx(int8).info["quantized"] == "int8"
    lines = ktt("predict", "ensemble", "shop", "edible apple", "--json", "--onnx", int8).output.splitlines()
    assert json.loads(lines[0])["text"] == "edible apple"


def test_serve_quantize_stores_and_serves_the_int8_export(quantized, monkeypatch, tmp_path):
    """``ktt serve --runtime onnx --quantize int8`` up to starting the service (stopped there:
    the HTTP side is the same as for any ONNX export, tests/test_serving.py)."""
    import socket

    from ktt_core.errors import KttError
    from ktt_core.export import bento
    from ktt_core.serving import launch

    ktt = quantized["ktt"]
    assert_clean_error(ktt("serve", "db_linear", "shop", "--quantize", "int8", expect=None),
                       "--quantize int8 goes with --runtime onnx")
    started = {}

    def stop_before_starting(service, host, port, env):
        started.update(env)
        raise KttError("not started in this test")

    monkeypatch.setattr(launch, "start_service", stop_before_starting)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with environment(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true"):
        out = ktt("serve", "db_linear", "shop", "--runtime", "onnx", "--quantize", "int8", "--port", port,
                  expect=None).output
        stored = bento.load_predictor(bento.stored_model_dir(started["KTT_BENTO_MODEL"]), runtime="onnx")
    assert LINE.search(out) and "(onnx int8, single layout, " in out, out
    assert started["KTT_RUNTIME"] == "onnx" and stored.info["quantized"] == "int8"
