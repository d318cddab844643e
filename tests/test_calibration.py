"""Calibration: the temperature fit, degenerate validation splits, storage and metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ktt_core.calibration import MIN_ROWS, Calibration, fit_calibration
from ktt_core.calibration_metrics import (
    calibration_report,
    expected_calibration_error,
    multiclass_brier,
    reliability_bins,
)
from ktt_core.decoding import decode, describe_all, level_probs
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy

H = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2"), ("C",)])


def sampled_scores(n: int, temperature: float, seed: int = 0):
    """Path log-scores whose labels are drawn from softmax(scores / temperature): the model's
    raw scores are miscalibrated by exactly that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, size=(n, H.n_leaves))
    probs = np.exp(logits / temperature)
    probs /= probs.sum(axis=1, keepdims=True)
    leaves = np.array([rng.choice(H.n_leaves, p=p) for p in probs])
    return logits.astype(np.float32), H.leaf_ancestors[leaves]


def test_temperature_fit_recovers_the_miscalibration_and_lowers_ece():
    scores, targets = sampled_scores(6000, temperature=2.0)
    calibration = fit_calibration(H, scores, targets, "temperature")
    assert calibration.method == "temperature" and len(set(calibration.temperatures)) == 1
    assert calibration.temperatures[0] == pytest.approx(2.0, rel=0.12)
    test_scores, test_targets = sampled_scores(4000, temperature=2.0, seed=1)
    raw = calibration_report(H, decode(H, test_scores), test_targets)
    fitted = calibration_report(H, decode(H, test_scores, calibration=calibration), test_targets)
    for level in (1, 2):
        assert fitted[f"level_{level}_ece"] < raw[f"level_{level}_ece"] / 2
        assert fitted[f"level_{level}_brier"] < raw[f"level_{level}_brier"]
    record = calibration.fit["levels"]["level_2"]
    assert record["val_nll"] < record["val_nll_raw"] and record["val_ece"] < record["val_ece_raw"]


def test_per_level_fits_each_level_and_never_changes_the_best_path():
    scores, targets = sampled_scores(3000, temperature=0.5)   # timid scores: T < 1 sharpens
    calibration = fit_calibration(H, scores, targets, "per-level")
    assert calibration.method == "per-level" and len(calibration.temperatures) == H.depth
    assert all(t < 1 for t in calibration.temperatures)
    raw, fitted = decode(H, scores), decode(H, scores, calibration=calibration)
    assert np.array_equal(raw.level_ids, fitted.level_ids)
    assert np.allclose(fitted.path_probs.sum(axis=1), 1, atol=1e-5)
    for conf in fitted.confidences(H):
        assert conf.shape[0] == len(scores) and np.all((conf >= 0) & (conf <= 1 + 1e-6))


def test_confidences_never_rise_below_a_parent():
    scores, targets = sampled_scores(500, temperature=1.0)
    calibration = Calibration("per-level", [3.0, 0.3])    # a soft top level, a sharp leaf level
    predictions = decode(H, scores, calibration=calibration)
    top, leaf = predictions.confidences(H)
    parents = H.parent_of[1]
    assert np.all(leaf <= top[:, parents] + 1e-6)
    for result in describe_all(H, predictions, top_k=1):
        scores_down = [lv["score"] for lv in result["levels"]]
        assert scores_down == sorted(scores_down, reverse=True)


@pytest.mark.parametrize("case", ["empty", "few rows", "unlabelled", "not finite"])
def test_degenerate_validation_split_leaves_the_scores_raw_with_a_reason(case):
    scores, targets = sampled_scores(200, temperature=2.0)
    if case == "empty":
        scores, targets = scores[:0], targets[:0]
    elif case == "few rows":
        scores, targets = scores[:MIN_ROWS - 1], targets[:MIN_ROWS - 1]
    elif case == "unlabelled":
        targets = np.full_like(targets, -1)
    else:
        scores = scores.copy()
        scores[3, 1] = np.inf
    calibration = fit_calibration(H, scores, targets)
    assert calibration.is_identity and calibration.note
    assert np.array_equal(decode(H, scores[:3]).path_probs, decode(H, scores[:3], calibration=calibration).path_probs)


def test_a_validation_split_the_model_gets_all_right_gives_a_finite_bounded_temperature():
    targets = H.leaf_ancestors[np.arange(100) % H.n_leaves]
    scores = np.full((100, H.n_leaves), -30.0, dtype=np.float32)
    scores[np.arange(100), np.arange(100) % H.n_leaves] = 30.0   # all right, all certain
    calibration = fit_calibration(H, scores, targets)
    assert all(np.isfinite(calibration.temperatures)) and all(t > 0 for t in calibration.temperatures)
    assert np.array_equal(decode(H, scores, calibration=calibration).level_ids, targets)


def test_paths_ruled_out_with_minus_infinity_still_fit():
    scores, targets = sampled_scores(300, temperature=2.0)
    scores = scores.copy()
    scores[:, -1] = -np.inf
    targets = targets[targets[:, 0] != 2]
    calibration = fit_calibration(H, scores[:len(targets)], targets, "temperature")
    assert not calibration.is_identity and calibration.temperatures[0] > 1


