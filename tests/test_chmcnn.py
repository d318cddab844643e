"""The ktt-chmcnn plugin: DB-AC-HMCNN end to end, MCLoss by hand, the MCM's invariants."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, check_trained_model, train_model
from hypothesis import given, settings
from hypothesis import strategies as st

from ktt_core.checkpoint import load_checkpoint, save_checkpoint
from ktt_core.decoding import decode, decode_levels
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.ops import multi_hot
from ktt_core.plugins import Plugins
from ktt_core.tuning import validate_space
from ktt_chmcnn import DEFAULTS
from ktt_chmcnn.model import ACHMCNNHead, max_constraint, mc_loss

MODEL = "db_achmcnn"
SMALL_NET = ["--set", "h_hidden_dim=64", "--set", "h_layer_count=2"]
FAST = ["--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "h_dropout=0.0",
        "--set", "scheduler=constant",
        "--set", "train_batch_size=16", *SMALL_NET]


def import_shop(ktt, csv, name="shop", *extra):
    ktt("import", csv, name, "--text", "title", "--labels", "category", "--sep", " > ", *extra)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# -- end to end through the CLI -------------------------------------------------------------


def test_db_achmcnn_end_to_end_and_checkpoint_round_trip(ktt, synthetic_csv, tiny_encoder, workspace, tmp_path):
    import_shop(ktt, synthetic_csv)
    for bad, needles in (("h_nonlinear=gelu", ("'h_nonlinear'", "relu or tanh", "gelu")),
                         ("h_dropout=1.5", ("'h_dropout'", "[0, 1)")),
                         ("h_layer_count=0", ("'h_layer_count'", "positive integer"))):
        assert_clean_error(ktt("train", MODEL, "shop", "--dry-run", "--set", f"encoder={tiny_encoder}",
                               "--set", bad, expect=None), *needles)

    run = train_model(ktt, workspace, MODEL, "shop", tiny_encoder, *FAST)
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["h_hidden_dim"], config["h_layer_count"], config["h_nonlinear"]) == (64, 2, "relu")
    check_trained_model(ktt, MODEL, run)

    # A model saved again from a loaded checkpoint reloads to identical outputs.
    plugins = Plugins()
    spec = plugins.model(MODEL)

    def rebuild(path):
        return plugins.hook.ktt_load_model(spec=spec, checkpoint=load_checkpoint(path)).eval()

    first = rebuild(run / "best.pt")
    again = rebuild(save_checkpoint(tmp_path / "again.pt", first))
    assert type(first.head) is ACHMCNNHead
    batch = first.tokenizer(["household pan", "edible juice"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert torch.equal(first(batch["input_ids"], batch["attention_mask"]),
                           again(batch["input_ids"], batch["attention_mask"]))


def test_depth_one_hierarchy(ktt, synthetic_csv, tiny_encoder, workspace):
    # One level: the MCM is the identity and MCLoss is the plain BCE of the sigmoids.
    import_shop(ktt, synthetic_csv, "top", "--depth", "1")
    ktt("train", MODEL, "top", "--epochs", 2, "--set", f"encoder={tiny_encoder}", *FAST)
    metrics = json.loads(ktt("test", MODEL, "top", "--json").output)
    assert metrics["exact_path_accuracy"] > 0.5, metrics  # 3 classes
    assert metrics["consistency_rate_per_level"] == 1.0
    prediction = json.loads(ktt("predict", MODEL, "top", "playful jigsaw", "--json").output)
    assert prediction["path"] == ["Toys"]

    h = Hierarchy.from_paths([("a",), ("b",), ("c",)])
    head = ACHMCNNHead(h, {**DEFAULTS, "h_dropout": 0.0}, 4).eval()
    z = torch.tensor([[0.5, -1.0, 2.0]])
    assert torch.equal(max_constraint(z, h.level_sizes, head.parents()), z)
    expected = -(math.log(sigmoid(0.5)) + math.log(1 - sigmoid(-1.0)) + math.log(1 - sigmoid(2.0))) / 3
    assert head.loss(z, torch.tensor([[0]])).item() == pytest.approx(expected, rel=1e-6)


# -- MCM and MCLoss on hand-computed values ----------------------------------------------------

# Level 1: A, B. Level 2: A>x, A>y, B>z. Classes in order [A, B, A>x, A>y, B>z].
SMALL = Hierarchy.from_paths([("A", "x"), ("A", "y"), ("B", "z")])
H = [[0.3, 0.2, 0.9, 0.8, 0.6],
     [0.7, 0.1, 0.4, 0.2, 0.5]]
TARGETS = [[0, 1], [1, 2]]  # row 1: A > y, row 2: B > z


def test_mc_loss_by_hand():
    assert SMALL.parent_of[1].tolist() == [0, 0, 1]
    logits = torch.tensor([[logit(p) for p in row] for row in H], dtype=torch.float64, requires_grad=True)
    parents = [None, torch.as_tensor(SMALL.parent_of[1])]
    (hA, hB, hx, hy, hz), (gA, gB, gx, gy, gz) = H
    # MCM(h): a class scores the max of itself and its descendants.
    mcm = torch.sigmoid(max_constraint(logits, SMALL.level_sizes, parents))
    assert mcm.flatten().tolist() == pytest.approx([max(hA, hx, hy), max(hB, hz), hx, hy, hz,
                                                    max(gA, gx, gy), max(gB, gz), gx, gy, gz])
    # Row 1, y = [1, 0, 0, 1, 0]: A is credited by its positive descendant y (0.8), not by
    # x (0.9, negative); B is charged its best descendant z.
    row1 = [math.log(max(hA, hy)), math.log(1 - max(hB, hz)), math.log(1 - hx), math.log(hy), math.log(1 - hz)]
    # Row 2, y = [0, 1, 0, 0, 1]: A is charged its best descendant (itself, 0.7); B is
    # credited by z (0.5).
    row2 = [math.log(1 - max(gA, gx, gy)), math.log(max(gB, gz)), math.log(1 - gx), math.log(1 - gy),
            math.log(gz)]
    expected = -(sum(row1) + sum(row2)) / 10
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float64)
    assert torch.equal(multi_hot(torch.tensor(TARGETS), SMALL.level_offsets), y.float())
    loss = mc_loss(logits, y, SMALL.level_sizes, parents)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # The gradient goes to the descendant that earned (or cost) the max: row 1's A gets none
    # from its positive term (y won it) and B none from its negative term (z did).
    loss.backward()
    grad = logits.grad
    assert grad[0, 0].item() == 0 and grad[0, 1].item() == 0
    # y (row 1) appears twice, as A's positive max and as itself: d/dz -log sigmoid(z) = -(1 - h).
    assert grad[0, 3].item() == pytest.approx(2 * -(1 - hy) / 10, rel=1e-6)
    # z (row 1) appears twice as a negative: d/dz -log(1 - sigmoid(z)) = h.
    assert grad[0, 4].item() == pytest.approx(2 * hz / 10, rel=1e-6)

    # The head: forward's logits, MCLoss over multi_hot(targets), logs of the MCM per level.
    head = ACHMCNNHead(SMALL, {**DEFAULTS, "h_dropout": 0.0}, 4)
    outputs = logits.detach().float()
    assert head.loss(outputs, torch.tensor(TARGETS)).item() == pytest.approx(expected, rel=1e-5)
    levels = head.level_log_scores(outputs)
    assert levels[0].exp().flatten().tolist() == pytest.approx([0.9, 0.6, 0.7, 0.5], rel=1e-5)
    assert levels[1].exp().flatten().tolist() == pytest.approx([0.9, 0.8, 0.6, 0.4, 0.2, 0.5], rel=1e-5)
    # Path score (core default): the product of the MCM scores along the path.
    assert head.path_log_scores(outputs)[0].exp().tolist() == pytest.approx([0.81, 0.72, 0.36], rel=1e-5)
    # Per-level decoding of row 2: A (0.7) at level 1, B > z (0.5) at level 2: inconsistent;
    # the consistent decoding picks the best path, A > x (0.7 * 0.4 = 0.28 > 0.25 = 0.5 * 0.5).
    predictions = decode(SMALL, head.path_log_scores(outputs).numpy(),
                         level_log_scores=[s.numpy() for s in levels])
    assert predictions.level_ids.tolist() == [[0, 0], [0, 0]]
    assert decode_levels(SMALL, predictions, "per-level").tolist() == [[0, 0], [0, 2]]


# -- MCM invariants on random hierarchies ------------------------------------------------------

labels = st.sampled_from(list("abcde"))
paths = st.lists(st.lists(labels, min_size=1, max_size=4).map(tuple), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(paths, st.integers(0, 2**31 - 1))
def test_mcm_parent_scores_at_least_its_children(paths, seed):
    h = Hierarchy.from_paths(paths)
    head = ACHMCNNHead(h, {**DEFAULTS, "h_hidden_dim": 8, "h_layer_count": 2}, 4).eval()
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn((5, h.n_classes), generator=g) * 4
    levels = head.level_log_scores(outputs)
    for d in range(1, h.depth):
        parent_scores = levels[d - 1][:, torch.as_tensor(h.parent_of[d])]
        assert bool((parent_scores >= levels[d]).all()), d
    for scores in levels:
        assert bool(torch.isfinite(scores).all()) and bool((scores <= 0).all())
    # The sparse MCM equals the dense definition MCM_j = max_k M[j, k] h_k of the original.
    M = torch.as_tensor(h.M(), dtype=torch.bool)
    h_scores = torch.sigmoid(outputs.double())
    dense = torch.where(M[None], h_scores[:, None, :], torch.zeros((), dtype=torch.float64)).amax(dim=2)
    assert torch.allclose(torch.cat(levels, dim=1).double().exp(), dense, atol=1e-6)
    # Decoding on the head's path scores picks paths that exist in the hierarchy.
    predictions = decode(h, head.path_log_scores(outputs).numpy(), level_log_scores=[x.numpy() for x in levels])
    assert h.is_consistent(predictions.level_ids).all()
    assert all(tuple(ids) in {tuple(row) for row in h.leaf_ancestors} for ids in predictions.level_ids)
    # MCLoss equals the original's dense formulation, and is finite and differentiable.
    targets = torch.as_tensor(h.leaf_ancestors[torch.randint(h.n_leaves, (5,), generator=g).numpy()])
    y = multi_hot(targets, h.level_offsets).double()
    constrained = torch.where(M[None], (h_scores * y)[:, None, :], torch.zeros((), dtype=torch.float64)).amax(dim=2)
    train_output = y * constrained + (1 - y) * dense  # C-HMCNN's training output
    reference = torch.nn.functional.binary_cross_entropy(train_output, y)
    outputs.requires_grad_()
    loss = head.loss(outputs, targets)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4, abs=1e-6)
    loss.backward()
    assert bool(torch.isfinite(outputs.grad).all())


def test_scales_to_5000_leaves_without_dense_matrices():
    h = Hierarchy.from_paths([(f"t{i}", f"m{j}", f"l{k}") for i in range(10) for j in range(20) for k in range(25)])
    assert h.level_sizes == [10, 200, 5000]
    head = ACHMCNNHead(h, {**DEFAULTS, "h_hidden_dim": 64, "h_layer_count": 2}, 32)
    # Memory linear in the classes: nothing of size classes x classes (or leaves x classes).
    sizes = [t.numel() for t in [*head.buffers(), *head.parameters()]]
    assert max(sizes) <= 64 * h.n_classes < h.n_leaves * h.n_classes / 50
    outputs = head(torch.randn(16, 32))
    assert outputs.shape == (16, h.n_classes)
    loss = head.loss(outputs, torch.as_tensor(h.leaf_ancestors[np.arange(0, 5000, 313)]))
    loss.backward()
    assert math.isfinite(loss.item())
    assert head.path_log_scores(outputs.detach()).shape == (16, 5000)
    assert [s.shape for s in head.level_log_scores(outputs.detach())] == [(16, 10), (16, 200), (16, 5000)]


# -- configuration, registration, search space ----------------------------------------------


def test_registration_config_and_search_space():
    plugins = Plugins()
    spec = plugins.model(MODEL)
    assert spec.display_name == "Adapted C-HMCNN head" and spec.plugin == "ktt-chmcnn"
    assert spec.head_class is ACHMCNNHead
    assert {k: spec.defaults[k] for k in ("encoder_lr", "classifier_lr", "h_dropout", "h_nonlinear",
                                          "h_hidden_dim", "h_layer_count")} == \
        {"encoder_lr": 2e-5, "classifier_lr": 2e-3, "h_dropout": 0.1, "h_nonlinear": "relu",
         "h_hidden_dim": 512, "h_layer_count": 2}
    space = validate_space(dict(spec.search_space), spec, MODEL)
    assert {"encoder_lr", "classifier_lr", "h_dropout", "h_hidden_dim", "h_layer_count"} <= set(space)
    assert space["h_hidden_dim"]["type"] == "categorical"
    assert (space["h_layer_count"]["type"], space["h_layer_count"]["low"], space["h_layer_count"]["high"]) == \
        ("int", 1, 4)
    assert dict(plugins.model("db_linear").search_space) != space
    assert MODEL not in Plugins(load="db_linear").models
    assert MODEL in Plugins(load="db_achmcnn").models

    # Layers: h_layer_count linear layers, nonlinearity and dropout between them.
    for count in (1, 2, 3):
        head = ACHMCNNHead(SMALL, {**DEFAULTS, "h_layer_count": count, "h_nonlinear": "tanh"}, 4)
        linears = [m for m in head.network if isinstance(m, torch.nn.Linear)]
        assert len(linears) == count and linears[-1].out_features == SMALL.n_classes
        assert sum(isinstance(m, torch.nn.Tanh) for m in head.network) == count - 1
    for key, value in (("h_nonlinear", "gelu"), ("h_dropout", 1.0), ("h_dropout", -0.1),
                       ("h_hidden_dim", 0), ("h_layer_count", 2.5)):
        with pytest.raises(KttError, match=f"'{key}'"):
            ACHMCNNHead(SMALL, {**DEFAULTS, key: value}, 4)
