"""The ktt-db-bhcn plugin: DB-BHCN and DB-BHCN-AWX end to end, their losses, AWX's invariants."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, check_trained_model, train_model
from hypothesis import given, settings
from hypothesis import strategies as st

from ktt_core.decoding import decode, decode_levels
from ktt_core.hierarchy import Hierarchy
from ktt_core.plugins import Plugins
from ktt_core.tuning import validate_space
from ktt_db_bhcn import AWX_DEFAULTS, BHCN_DEFAULTS
from ktt_db_bhcn.model import BHCNAWXHead, BHCNHead, awx_scores, hierarchical_loss, level_weights



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: one intra-op thread is as fast, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = ["--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2", "--set", "dropout=0.0",
        "--set", "scheduler=constant",
        "--set", "train_batch_size=16"]


def import_shop(ktt, csv, name="shop", *extra):
    ktt("import", csv, name, "--text", "title", "--labels", "category", "--sep", " > ", *extra)


def test_db_bhcn_end_to_end(ktt, synthetic_csv, tiny_encoder, workspace):
    import_shop(ktt, synthetic_csv)
    assert_clean_error(ktt("train", "db_bhcn", "shop", "--dry-run", "--set", f"encoder={tiny_encoder}",
                           "--set", "nonlinear=gelu", expect=None), "'nonlinear'", "relu or tanh", "gelu")
    run = train_model(ktt, workspace, "db_bhcn", "shop", tiny_encoder, *FAST)
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["lambda_H"], config["gamma_L"], config["nonlinear"]) == (0.7, -0.1, "relu")
    check_trained_model(ktt, "db_bhcn", run)


def test_db_bhcn_awx_end_to_end_and_norms(ktt, synthetic_csv, tiny_encoder, workspace):
    import_shop(ktt, synthetic_csv)
    run = train_model(ktt, workspace, "db_bhcn_awx", "shop", tiny_encoder, *FAST)  # awx_norm 5, the default
    check_trained_model(ktt, "db_bhcn_awx", run)
    for norm in (0, 1):  # max mode and the clamped sum both train
        train_model(ktt, workspace, "db_bhcn_awx", "shop", tiny_encoder, *FAST, "--set", f"awx_norm={norm}")
        metrics = json.loads(ktt("test", "db_bhcn_awx", "shop", "--json").output)
        assert metrics["exact_path_accuracy"] > 0.6, (norm, metrics)
        if norm == 0:  # max mode: the per-level argmaxes are the best leaf's ancestors
            assert metrics["consistency_rate_per_level"] == 1.0


def test_depth_one_hierarchy(ktt, synthetic_csv, tiny_encoder, workspace):
    import_shop(ktt, synthetic_csv, "top", "--depth", "1")
    for model in ("db_bhcn", "db_bhcn_awx"):
        ktt("train", model, "top", "--epochs", "2", "--set", f"encoder={tiny_encoder}", *FAST)
        metrics = json.loads(ktt("test", model, "top", "--json").output)
        assert metrics["exact_path_accuracy"] > 0.5, (model, metrics)  # 3 classes
        assert metrics["consistency_rate_per_level"] == 1.0
        prediction = json.loads(ktt("predict", model, "top", "playful jigsaw", "--json").output)
        assert prediction["path"] == ["Toys"]


# -- losses on hand-computed values -----------------------------------------------------

# Level 1: A, B. Level 2: A>x, A>y, B>z.
SMALL = Hierarchy.from_paths([("A", "x"), ("A", "y"), ("B", "z")])
P1 = [[0.8, 0.2], [0.3, 0.7]]
P2 = [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]
TARGETS = [[0, 1], [1, 2]]  # row 1: A > y, row 2: B > z


def test_level_weights():
    # 1 - linspace(-gamma, gamma, D)
    assert level_weights(2, -0.1).tolist() == pytest.approx([0.9, 1.1])
    assert level_weights(3, 0.2).tolist() == pytest.approx([1.2, 1.0, 0.8])
    assert level_weights(1, -0.1).tolist() == pytest.approx([0.9])


def test_bhcn_losses_by_hand():
    log_probs = [torch.tensor(P1).log().requires_grad_(), torch.tensor(P2).log().requires_grad_()]
    parents = [None, torch.as_tensor(SMALL.parent_of[1])]
    assert SMALL.parent_of[1].tolist() == [0, 0, 1]
    # Row 1: the predicted child is A>y (p 0.6), its parent A; row 2: A>x (p 0.5), parent A.
    expected_h = (0.6 * -math.log(0.8) + 0.5 * -math.log(0.3)) / 2
    h = hierarchical_loss(log_probs, parents)
    assert h.item() == pytest.approx(expected_h, rel=1e-6)
    h.backward()  # f is detached: the term does not teach the child level
    assert log_probs[1].grad is None and log_probs[0].grad is not None

    config = {**BHCN_DEFAULTS, "dropout": 0.0}  # gamma_L -0.1: w = [0.9, 1.1]
    head = BHCNHead(SMALL, config, 4)
    outputs = torch.cat([torch.tensor(P1).log(), torch.tensor(P2).log()], dim=1)  # logits = log-probs
    expected_local = (0.9 * (-math.log(0.8) - math.log(0.7)) / 2
                      + 1.1 * (-math.log(0.6) - math.log(0.3)) / 2)
    expected = 1.0 * expected_local + 0.7 * expected_h
    assert float(head.loss(outputs, torch.tensor(TARGETS))) == pytest.approx(expected, rel=1e-6)
    levels = head.level_log_scores(outputs)
    assert torch.allclose(levels[1].exp(), torch.tensor(P2))
    # Path score: the sum of the per-level log-probabilities along the path.
    assert torch.allclose(head.path_log_scores(outputs)[0].exp(),
                          torch.tensor([0.8 * 0.1, 0.8 * 0.6, 0.2 * 0.3]))


def test_awx_scores_and_loss_by_hand():
    leaves = torch.tensor([[0.5, 0.6, 0.9]])
    ancestors = torch.as_tensor(SMALL.leaf_ancestors)
    top = {n: awx_scores(leaves, ancestors, SMALL.level_sizes, n)[0][0].tolist() for n in (0, 1, 2)}
    assert top[0] == pytest.approx([0.6, 0.9])
    assert top[1] == pytest.approx([1 - 1e-6, 0.9])  # 1.1, clamped
    assert top[2] == pytest.approx([math.sqrt(0.25 + 0.36), 0.9])
    assert awx_scores(leaves, ancestors, SMALL.level_sizes, 2)[1][0].tolist() == pytest.approx([0.5, 0.6, 0.9])

    head = BHCNAWXHead(SMALL, {**AWX_DEFAULTS, "awx_norm": 0, "dropout": 0.0}, 4)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    outputs = torch.tensor([[0.0, 0.0, logit(0.5), logit(0.6), logit(0.9)]])
    # Local: w = 1 - linspace(0.34, -0.34, 2) = [0.66, 1.34]; softmax(0, 0) = 0.5 each;
    # level 2 softmax of the leaf logits, target A > y.
    e = [math.exp(logit(p)) for p in (0.5, 0.6, 0.9)]
    local = 0.66 * -math.log(0.5) + 1.34 * -math.log(e[1] / sum(e))
    # BCE over the 5 classes [A, B, A>x, A>y, B>z] = [0.6, 0.9, 0.5, 0.6, 0.9], target A, A>y.
    bce = -(math.log(0.6) + math.log(0.1) + math.log(0.5) + math.log(0.6) + math.log(0.1)) / 5
    loss = head.loss(outputs, torch.tensor([[0, 1]]))
    assert loss.item() == pytest.approx(0.73 * local + bce, rel=1e-5)


# -- AWX invariants on random hierarchies -----------------------------------------------

labels = st.sampled_from(list("abcde"))
paths = st.lists(st.lists(labels, min_size=1, max_size=4).map(tuple), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(paths, st.sampled_from([0, 1, 5]), st.integers(0, 2**31 - 1))
def test_awx_parent_scores_at_least_its_children(paths, norm, seed):
    h = Hierarchy.from_paths(paths)
    head = BHCNAWXHead(h, {**AWX_DEFAULTS, "awx_norm": norm}, 4).eval()
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn((5, h.n_classes), generator=g) * 4
    levels = head.level_log_scores(outputs)
    for d in range(1, h.depth):
        parent_scores = levels[d - 1][:, torch.as_tensor(h.parent_of[d])]
        assert bool((parent_scores >= levels[d]).all()), (norm, d)
    for scores in levels:
        assert bool(torch.isfinite(scores).all()) and bool((scores < 0).all())
    predictions = decode(h, head.path_log_scores(outputs).numpy(), level_log_scores=[x.numpy() for x in levels])
    assert h.is_consistent(predictions.level_ids).all()
    assert all(tuple(ids) in {tuple(row) for row in h.leaf_ancestors} for ids in predictions.level_ids)
    if norm == 0:  # max mode: per-level argmax is consistent too
        assert h.is_consistent(decode_levels(h, predictions, "per-level")).all()
    # The loss is finite and differentiable for any target path.
    outputs.requires_grad_()
    targets = torch.as_tensor(h.leaf_ancestors[torch.randint(h.n_leaves, (5,), generator=g).numpy()])
    head.loss(outputs, targets).backward()
    assert bool(torch.isfinite(outputs.grad).all())


def test_awx_scales_to_5000_leaves_without_dense_matrices():
    h = Hierarchy.from_paths([(f"t{i}", f"m{j}", f"l{k}") for i in range(10) for j in range(20) for k in range(25)])
    assert h.level_sizes == [10, 200, 5000]
    for norm in (0, 5):
        head = BHCNAWXHead(h, {**AWX_DEFAULTS, "awx_norm": norm}, 32)
        # Memory linear in the classes: nothing of size leaves x classes is kept.
        sizes = [t.numel() for t in [*head.buffers(), *head.parameters()]]
        assert max(sizes) < 2 * (32 + 200) * 5000 < h.n_leaves * h.n_classes / 4
        outputs = head(torch.randn(16, 32))
        assert outputs.shape == (16, h.n_classes)
        loss = head.loss(outputs, torch.as_tensor(h.leaf_ancestors[np.arange(0, 5000, 313)]))
        loss.backward()
        assert math.isfinite(loss.item())
        assert head.path_log_scores(outputs.detach()).shape == (16, 5000)


# -- registration, search space, plugin selection -----------------------------------------


def test_registration_and_search_space():
    plugins = Plugins()
    bhcn, awx = plugins.model("db_bhcn"), plugins.model("db_bhcn_awx")
    assert (bhcn.display_name, awx.display_name) == ("BHCN head", "BHCN+AWX head")
    assert bhcn.plugin == awx.plugin == "ktt-db-bhcn"
    assert bhcn.defaults["gamma_L"] == -0.1 and awx.defaults["awx_norm"] == 5
    for spec in (bhcn, awx):
        space = validate_space(dict(spec.search_space), spec, spec.name)
        assert {"encoder_lr", "classifier_lr", "dropout", "gamma_L", "lambda_L"} <= set(space)
    assert "lambda_H" in dict(bhcn.search_space)
    assert dict(awx.search_space)["awx_norm"]["choices"] == [0, 1, 2, 5, 10]
    assert "db_bhcn" not in Plugins(load="db_linear").models
    assert {"db_bhcn", "db_bhcn_awx"} <= set(Plugins(load="db_bhcn").models)
    head = BHCNHead(SMALL, {**BHCN_DEFAULTS, "nonlinear": "tanh"}, 4)
    assert isinstance(head.phi, torch.nn.Tanh)
