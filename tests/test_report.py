"""The HTML report (ktt_core.report) on synthetic data with planted facts, and the
calibration metrics it uses (ktt_core.calibration_metrics) on hand-computed examples."""
from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from ktt_core.calibration_metrics import bin_index, expected_calibration_error, multiclass_brier
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.report import ReportData, render_report, write_report

HOSTILE = "<script>alert(1)</script>"
PATHS_3 = [("Food", "Fruit", "Apple"), ("Food", "Fruit", "Pear"), ("Food", "Bakery", "Bread"),
           ("Food", "Bakery", "Cake"), ("Home", "Kitchen", "Pan"), ("Home", "Kitchen", "Pot"),
           ("Home", "Garden", "Hose"), ("Books", "Novels"), ("Toys & <Games>",)]
PATHS_2 = [("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2"), ("C",)]
SIBLING_PAIR = (("Food", "Fruit", "Apple"), ("Food", "Fruit", "Pear"))   # 15 planted rows
CROSS_PAIR = (("Food", "Bakery", "Bread"), ("Home", "Kitchen", "Pan"))   # 12 planted rows
WORST_ROW, WORST_CONFIDENCE = 7, 0.999


def make_report_data(paths=PATHS_3, n: int = 300, seed: int = 0, n_leaves_noise: float = 0.1) -> ReportData:
    """A ReportData with known facts: rows of SIBLING_PAIR and CROSS_PAIR confused (only
    with the depth-3 paths), row WORST_ROW wrong with leaf confidence WORST_CONFIDENCE and
    the hostile text, every other confidence below 0.95; seeded random noise elsewhere."""
    rng = np.random.default_rng(seed)
    h = Hierarchy.from_paths(paths)
    leaves = h.leaf_ancestors
    true_leaf = rng.integers(0, h.n_leaves, n)
    pred_leaf = np.where(rng.random(n) < n_leaves_noise, rng.integers(0, h.n_leaves, n), true_leaf)
    planted = 0
    if paths is PATHS_3:
        for (true_path, pred_path), count in ((SIBLING_PAIR, 15), (CROSS_PAIR, 12)):
            rows = slice(planted + 20, planted + 20 + count)
            true_leaf[rows], pred_leaf[rows] = h.encode(true_path)[-1], h.encode(pred_path)[-1]
            planted += count
    pred_leaf[WORST_ROW] = (true_leaf[WORST_ROW] + 1) % h.n_leaves
    true_ids, pred_ids = leaves[true_leaf], leaves[pred_leaf]

    def probabilities(temperature: float):
        out = []
        for d, size in enumerate(h.level_sizes):
            noise = rng.dirichlet(np.full(size, 2.0), n)
            share = np.clip(rng.normal(0.55, 0.15, n), 0.05, 0.6)[:, None] ** (1 / temperature)
            probs = (1 - share) * noise
            probs[np.arange(n), pred_ids[:, d]] += share[:, 0]  # the predicted class is the most likely
            out.append(probs)
        leaf = out[-1]
        leaf[WORST_ROW] = (1 - WORST_CONFIDENCE) / (h.n_leaves - 1)
        leaf[WORST_ROW, pred_ids[WORST_ROW, -1]] = WORST_CONFIDENCE
        return out

    texts = [f"product {i} {' '.join(rng.choice(['blue', 'large', 'pack', 'premium'], 3))}" for i in range(n)]
    texts[WORST_ROW] = HOSTILE
    sweep = [{"threshold": t, **{f"stop_level_{d + 1}": (t / 3 if d < h.depth - 1 else 1 - t * (h.depth - 1) / 3)
                                 for d in range(h.depth)},
              "full_path_share": 1 - t * (h.depth - 1) / 3, "hierarchical_precision": 0.7 + 0.25 * t,
              "hierarchical_recall": 0.8 - 0.3 * t, "hierarchical_f1": 0.75 - 0.05 * (t - 0.4) ** 2,
              "kept_accuracy": 0.6 + 0.3 * t, "exact_path_accuracy": 0.6 - 0.2 * t}
             for t in np.round(np.linspace(0, 0.9, 10), 2)]
    training = [{"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.2 / e + 0.05 * (e == 3),
                 "val_exact_path_accuracy": 0.5 + 0.1 * e - 0.12 * (e == 3), "val_hierarchical_f1": 0.6 + 0.08 * e,
                 "best": e <= 2, "seconds": 10.0 * e} for e in (1, 2, 3)]
    return ReportData(
        model="db_linear", dataset="shop", run="2026-01-02_030405", hierarchy=h, texts=texts,
        true_ids=true_ids, pred_ids=pred_ids, confidences=probabilities(1.0), raw_confidences=probabilities(0.5),
        metrics={"level_1_ece": 0.042}, calibration={"method": "temperature", "temperatures": [1.7, 2.1, 1.3]},
        sweep=sweep, training=training,
        peers=[{"name": "tfidf_lr", "exact_path_accuracy": 0.41, "hierarchical_f1": 0.62},
               {"name": "db_bhcn $x", "exact_path_accuracy": 0.66, "hierarchical_f1": 0.79}],
        created="2026-01-02 03:04")


