"""The core's `ensemble` model: a torch member and a scikit-learn member combined, through
train, test, predict, ONNX, a real served request, and every way a member can be wrong."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest

from ktt_core.ensemble import combine_scores, fit_weights, log_normalise, weight_grid

from helpers import environment

TINY = ("--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "train_batch_size=16",
        "--set", "dropout=0.0")


@pytest.fixture
def members(ktt, trained, workspace):
    """`shop` with a tiny db_linear run (the `trained` fixture) and a tfidf_lsgd run."""
    ktt("train", "tfidf_lsgd", "shop", "--set", "min_df=1")
    return {"db_linear": trained, "tfidf_lsgd": max((workspace / "runs" / "tfidf_lsgd" / "shop").iterdir())}


def test_combination_rules_and_weight_fit():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    both = combine_scores([a, b], [0.5, 0.5], "probability")
    np.testing.assert_allclose(np.exp(both), 0.5 * np.exp(log_normalise(a)) + 0.5 * np.exp(log_normalise(b)))
    np.testing.assert_allclose(combine_scores([a, b], [1.0, 0.0], "log"), log_normalise(a))
    grid = weight_grid(3)
    assert np.allclose(grid.sum(axis=1), 1) and len(grid) == 231 and (grid >= 0).all()
    truth = log_normalise(b).argmax(axis=1)  # member b is always right
    weights, combine, accuracy = fit_weights([a, b], truth, ("probability", "log"))
    assert accuracy == 1.0 and weights[1] > weights[0]


def test_ensemble_of_a_transformer_and_a_tfidf_run(ktt, members, workspace, tmp_path):
    out = ktt("train", "ensemble", "shop", "--set", "members=db_linear,tfidf_lsgd").output
    assert f"member db_linear: {members['db_linear']}" in out and "weights db_linear" in out
    run = max((workspace / "runs" / "ensemble" / "shop").iterdir())
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["combine"] in ("probability", "log") and sum(record["weights"]) == pytest.approx(1.0)
    # On validation it is at least as good as its best member (each member is a point of the grid).
    member_scores = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["val_exact_path_accuracy"]
                     for r in members.values()]
    assert record["val_exact_path_accuracy"] >= max(member_scores) - 1e-9

    metrics = json.loads(ktt("test", "ensemble", "shop", "--json").output)
    assert metrics["exact_path_accuracy"] > 0.8 and metrics["consistency_rate"] == 1.0
    predicted = json.loads(ktt("predict", "ensemble", "shop", "household pan new", "--json", "--top-k", "3").output)
    assert predicted["path"] == ["Home", "Kitchen"] and len(predicted["top_k"]) == 3

    # The checkpoint is self-contained: the members' runs can go.
    before = ktt("predict", "ensemble", "shop", "playful doll", "edible juice", "--json").output
    for folder in members.values():
        shutil.rmtree(folder)
    assert ktt("predict", "ensemble", "shop", "playful doll", "edible juice", "--json").output == before

    # ONNX: one folder per member; the runtime combines them as the model does.
    ktt("export", "ensemble", "shop", "--onnx")
    folder = run / "export" / "onnx"
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["0", "1"]
    info = json.loads((folder / "ktt.json").read_text())
    assert info["format"] == "ktt-onnx-ensemble" and [m["model"] for m in info["members"]] == ["db_linear",
                                                                                                 "tfidf_lsgd"]
    via_onnx = ktt("predict", "ensemble", "shop", "playful doll", "edible juice", "--json", "--onnx", folder).output
    for a, b in zip(before.splitlines(), via_onnx.splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["path"] == b["path"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_fixed_weights_and_rule(ktt, members, workspace):
    ktt("train", "ensemble", "shop", "--set", f"members={members['tfidf_lsgd']},db_linear",
        "--set", "weights=3,1", "--set", "combine=log")
    record = json.loads(max((workspace / "runs" / "ensemble" / "shop").iterdir()).joinpath(
        "metrics.jsonl").read_text())
    assert record["weights"] == [0.75, 0.25] and record["combine"] == "log"


def test_bad_members_and_weights_are_refused_by_name(ktt, members, workspace, synthetic_csv, tmp_path):
    def refused(*sets, needles):
        result = ktt("train", "ensemble", "shop", *[x for s in sets for x in ("--set", s)], expect=None)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and all(n in last for n in needles), last

    refused("members=db_linear", needles=["at least two"])
    refused(needles=["at least two"])
    refused("members=db_linear,nosuch", needles=["unknown model 'nosuch'"])
    refused("members=db_linear,db_bhcn", needles=["ensemble member db_bhcn", "no trained run of db_bhcn on shop"])
    refused(f"members=db_linear,{tmp_path / 'gone'}", needles=["no such run folder"])
    refused("members=db_linear,tfidf_lsgd", "weights=1,2,3", needles=["'weights' has 3 numbers for 2 members"])
    refused("members=db_linear,tfidf_lsgd", "weights=1,-1", needles=["non-negative"])
    refused("members=db_linear,tfidf_lsgd", "weights=a,b", needles=["comma-separated numbers"])

    damaged = tmp_path / "damaged"
    shutil.copytree(members["tfidf_lsgd"], damaged)
    data = (damaged / "best.pt").read_bytes()
    (damaged / "best.pt").write_bytes(data[: len(data) // 2])
    refused(f"members=db_linear,{damaged}", needles=[str(damaged / "best.pt"), "corrupt or truncated"])

    # A run of another dataset; then the same dataset name re-imported with other labels.
    ktt("import", synthetic_csv, "other", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "tfidf_lsgd", "other")
    other_run = max((workspace / "runs" / "tfidf_lsgd" / "other").iterdir())
    refused(f"members=db_linear,{other_run}", needles=["trained on dataset 'other', not 'shop'"])
    relabelled = pd.read_csv(synthetic_csv)
    relabelled["category"] = relabelled["category"].str.replace("Kitchen", "Cookware")
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    ktt("import", tmp_path / "relabelled.csv", "shop", "--text", "title", "--labels", "category", "--sep", " > ",
        "--force")
    refused("members=db_linear,tfidf_lsgd", needles=["another label hierarchy"])


@pytest.mark.filterwarnings("ignore")
def test_served_ensemble_answers_like_the_cli(ktt, members, workspace, tmp_path):
    from ktt_core.serving.launch import stop_service, wait_ready

    ktt("train", "ensemble", "shop", "--set", "members=db_linear,tfidf_lsgd")
    texts = ["household pan new", "playful doll value"]
    offline = [json.loads(line)["path"] for line in ktt("predict", "ensemble", "shop", *texts, "--json").output.splitlines()]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with environment(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true"):
        log = open(tmp_path / "serve.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "ktt_core", "--workspace", str(workspace), "serve",
                                    "ensemble", "shop", "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(process, f"http://127.0.0.1:{port}", timeout=240)
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": texts, "top_k": 2}, timeout=60)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model"] == "ensemble"
            assert [p["path"] for p in body["predictions"]] == offline
            assert len(body["predictions"][0]["top_k"]) == 2
        finally:
            stop_service(process, grace=30)
            log.close()
    assert process.returncode is not None
