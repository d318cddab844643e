"""Threshold sweeps and the threshold for a target precision, on hand-checked examples.

Hand examples set the confidence of each predicted node directly (other classes get 0:
only the predicted nodes' confidences decide a cut); random ones come from real path
probabilities through decoding.level_probs, as ``ktt test`` makes them.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ktt_core.decoding import Predictions, decode_levels, level_probs
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.metrics import compute_metrics
from ktt_core.thresholds import (
    DEFAULT_THRESHOLDS,
    format_sweep,
    sweep,
    sweep_row,
    threshold_for_precision,
)

# Depth 2; "C" is a short path, padded with a placeholder at level 2.
H2 = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1"), ("C",)])
# Depth 3; "A > a2" is padded once, "B" twice.
H3 = Hierarchy.from_paths([("A", "a1", "x"), ("A", "a1", "y"), ("A", "a2"), ("B",)])


def ids(h: Hierarchy, *paths) -> np.ndarray:
    return np.stack([h.encode(p) for p in paths])


def confidences_of(h: Hierarchy, pred: np.ndarray, deeper: list[list[float]]) -> list[np.ndarray]:
    """Per-level confidence arrays giving text i's predicted node at level d+2 the value
    ``deeper[i][d]`` (level 1 gets 1.0: it is never cut)."""
    out = [np.zeros((len(pred), size)) for size in h.level_sizes]
    rows = np.arange(len(pred))
    out[0][rows, pred[:, 0]] = 1.0
    for d in range(1, h.depth):
        out[d][rows, pred[:, d]] = [values[d - 1] for values in deeper]
    return out


def depth2_example():
    """4 texts: right; wrong leaf; wrong top; a padded short path, right."""
    true = ids(H2, ("A", "a1"), ("A", "a2"), ("B", "b1"), ("C",))
    pred = ids(H2, ("A", "a1"), ("A", "a1"), ("A", "a2"), ("C",))
    return true, pred, confidences_of(H2, pred, [[0.9], [0.6], [0.3], [0.5]])


def depth3_example():
    """4 texts: right; wrong leaf; a right padded path whose placeholder is less sure than
    its parent; wrong top whose level 3 is surer than its level 2 (a running minimum)."""
    true = ids(H3, ("A", "a1", "x"), ("A", "a1", "y"), ("A", "a2"), ("B",))
    pred = ids(H3, ("A", "a1", "x"), ("A", "a1", "x"), ("A", "a2"), ("A", "a1", "y"))
    return true, pred, confidences_of(H3, pred, [[0.8, 0.7], [0.8, 0.4], [0.6, 0.55], [0.3, 0.9]])


def row_at(h, example, threshold):
    (row,) = sweep(h, *example, thresholds=[threshold])
    return row


def test_depth2_rows_by_hand():
    example = depth2_example()
    # Nothing cut. Real predicted nodes 2+2+2+1 = 7, right 2+1+0+1 = 4; true real nodes 7.
    # Text 4 ("C") ends at level 1, its last real node, though nothing was cut.
    r = row_at(H2, example, 0.0)
    assert (r["stop_level_1"], r["stop_level_2"], r["full_path_share"], r["uncut_share"]) == (0.25, 0.75, 0.75, 1.0)
    assert r["hierarchical_precision"] == pytest.approx(4 / 7)
    assert r["hierarchical_recall"] == pytest.approx(4 / 7)
    assert r["hierarchical_f1"] == pytest.approx(4 / 7)
    assert (r["kept_accuracy"], r["exact_path_accuracy"]) == (0.5, 0.5)

    # 0.55 cuts text 3 (0.3) and text 4's placeholder (0.5): predicted real nodes 6, right 4.
    # Cutting C's placeholder changes neither where it ends nor that it is exactly right.
    r = row_at(H2, example, 0.55)
    assert (r["stop_level_1"], r["stop_level_2"], r["uncut_share"]) == (0.5, 0.5, 0.5)
    assert r["hierarchical_precision"] == pytest.approx(4 / 6)
    assert r["hierarchical_recall"] == pytest.approx(4 / 7)
    assert (r["kept_accuracy"], r["exact_path_accuracy"]) == (0.5, 0.5)

    # A confidence equal to the threshold reaches it: 0.6 keeps text 2's leaf, 0.61 cuts it.
    assert row_at(H2, example, 0.6)["stop_level_2"] == 0.5
    r = row_at(H2, example, 0.61)
    assert (r["stop_level_1"], r["stop_level_2"]) == (0.75, 0.25)
    assert r["hierarchical_precision"] == pytest.approx(4 / 5)      # text 2 keeps only its right "A"
    assert (r["kept_accuracy"], r["exact_path_accuracy"]) == (0.75, 0.5)

    # Above every confidence only the top level is left: right for texts 1, 2 and 4.
    r = row_at(H2, example, 0.95)
    assert (r["stop_level_1"], r["full_path_share"]) == (1.0, 0.0)
    assert r["hierarchical_precision"] == pytest.approx(3 / 4)
    assert r["hierarchical_recall"] == pytest.approx(3 / 7)


def test_depth3_rows_by_hand():
    example = depth3_example()
    # Nothing cut: predicted real nodes 3+3+2+3 = 11, right 3+2+2+0 = 7, true real 3+3+2+1 = 9.
    r = row_at(H3, example, 0.0)
    assert [r[f"stop_level_{d}"] for d in (1, 2, 3)] == [0.0, 0.25, 0.75]
    assert r["hierarchical_precision"] == pytest.approx(7 / 11)
    assert r["hierarchical_recall"] == pytest.approx(7 / 9)
    assert (r["kept_accuracy"], r["exact_path_accuracy"], r["uncut_share"]) == (0.5, 0.5, 1.0)

    # 0.5: text 2 loses its leaf (0.4); text 4 loses level 2 (0.3) and so level 3 too, though
    # 0.9 >= 0.5. Predicted real nodes 3+2+2+1 = 8, right 3+2+2+0 = 7.
    r = row_at(H3, example, 0.5)
    assert [r[f"stop_level_{d}"] for d in (1, 2, 3)] == [0.25, 0.5, 0.25]
    assert r["full_path_share"] == 0.25
    assert r["hierarchical_precision"] == pytest.approx(7 / 8)
    assert (r["kept_accuracy"], r["exact_path_accuracy"], r["uncut_share"]) == (0.75, 0.5, 0.5)

    # 0.58 also cuts text 3's placeholder (0.55): only "uncut" sees it; "A > a2" is still exact.
    r58 = row_at(H3, example, 0.58)
    assert r58["uncut_share"] == 0.25
    assert {k: v for k, v in r58.items() if k not in ("threshold", "uncut_share")} == \
        {k: v for k, v in r.items() if k not in ("threshold", "uncut_share")}

    # 0.65 cuts text 3 at level 2 (0.6): "A" is right but no longer the whole true path.
    r = row_at(H3, example, 0.65)
    assert [r[f"stop_level_{d}"] for d in (1, 2, 3)] == [0.5, 0.25, 0.25]
    assert r["hierarchical_precision"] == pytest.approx(6 / 7)
    assert r["hierarchical_recall"] == pytest.approx(6 / 9)
    assert (r["kept_accuracy"], r["exact_path_accuracy"]) == (0.75, 0.25)


def test_threshold_for_precision_by_hand():
    example = depth2_example()
    # Precision by threshold: 4/7 up to 0.3, 4/6 up to 0.6, 4/5 up to 0.9, 3/4 above it.
    threshold, row = threshold_for_precision(H2, *example, target=0.8)
    assert threshold == 0.9 and row["hierarchical_precision"] == pytest.approx(0.8)
    assert row == row_at(H2, example, 0.9)
    assert threshold_for_precision(H2, *example, target=0.7)[0] == 0.9     # 0.75 at the top: no help
    assert threshold_for_precision(H2, *example, target=0.6)[0] == 0.5     # the lowest that cuts text 3
    assert threshold_for_precision(H2, *example, target=0.5)[0] == 0.0
    assert threshold_for_precision(H2, *example, target=0.85) == (None, None)


def test_threshold_for_precision_is_the_lowest_equivalent_confidence():
    # Text 1 (wrong at the top) goes when its level 2 (0.3) is cut, i.e. for any threshold
    # in (0.3, 0.6]; its level 3 (0.5, kept only under level 2) is the lowest candidate there.
    true = ids(H3, ("B",), ("A", "a1", "x"))
    pred = ids(H3, ("A", "a1", "x"), ("A", "a1", "x"))
    example = (true, pred, confidences_of(H3, pred, [[0.3, 0.5], [0.9, 0.6]]))
    assert row_at(H3, example, 0.0)["hierarchical_precision"] == pytest.approx(3 / 6)
    threshold, row = threshold_for_precision(H3, *example, target=0.75)
    assert threshold == 0.5 and row["hierarchical_precision"] == pytest.approx(3 / 4)


def test_placeholder_next_to_real_children():
    # "A" is a label of its own and the parent of "A > a1": A's placeholder has a real sibling.
    h = Hierarchy.from_paths([("A", "a1"), ("A",), ("B", "b1")])
    true, pred = ids(h, ("A", "a1"), ("A",)), ids(h, ("A",), ("A", "a1"))
    example = (true, pred, confidences_of(h, pred, [[0.7], [0.4]]))
    # Nothing cut: text 1 says "A", right but short (as hierarchical precision counts it);
    # text 2 says "A > a1" where the truth is "A" alone. Predicted real nodes 1+2, right 1+1.
    r = row_at(h, example, 0.0)
    assert (r["stop_level_1"], r["stop_level_2"], r["kept_accuracy"], r["exact_path_accuracy"]) == (0.5, 0.5, 0.5, 0)
    assert (r["hierarchical_precision"], r["hierarchical_recall"]) == pytest.approx((2 / 3, 2 / 3))
    # 0.5 cuts text 2 to "A": everything kept is right, and text 2 is exactly its true path.
    r = row_at(h, example, 0.5)
    assert (r["stop_level_1"], r["kept_accuracy"], r["exact_path_accuracy"], r["uncut_share"]) == (1, 1, 0.5, 0.5)
    assert (r["hierarchical_precision"], r["hierarchical_recall"]) == pytest.approx((1, 2 / 3))
    assert threshold_for_precision(h, *example, target=1.0)[0] == 0.7     # > 0.4; 0.7 is the next candidate


def test_threshold_above_every_confidence_keeps_only_the_top_level():
    # Wrong leaf under the right top (0.7), then all right (0.4): only cutting both leaves
    # gives precision 1 (0/0 kept leaves), so the answer lies just above 0.7.
    true = ids(H2, ("A", "a1"), ("B", "b1"))
    pred = ids(H2, ("A", "a2"), ("B", "b1"))
    example = (true, pred, confidences_of(H2, pred, [[0.7], [0.4]]))
    threshold, row = threshold_for_precision(H2, *example, target=0.9)
    assert 0.7 < threshold <= 0.7 + 1e-12
    assert row["stop_level_1"] == 1.0 and row["hierarchical_precision"] == 1.0
    # A confidence of 1 cannot be cut by a threshold in [0, 1]: then there is no answer.
    confident = (true, pred, confidences_of(H2, pred, [[1.0], [0.4]]))
    assert threshold_for_precision(H2, *confident, target=0.9) == (None, None)


def random_example(n: int, seed: int):
    """A depth-3 hierarchy with short paths, path probabilities from a Dirichlet, the best
    path as prediction and the truth drawn from the probabilities themselves (calibrated)."""
    h = Hierarchy.from_paths([(top, mid, leaf) for top in "ABC" for mid in ("m1", "m2") for leaf in ("x", "y", "z")]
                             + [("A", "m3"), ("D",), ("B", "m1")])
    rng = np.random.default_rng(seed)
    path_probs = rng.dirichlet(np.full(h.n_leaves, 0.3), size=n).astype(np.float32)
    predictions = Predictions(path_probs, h.leaf_ancestors[path_probs.argmax(axis=1)])
    cumulative = np.cumsum(path_probs.astype(np.float64), axis=1)
    true_leaf = np.minimum((cumulative < rng.random((n, 1)) * cumulative[:, -1:]).sum(axis=1), h.n_leaves - 1)
    return h, predictions, h.leaf_ancestors[true_leaf]


def test_random_sweep_is_consistent_and_monotone():
    h, predictions, true = random_example(2000, seed=1)
    conf = level_probs(h, predictions.path_probs)
    rows = sweep(h, true, predictions.level_ids, conf)
    assert [r["threshold"] for r in rows] == list(DEFAULT_THRESHOLDS)
    assert DEFAULT_THRESHOLDS[:3] == (0.0, 0.05, 0.1) and DEFAULT_THRESHOLDS[-2:] == (0.95, 0.99)
    for r in rows:
        assert sum(r[f"stop_level_{d}"] for d in (1, 2, 3)) == pytest.approx(1.0)
        assert r["full_path_share"] == r["stop_level_3"]
        assert r["exact_path_accuracy"] <= r["kept_accuracy"]
        assert all(type(v) is float for v in r.values())           # JSON-ready
    # Nothing is cut at 0: the sweep agrees with the metrics of the whole predictions.
    whole = compute_metrics(h, true, predictions.level_ids)
    assert rows[0]["uncut_share"] == 1.0
    assert rows[0]["exact_path_accuracy"] == pytest.approx(whole["exact_path_accuracy"])
    # Rows match what `ktt test --threshold` scores (decode_levels cuts the same way).
    for r in rows[::4]:
        cut = decode_levels(h, predictions, threshold=r["threshold"])
        scored = compute_metrics(h, true, cut)
        assert r["hierarchical_precision"] == scored["hierarchical_precision"]
        assert r["hierarchical_recall"] == scored["hierarchical_recall"]

    def column(key):
        return np.array([r[key] for r in rows])

    mean_stop = sum(d * column(f"stop_level_{d}") for d in (1, 2, 3))
    for key in ("full_path_share", "uncut_share", "hierarchical_recall"):   # can only fall
        assert (np.diff(column(key)) <= 1e-12).all(), key
    assert (np.diff(mean_stop) <= 1e-12).all()
    assert (np.diff(column("stop_level_1")) >= -1e-12).all()
    # Calibrated confidences: cutting the unsure deep nodes raises precision, which need not
    # rise all the way: with only the top level left it is the top level's accuracy.
    precision = column("hierarchical_precision")
    assert precision[0] + 0.05 < precision[DEFAULT_THRESHOLDS.index(0.5)]
    top_only = column("stop_level_1") == 1.0
    assert top_only[-1] and rows[-1]["full_path_share"] == 0.0 < rows[0]["full_path_share"]
    assert (precision[top_only] == np.mean(true[:, 0] == predictions.level_ids[:, 0])).all()


def brief_candidates(h, pred, conf):
    """0 and the confidences of predicted nodes at levels 2..D, ascending (computed here
    independently of the module)."""
    rows = np.arange(len(pred))
    values = [conf[d][rows, pred[:, d]] for d in range(1, h.depth)]
    return np.unique(np.concatenate([np.zeros(1, np.float32), *values]))


def test_threshold_for_precision_is_the_smallest_that_reaches_the_target():
    h, predictions, true = random_example(300, seed=2)
    pred, conf = predictions.level_ids, level_probs(h, predictions.path_probs)
    candidates = brief_candidates(h, pred, conf)
    precision = np.array([sweep_row(h, true, pred, conf, float(c))["hierarchical_precision"] for c in candidates])
    # A target between the precision with nothing cut and the best any candidate reaches.
    target = float((precision[0] + precision.max()) / 2)
    threshold, row = threshold_for_precision(h, true, pred, conf, target)
    assert row["hierarchical_precision"] >= target
    assert row == sweep_row(h, true, pred, conf, threshold)
    assert threshold == float(candidates[np.argmax(precision >= target)])   # brute force agrees
    below = candidates[candidates < threshold]
    assert len(below) and sweep_row(h, true, pred, conf, float(below[-1]))["hierarchical_precision"] < target
    # The top level is always kept and sometimes wrong here, so precision 1 is out of reach.
    assert (true[:, 0] != pred[:, 0]).any()
    assert threshold_for_precision(h, true, pred, conf, 1.0) == (None, None)


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan"), "0.9", None, True])
def test_bad_target_is_a_one_line_ktt_error(target):
    example = depth2_example()
    with pytest.raises(KttError) as info:
        threshold_for_precision(H2, *example, target=target)
    assert "target" in str(info.value) and "\n" not in str(info.value)


def test_no_rows():
    empty = np.empty((0, 2), np.int64)
    conf = [np.empty((0, size)) for size in H2.level_sizes]
    assert sweep(H2, empty, empty, conf) == []
    assert threshold_for_precision(H2, empty, empty, conf, 0.9) == (None, None)
    with pytest.raises(KttError):
        threshold_for_precision(H2, empty, empty, conf, 2.0)
    assert format_sweep([], 2).split() == ["threshold", "ends@L1", "ends@L2", "hP", "hR", "hF1", "kept", "acc"]


def test_depth_one_has_nothing_to_cut():
    h = Hierarchy.from_paths([("A",), ("B",), ("C",)])
    true, pred = ids(h, ("A",), ("B",), ("C",)), ids(h, ("A",), ("B",), ("A",))
    conf = [np.full((3, 3), 0.1)]
    rows = sweep(h, true, pred, conf)
    assert all(r["stop_level_1"] == r["full_path_share"] == r["uncut_share"] == 1.0 for r in rows)
    assert all(r["hierarchical_precision"] == pytest.approx(2 / 3) for r in rows)
    assert threshold_for_precision(h, true, pred, conf, 0.6) == (0.0, rows[0])
    assert threshold_for_precision(h, true, pred, conf, 0.7) == (None, None)


def test_format_sweep_aligns_three_decimals():
    example = depth3_example()
    rows = sweep(H3, *example, thresholds=[0.0, 0.5, 0.65])
    lines = format_sweep(rows, 3).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["threshold", "ends@L1", "ends@L2", "ends@L3", "hP", "hR", "hF1", "kept", "acc"]
    assert lines[2].split() == ["0.500", "0.250", "0.500", "0.250", f"{7 / 8:.3f}", f"{7 / 9:.3f}",
                                f"{2 * (7 / 8) * (7 / 9) / (7 / 8 + 7 / 9):.3f}", "0.750"]


def test_module_does_not_import_torch():
    code = "import sys, ktt_core.thresholds; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