def test_one_class_only_in_validation_still_fits():
    scores, _ = sampled_scores(100, temperature=1.0)
    targets = np.tile(H.leaf_ancestors[0], (100, 1))
    calibration = fit_calibration(H, scores, targets)
    assert all(np.isfinite(calibration.temperatures))


def test_stored_calibration_is_checked():
    good = {"method": "per-level", "temperatures": [1.2, 1.5], "note": ""}
    assert Calibration.from_dict(good, 2).temperatures == [1.2, 1.5]
    assert Calibration.from_dict(None, 2) is None
    for bad in ({"method": "per-level", "temperatures": [1.2]},
                {"method": "magic", "temperatures": [1, 1]},
                {"method": "per-level", "temperatures": [0, 1]},
                {"temperatures": [1, 1]}):
        with pytest.raises(KttError, match="ktt.json"):
            Calibration.from_dict(bad, 2, "ktt.json")
    with pytest.raises(KttError, match="calibration must be one of"):
        fit_calibration(H, np.zeros((30, H.n_leaves)), np.zeros((30, 2), dtype=int), "isotonic")


def test_ece_and_brier_by_hand():
    # Four predictions at 0.9 of which two are right: one bin, |0.5 - 0.9| = 0.4.
    assert expected_calibration_error(np.full(4, 0.9), np.array([1, 1, 0, 0])) == pytest.approx(0.4)
    # Two bins: 0.25 (right 1 of 2 -> 0.25 gap) and 1.0 (exactly 1.0 is in the last bin, all right).
    conf, correct = np.array([0.25, 0.25, 1.0, 1.0]), np.array([1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.25)
    count, _, _ = reliability_bins(conf, correct)
    assert count[-1] == 2 and count[2] == 2 and count[0] == 0
    # Brier: [0.7, 0.2, 0.1] with truth 0 -> 0.09 + 0.04 + 0.01; [0.5, 0.5, 0] with truth 2 -> 0.25 + 0.25 + 1.
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    assert multiclass_brier(probs, np.array([0, 2])) == pytest.approx((0.14 + 1.5) / 2)


def test_checkpoint_stores_the_calibration_and_verifies_it(trained, ktt):
    import torch

    from ktt_core.checkpoint import load_checkpoint, set_calibration

    run = trained
    best = run / "best.pt"
    stored = load_checkpoint(best)["calibration"]
    assert stored is not None and stored["method"] == "per-level" and len(stored["temperatures"]) == 2
    set_calibration(best, Calibration("temperature", [1.5, 1.5], "by hand"))
    assert load_checkpoint(best)["calibration"]["temperatures"] == [1.5, 1.5]
    payload = torch.load(best, weights_only=True)
    payload["calibration_json"] = json.dumps({"method": "temperature", "temperatures": [9.0, 9.0]})
    torch.save(payload, best)   # changed without a new hash: refused
    with pytest.raises(KttError, match="hash|damaged|changed"):
        load_checkpoint(best)


def test_train_fits_test_reports_and_no_calibration_shows_raw(trained, ktt):
    run = trained
    out = ktt("test", "db_linear", "shop", "--json")
    metrics = json.loads(out.output[out.output.index("{"):])
    for level in (1, 2):
        assert 0 <= metrics[f"level_{level}_ece"] <= 1 and 0 <= metrics[f"raw_level_{level}_ece"] <= 1
        assert metrics[f"level_{level}_brier"] >= 0
    assert metrics["calibration"].startswith(("per-level", "none"))
    raw = ktt("test", "db_linear", "shop", "--json", "--no-calibration")
    raw_metrics = json.loads(raw.output[raw.output.index("{"):])
    assert raw_metrics["calibration"].startswith("off")
    assert raw_metrics["level_2_ece"] == pytest.approx(metrics["raw_level_2_ece"])
    assert raw_metrics["exact_path_accuracy"] == metrics["exact_path_accuracy"]   # the best path never moves


def test_ktt_calibrate_refits_a_run(trained, ktt):
    from ktt_core.checkpoint import load_checkpoint

    run = trained
    out = ktt("calibrate", "db_linear", "shop", "--method", "temperature")
    assert "calibration: temperature" in out.output or "calibration: none" in out.output
    assert load_checkpoint(run / "best.pt")["calibration"]["method"] == "temperature"
    ktt("calibrate", "db_linear", "shop", "--method", "none")
    assert load_checkpoint(run / "best.pt")["calibration"]["method"] == "none"
    ktt("calibrate", "db_linear", "shop")   # back to the run's default


def test_level_probs_equal_confidences_without_per_level_temperatures():
    scores, _ = sampled_scores(50, temperature=1.0)
    predictions = decode(H, scores, calibration=Calibration("temperature", [2.0, 2.0]))
    assert predictions.level_confidences is None
    for a, b in zip(predictions.confidences(H), level_probs(H, predictions.path_probs)):
        assert np.allclose(a, b)