class Tables(HTMLParser):
    """Every <table id=...> of a page as rows of cell texts (header row first)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or f"#{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def data() -> ReportData:
    return make_report_data()


@pytest.fixture(scope="module")
def page(data) -> str:
    return render_report(data)


def test_every_section_in_order(page):
    ids = ["summary", "levels", "classes", "confusions", "errors", "calibration", "thresholds", "training"]
    positions = [page.find(f'<section id="{i}">') for i in ids]
    assert -1 not in positions and positions == sorted(positions)
    for i in ids:
        assert f'href="#{i}"' in page  # the nav links each one


def test_summary_shows_the_run_the_metrics_and_peers(page, data):
    summary = page[page.index('id="summary"'):page.index('id="levels"')]
    for text in ("db_linear", "shop", "2026-01-02_030405", "2026-01-02 03:04", "300 test rows",
                 "exact-path accuracy", "hierarchical F1", "level 3 macro-F1", "before calibration: 0."):
        assert text in page
    peers = Tables(summary).tables["peers-table"]
    assert sorted(r[0] for r in peers[1:]) == ["db_bhcn $x", "db_linear (this report)", "tfidf_lr"]
    accuracies = [float(r[1]) for r in peers[1:]]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    assert "<svg" in summary


def test_levels_table(page, data):
    rows = Tables(page).tables["levels-table"]
    assert rows[0][:2] == ["level", "accuracy"] and len(rows) == 1 + data.hierarchy.depth
    for d, row in enumerate(rows[1:]):
        assert float(row[1]) == pytest.approx(np.mean(data.true_ids[:, d] == data.pred_ids[:, d]), abs=5e-4)


def test_one_class_row_per_real_class(page, data):
    h = data.hierarchy
    rows = Tables(page).tables["classes-table"][1:]
    assert len(rows) == int((~h.is_placeholder).sum()) == h.n_classes - 3  # three placeholders pad short paths
    paths = {(r[0], r[2]) for r in rows}
    assert ("3", "Food > Fruit > Apple") in paths and ("1", "Toys & <Games>") in paths
    assert ("2", "Toys & <Games>") not in paths  # the placeholder under it is not a class
    assert "Toys &amp; &lt;Games&gt;" in page and "<Games>" not in page
    assert 'data-filter="classes-table"' in page


def test_confusions_mark_sibling_and_cross_branch_pairs(page):
    tables = Tables(page).tables
    level3 = {(r[0], r[1]): r for r in tables["confusions-level-3"][1:]}
    sibling = level3[tuple(" > ".join(p) for p in SIBLING_PAIR)]
    cross = level3[tuple(" > ".join(p) for p in CROSS_PAIR)]
    assert sibling[4] == "sibling" and int(sibling[2]) >= 15
    assert cross[4] == "cross-branch" and int(cross[2]) >= 12
    assert {r[4] for r in tables["confusions-level-1"][1:]} == {"top level"}
    assert len(tables["confusions-level-3"]) <= 21  # top 20
    assert re.search(r"Sibling errors</strong> — level 2: [\d.]+% of \d+ errors; level 3: [\d.]+% of \d+ errors", page)


def test_worst_error_first_and_escaped(page, data):
    rows = Tables(page).tables["errors-table"]
    assert rows[1][0] == str(WORST_ROW) and float(rows[1][1]) == pytest.approx(WORST_CONFIDENCE, abs=5e-4)
    assert rows[1][2] == HOSTILE  # shown as text ...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # ... because it is escaped
    confidences = [float(r[1]) for r in rows[1:]]
    assert confidences == sorted(confidences, reverse=True) and len(rows) == 51
    wrong = int(np.any(data.true_ids != data.pred_ids, axis=1).sum())
    assert wrong > 50


def test_only_the_reports_own_scripts_and_no_network(page):
    assert len(re.findall(r"<script", page, re.IGNORECASE)) == 2
    assert page.index("<script>window.__kttErrors=[]") < page.index("<title>")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page  # not even SVG namespaces
    assert "<link" not in page and "<img" not in page and "<iframe" not in page


def test_calibration_section(page, data):
    section = page[page.index('id="calibration"'):page.index('id="thresholds"')]
    assert section.count("<svg") == data.hierarchy.depth
    assert "raw (ECE" in section and "calibrated (ECE" in section
    assert "temperature, T = 1.70, 2.10, 1.30 per level" in section
    rows = Tables(section).tables["calibration-table"]
    assert rows[0] == ["level", "ECE", "Brier", "raw ECE", "raw Brier"]
    assert rows[1][1] == "0.042"  # the caller's value wins ...
    from ktt_core.report.analysis import predicted_confidence
    correct = data.true_ids[:, 1] == data.pred_ids[:, 1]
    expected = expected_calibration_error(predicted_confidence(data.confidences[1], data.pred_ids[:, 1]), correct)
    assert float(rows[2][1]) == pytest.approx(expected, abs=5e-4)  # ... the others are computed
    assert float(rows[2][2]) == pytest.approx(multiclass_brier(data.confidences[1], data.true_ids[:, 1]), abs=5e-4)


def test_thresholds_and_training(page, data):
    tables = Tables(page).tables
    assert len(tables["thresholds-table"]) == 1 + len(data.sweep)
    assert tables["thresholds-table"][0][:2] == ["threshold", "stop level 1"]
    training = page[page.index('id="training"'):]
    assert "<svg" in training and "best (epoch 2)" in training
    assert len(tables["training-table"]) == 4


def test_missing_inputs_give_sentences(data):
    bare = dataclasses.replace(data, sweep=[], training=[], raw_confidences=None, peers=[], calibration=None,
                               metrics={}, created="")
    page = render_report(bare)
    for sentence in ("No threshold sweep for this run", "No training history for this run",
                     "No raw (uncalibrated) confidences", "No benchmark results of other models",
                     "This model has no calibration step"):
        assert sentence in page
    assert Tables(page).tables["calibration-table"][0] == ["level", "ECE", "Brier"]
    assert "exact-path accuracy" in page  # computed from the arrays when metrics is empty


def test_single_training_record_is_a_table(data):
    page = render_report(dataclasses.replace(data, training=[{"epoch": 1, "train_loss": None, "val_loss": 0.8,
                                                             "val_exact_path_accuracy": 0.7, "best": True}]))
    training = page[page.index('id="training"'):]
    assert "<svg" not in training and "one go" in training
    assert ["val exact path accuracy", "0.700"] in Tables(training).tables["training-table"]


def test_depth_two_and_no_rows():
    data = make_report_data(PATHS_2, n=120, seed=3)
    page = render_report(data)
    # A, B, C; a1, a2, b1, b2; not the placeholder under C
    assert len(Tables(page).tables["classes-table"]) - 1 == 3 + 4
    empty = dataclasses.replace(data, texts=[], true_ids=np.empty((0, 2), int), pred_ids=np.empty((0, 2), int),
                                confidences=[np.empty((0, k)) for k in data.hierarchy.level_sizes],
                                raw_confidences=None, metrics={})
    assert render_report(empty).count("No test rows") >= 5


def test_inconsistent_input_is_a_clear_error(data):
    with pytest.raises(KttError, match=r"pred_ids has shape \(300, 2\), expected \(300, 3\)"):
        render_report(dataclasses.replace(data, pred_ids=data.pred_ids[:, :2]))
    partial = data.pred_ids.copy()
    partial[0, 2] = -1
    with pytest.raises(KttError, match="no -1"):
        render_report(dataclasses.replace(data, pred_ids=partial))
    with pytest.raises(KttError, match="raw_confidences must hold one"):
        render_report(dataclasses.replace(data, raw_confidences=data.raw_confidences[:2]))


def test_no_errors_at_all():
    data = make_report_data(PATHS_2, n=50, seed=4, n_leaves_noise=0.0)
    data = dataclasses.replace(data, pred_ids=data.true_ids.copy())
    page = render_report(data)
    assert "No errors: every test row gets its whole path right." in page and "No errors at level 1." in page


def test_write_report_and_size_at_scale(tmp_path):
    """2,000 rows and 110 classes stay well under the 1.5 MB target."""
    paths = [(f"Top {t}", f"Leaf {t}.{k}") for t in range(10) for k in range(10)]
    data = make_report_data(paths, n=2000, seed=1, n_leaves_noise=0.3)
    target = write_report(tmp_path / "sub" / "report.html", data)
    assert target.is_file() and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert target.stat().st_size < 1_500_000
    assert not list(target.parent.glob(".*.tmp"))  # the atomic write left no temporary


# -- calibration metrics ------------------------------------------------------------------
def test_bins_are_equal_width_and_one_is_in_the_last():
    assert bin_index(np.array([0.0, 0.05, 0.1, 0.55, 0.9, 0.999, 1.0])).tolist() == [0, 0, 1, 5, 9, 9, 9]


def test_ece_is_zero_when_perfectly_calibrated():
    # 0.75 confidence right 3 times in 4, 0.25 confidence right 1 time in 4
    conf = np.repeat([0.75, 0.25], 400)
    correct = np.concatenate([np.arange(400) % 4 != 0, np.arange(400) % 4 == 0])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_over_confident_model_by_hand():
    # bin [0.9, 1.0]: 10 rows at 0.9 (6 right) and 10 at 1.0 (9 right): |15/20 - 0.95| = 0.2, weight 20/25
    # bin [0.3, 0.4): 5 rows at 0.35, none right: |0 - 0.35| = 0.35, weight 5/25
    conf = np.array([0.9] * 10 + [1.0] * 10 + [0.35] * 5)
    correct = np.array([1] * 6 + [0] * 4 + [1] * 9 + [0] + [0] * 5, dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(20 / 25 * 0.2 + 5 / 25 * 0.35)
    assert expected_calibration_error(np.array([1.0]), np.array([False])) == pytest.approx(1.0)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_brier_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    # row 1, true 0: 0.3² + 0.2² + 0.1² = 0.14; row 2, true 1: 0.3² + 0.7² + 0.4² = 0.74
    assert multiclass_brier(probs, np.array([0, 1])) == pytest.approx((0.14 + 0.74) / 2)
    assert multiclass_brier(np.eye(3), np.array([0, 1, 2])) == 0.0
