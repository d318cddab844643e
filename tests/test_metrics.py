"""Metrics on small hand-checked examples."""
from __future__ import annotations

import numpy as np
import pytest

from ktt_core.decoding import decode, describe, level_probs
from ktt_core.hierarchy import Hierarchy
from ktt_core.metrics import compute_metrics

H = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1"), ("C",)])


def ids(*paths):
    return np.stack([H.encode(p) for p in paths])


def test_hand_computed_example():
    true = ids(("A", "a1"), ("A", "a2"), ("B", "b1"), ("C",))
    pred = ids(("A", "a1"), ("A", "a1"), ("A", "a2"), ("C",))
    m = compute_metrics(H, true, pred)
    assert m["exact_path_accuracy"] == pytest.approx(2 / 4)
    assert m["level_1_accuracy"] == pytest.approx(3 / 4)
    assert m["level_2_accuracy"] == pytest.approx(2 / 4)
    # real nodes: true sets have 2+2+2+1 = 7, predicted 2+2+2+1 = 7; overlap 2+1+0+1 = 4
    assert m["hierarchical_precision"] == pytest.approx(4 / 7)
    assert m["hierarchical_recall"] == pytest.approx(4 / 7)
    assert m["consistency_rate"] == 1.0
    assert m["leaf_accuracy"] == m["level_2_accuracy"]


def test_partial_and_inconsistent_predictions():
    true = ids(("A", "a1"), ("B", "b1"))
    stopped = np.array([H.encode(("A", "a1"))[0], -1])          # stops at level 1: "A"
    inconsistent = np.array([H.encode(("A", "a1"))[0], H.encode(("B", "b1"))[1]])
    m = compute_metrics(H, true, np.stack([stopped, inconsistent]))
    assert m["consistency_rate"] == 0.5
    # predicted real nodes: 1 + 2; true 2 + 2; overlap: A (row 1) + b1 (row 2) = 2
    assert m["hierarchical_precision"] == pytest.approx(2 / 3)
    assert m["hierarchical_recall"] == pytest.approx(2 / 4)


def test_decoding_gives_valid_paths_levels_and_top_k():
    log_scores = np.log(np.array([[0.5, 0.3, 0.1, 0.1]]))
    order = [H.levels[-1].index(n) for n in (("A", "a1"), ("A", "a2"), ("B", "b1"), ("C", ""))]
    scores = np.empty_like(log_scores)
    scores[0, order] = log_scores[0]
    p = decode(H, scores)
    assert np.allclose(p.path_probs.sum(1), 1)
    assert H.leaf_path(p.leaf_ids[0]) == ("A", "a1")
    level1 = level_probs(H, p.path_probs)[0][0]
    assert level1[H.classes[0].index("A")] == pytest.approx(0.8)
    out = describe(H, p.path_probs[0], top_k=3)
    assert out["path"] == ["A", "a1"]
    assert [lv["score"] for lv in out["levels"]] == pytest.approx([0.8, 0.5])
    assert [alt["path"] for alt in out["top_k"]] == [["A", "a1"], ["A", "a2"], ["B", "b1"]]
    m = compute_metrics(H, ids(("A", "a1")), p.level_ids, p.path_probs)
    assert m["leaf_auprc_micro"] == pytest.approx(1.0)


def test_threshold_stops_at_the_last_confident_level():
    # paths A>a1 0.45, A>a2 0.40, B>b1 0.10, C 0.05: "A" is sure (0.85), no child of it is
    scores = np.zeros((1, 4))
    for name, p in ((("A", "a1"), 0.45), (("A", "a2"), 0.40), (("B", "b1"), 0.10), (("C", ""), 0.05)):
        scores[0, H.levels[-1].index(name)] = np.log(p)
    p = decode(H, scores)
    from ktt_core.decoding import decode_levels

    assert decode_levels(H, p, threshold=0.5)[0].tolist() == [H.classes[0].index("A"), -1]
    assert decode_levels(H, p, threshold=0.4)[0].tolist() == H.encode(("A", "a1")).tolist()
    assert describe(H, p.path_probs[0], level_ids=decode_levels(H, p, threshold=0.5)[0])["path"] == ["A"]
    # per-level decoding of path marginals agrees here, and stays consistent
    assert decode_levels(H, p, mode="per-level")[0].tolist() == H.encode(("A", "a1")).tolist()
