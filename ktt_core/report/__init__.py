"""``ktt report``: one self-contained HTML page about a trained model on a test set.

The page answers what a practitioner deciding whether to deploy a model asks, in order:
how good is it overall and against other models (summary), at which level and for which
classes does it fail (levels, classes), are its errors near misses between siblings or
wrong branches (confusions), which confident mistakes would reach users (errors), can its
probabilities be trusted (calibration), what a confidence threshold buys (thresholds), and
how training went (training).

It is one file with every asset inlined (CSS, two small scripts, charts as SVG; no network,
CDN or web font) so that it can be mailed, attached to a ticket or archived next to the
run and still open the same years later, offline. Texts and class names come from users
and are always escaped (see :mod:`ktt_core.report.html`).

API: build a :class:`ReportData`, then :func:`render_report` (the HTML text) or
:func:`write_report` (atomically to a file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ktt_core.calibration_metrics import expected_calibration_error
from ktt_core.errors import KttError
from ktt_core.files import atomic_write_text
from ktt_core.hierarchy import Hierarchy
from ktt_core.metrics import compute_metrics
from ktt_core.report import analysis, charts
from ktt_core.report.html import Markup, cards, empty, esc, figure, number, page, paragraph, percent, section, table

__all__ = ["ReportData", "render_report", "write_report"]

#: Section ids, in page order, with their titles in the nav.
SECTIONS = (("summary", "Summary"), ("levels", "Levels"), ("classes", "Classes"), ("confusions", "Confusions"),
            ("errors", "Worst errors"), ("calibration", "Calibration"), ("thresholds", "Thresholds"),
            ("training", "Training"))
TOP_CONFUSIONS, TOP_ERRORS = 20, 50
#: Longer test texts are cut in the error table (the page stays small and readable).
TEXT_CHARS = 400


@dataclass
class ReportData:
    """Everything the report shows; the caller (``ktt report``) builds it."""

    model: str                      # e.g. "db_linear"
    dataset: str
    run: str                        # run folder name
    hierarchy: Hierarchy
    texts: list[str]                # test texts
    true_ids: np.ndarray            # (N, depth) class ids local to each level
    pred_ids: np.ndarray            # (N, depth) predicted ids (consistent best path, no -1)
    confidences: list[np.ndarray]   # per level (N, n_d): calibrated probability of each class
    raw_confidences: list[np.ndarray] | None  # same before calibration (None: model has no calibration)
    metrics: dict[str, float]       # headline metrics (compute_metrics keys; maybe level_D_ece, raw_level_D_ece ...)
    calibration: dict | None        # e.g. {"method": "temperature", "temperatures": [1.7, 2.1]}; None: uncalibrated
    sweep: list[dict]               # threshold sweep rows (threshold, stop_level_D, full_path_share, ...)
    training: list[dict]            # the run's metrics.jsonl records; may be empty or one record
    peers: list[dict]               # {"name", "exact_path_accuracy", "hierarchical_f1", ...} rows; may be empty
    created: str = ""               # timestamp text


def render_report(data: ReportData) -> str:
    """The report as one HTML document (text)."""
    data = _checked(data)
    metrics = _headline_metrics(data)
    calibration = (analysis.calibration_scores(data.hierarchy, data.true_ids, data.pred_ids, data.confidences,
                                               data.raw_confidences, metrics) if len(data.texts) else [])
    parts = [summary_section(data, metrics, calibration), levels_section(data), classes_section(data),
             confusions_section(data), errors_section(data), calibration_section(data, calibration),
             thresholds_section(data), training_section(data)]
    header = Markup(f"<h1>{esc(data.model)} on {esc(data.dataset)}</h1>"
                    f'<p class="meta">run {esc(data.run)}' + (f" · {esc(data.created)}" if data.created else "")
                    + f" · {len(data.texts)} test rows · {esc(data.hierarchy.summary())}</p>")
    return page(f"KTT report: {data.model} on {data.dataset} ({data.run})", header, SECTIONS, parts)


def write_report(path: Path | str, data: ReportData) -> Path:
    """Render and write the report atomically (a reader never sees half a file)."""
    path = Path(path)
    atomic_write_text(path, render_report(data))
    return path


# -- input --------------------------------------------------------------------------------
def _checked(data: ReportData) -> ReportData:
    """The data with numpy arrays and lists; KttError when shapes or ids disagree with the
    hierarchy (a caller's bug that would otherwise surface as an obscure index error deep
    in a section)."""
    h, n = data.hierarchy, len(data.texts)
    ids = {}
    for name in ("true_ids", "pred_ids"):
        value = np.asarray(getattr(data, name), dtype=np.int64)
        value = value.reshape(0, h.depth) if value.size == 0 else value
        if value.shape != (n, h.depth):
            raise KttError(f"report: {name} has shape {value.shape}, expected {(n, h.depth)} (texts, levels)")
        if n and ((value < 0) | (value >= np.asarray(h.level_sizes))).any():
            raise KttError(f"report: {name} holds ids outside their level's classes "
                           "(predicted paths must be complete: no -1)")
        ids[name] = value
    probs = {}
    for name in ("confidences", "raw_confidences"):
        value = getattr(data, name)
        value = None if value is None else [np.asarray(p, dtype=float) for p in value]
        expected = [(n, k) for k in h.level_sizes]
        if value is not None and [p.shape for p in value] != expected:
            raise KttError(f"report: {name} must hold one (N, classes) array per level: expected {expected}, "
                           f"got {[p.shape for p in value]}")
        probs[name] = value
    return ReportData(**{**vars(data), **ids, **probs, "texts": [str(t) for t in data.texts],
                         "metrics": dict(data.metrics or {}), "sweep": list(data.sweep or []),
                         "training": list(data.training or []), "peers": list(data.peers or [])})


def _headline_metrics(data: ReportData) -> dict[str, float]:
    """The caller's metrics, completed from the arrays where it left some out."""
    computed = compute_metrics(data.hierarchy, data.true_ids, data.pred_ids) if len(data.texts) else {}
    return {**computed, **data.metrics}


NO_ROWS = "No test rows: there is nothing to score."


# -- sections -----------------------------------------------------------------------------
def summary_section(data: ReportData, metrics: dict, calibration: list[dict]) -> Markup:
    """Big numbers, a few plain-language findings, and the comparison with peers."""
    depth = data.hierarchy.depth
    big = [("exact-path accuracy", percent(metrics.get("exact_path_accuracy")), "whole path right"),
           ("hierarchical F1", number(metrics.get("hierarchical_f1")), "partial credit per level")]
    if calibration:
        leaf = calibration[-1]
        before = (f"before calibration: {number(leaf['raw_ece'])}" if leaf["raw_ece"] is not None
                  else "no calibration step")
        big.append((f"calibration error (ECE), level {depth}", number(leaf["ece"]), before))
    per_level = [(f"level {d} accuracy", percent(metrics.get(f"level_{d}_accuracy")), "")
                 for d in range(1, depth + 1)]
    per_level += [(f"level {d} macro-F1", number(metrics.get(f"level_{d}_macro_f1")), "")
                  for d in range(1, depth + 1)]
    parts = [cards(big), cards(per_level, small=True), _findings(data, calibration)]
    parts.append(Markup("<h3>Compared with other models</h3>"))
    parts.append(_peers(data, metrics) if data.peers
                 else empty("No benchmark results of other models to compare with."))
    return section("summary", "Summary", *parts)


def _findings(data: ReportData, calibration: list[dict]) -> Markup:
    """Plain sentences a reader can act on, from the numbers of the sections below."""
    n, depth = len(data.texts), data.hierarchy.depth
    if not n:
        return empty(NO_ROWS)
    facts = []
    exact = float(np.mean(np.all(data.true_ids == data.pred_ids, axis=1)))
    facts.append(f"{round(exact * n)} of {n} test rows ({percent(exact)}) get the whole path right; "
                 f"{percent(np.mean(data.true_ids[:, 0] == data.pred_ids[:, 0]))} are right at level 1.")
    if depth > 1:
        errors, share = analysis.sibling_share(data.hierarchy, data.true_ids, data.pred_ids, depth - 1)
        if errors:
            facts.append(f"{percent(share)} of the {errors} errors at level {depth} are between siblings "
                         "(right parent, wrong child); the rest went wrong higher up.")
    pairs = analysis.confusion_pairs(data.hierarchy, data.true_ids, data.pred_ids, depth - 1, top=1)
    if pairs:
        p = pairs[0]
        facts.append(f"Most frequent confusion: {p['true']} → {p['predicted']} ({p['count']} rows, "
                     f"{percent(p['share'])} of {p['true']}).")
    if calibration and calibration[-1]["raw_ece"] is not None:
        facts.append(f"Calibration ({_calibration_method(data.calibration)}) takes the level-{depth} ECE from "
                     f"{number(calibration[-1]['raw_ece'])} to {number(calibration[-1]['ece'])}.")
    best = analysis.best_sweep_row(data.sweep)
    if best is not None:
        facts.append(f"Best hierarchical F1 of the threshold sweep: {number(best['hierarchical_f1'])} at "
                     f"threshold {number(best.get('threshold'), 2)}"
                     + (f", with full paths for {percent(best['full_path_share'])} of rows."
                        if best.get("full_path_share") is not None else "."))
    return Markup('<ul class="facts">' + "".join(f"<li>{esc(f)}</li>" for f in facts) + "</ul>")


PEER_METRICS = ("exact_path_accuracy", "hierarchical_f1", "leaf_accuracy", "level_1_accuracy")


def _peers(data: ReportData, metrics: dict) -> Markup:
    """This model beside the peers: bar chart and table, best exact-path accuracy first."""
    me = {"name": f"{data.model} (this report)", **{k: metrics.get(k) for k in PEER_METRICS}}
    # Benchmark rows name their model "name" (or "model", as the comparison plots do).
    peers = [{**r, "name": str(r.get("name") or r.get("model") or "?")} for r in data.peers]
    rows = sorted([me, *peers], key=lambda r: _descending(r.get("exact_path_accuracy")))
    mine = next(i for i, r in enumerate(rows) if r is me)
    keys = [k for k in PEER_METRICS if any(r.get(k) is not None for r in rows)]
    chart = figure(charts.peers_chart(rows, mine))
    tab = table(["model", *[k.replace("_", " ") for k in keys]],
                [[r["name"], *[_value(r.get(k)) for k in keys]] for r in rows],
                table_id="peers-table", numeric=[False, *[True] * len(keys)],
                row_classes=["me" if r is me else "" for r in rows])
    return Markup(f'<div class="peers">{chart}{tab}</div>')


def _float(value) -> float:
    """A number for sorting and charts; NaN for anything else (None, text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _descending(value) -> tuple:
    """Sort key: highest first, missing values last."""
    value = _float(value)
    return (np.isnan(value), -value if not np.isnan(value) else 0.0)


def _value(value):
    """A table cell from a JSON value: numbers, flags and text as they are, None as missing."""
    return float("nan") if value is None else value


def levels_section(data: ReportData) -> Markup:
    if not len(data.texts):
        return section("levels", "Levels", empty(NO_ROWS))
    rows = analysis.level_scores(data.hierarchy, data.true_ids, data.pred_ids)
    keys = ["level", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
            "weighted_recall", "weighted_f1", "classes", "classes_in_test", "support"]
    return section("levels", "Levels", paragraph(
        "Macro averages weigh every class alike (rare classes count as much as common ones); weighted "
        "averages weigh classes by their test rows.", "note"),
        table([k.replace("_", " ") for k in keys], [[r[k] for k in keys] for r in rows], table_id="levels-table"))


def classes_section(data: ReportData) -> Markup:
    if not len(data.texts):
        return section("classes", "Classes", empty(NO_ROWS))
    rows = analysis.class_scores(data.hierarchy, data.true_ids, data.pred_ids)
    keys = ["level", "class", "path", "precision", "recall", "f1", "support", "predicted"]
    search = Markup('<p><input type="search" id="class-filter" class="filter" data-filter="classes-table" '
                    'placeholder="Filter classes by name or path…" aria-label="filter classes">'
                    f'<span class="count" id="class-filter-count">{len(rows)} rows</span></p>')
    return section("classes", "Classes", paragraph(
        "Every class of every level; click a header to sort (say by F1, to find the weakest classes). "
        "Support is the number of test rows of the class, predicted how often the model chose it.", "note"),
        search, table(keys, [[r[k] for k in keys] for r in rows], table_id="classes-table", scroll=True,
                      numeric=[True, False, False, True, True, True, True, True]))


BADGE = {analysis.SIBLING: "sibling", analysis.CROSS_BRANCH: "cross", analysis.TOP_LEVEL: "top"}


def confusions_section(data: ReportData) -> Markup:
    if not len(data.texts):
        return section("confusions", "Confusions", empty(NO_ROWS))
    h, parts = data.hierarchy, []
    parts.append(paragraph("A sibling error (same parent) is a near miss: the branch is right. A cross-branch "
                           "error means the model was already wrong at a coarser level.", "note"))
    shares = []
    for d in range(1, h.depth):
        errors, share = analysis.sibling_share(h, data.true_ids, data.pred_ids, d)
        shares.append(f"level {d + 1}: {percent(share)} of {errors} errors" if errors else f"level {d + 1}: no errors")
    if shares:
        parts.append(Markup(f"<p><strong>Sibling errors</strong> — {esc('; '.join(shares))}.</p>"))
    for d in range(h.depth):
        pairs = analysis.confusion_pairs(h, data.true_ids, data.pred_ids, d, top=TOP_CONFUSIONS)
        parts.append(Markup(f"<h3>Level {d + 1}</h3>"))
        if not pairs:
            parts.append(empty(f"No errors at level {d + 1}."))
            continue
        parts.append(table(["true", "predicted", "count", "share of true class", "kind"],
                           [[p["true"], p["predicted"], p["count"], percent(p["share"]),
                             Markup(f'<span class="badge {BADGE[p["kind"]]}">{esc(p["kind"])}</span>')]
                            for p in pairs], table_id=f"confusions-level-{d + 1}",
                           numeric=[False, False, True, True, False]))
    return section("confusions", "Confusions", *parts)


def errors_section(data: ReportData) -> Markup:
    if not len(data.texts):
        return section("errors", "Worst errors", empty(NO_ROWS))
    rows = analysis.worst_errors(data.hierarchy, data.texts, data.true_ids, data.pred_ids, data.confidences[-1],
                                 top=TOP_ERRORS)
    if not rows:
        return section("errors", "Worst errors", empty("No errors: every test row gets its whole path right."))
    body = [[r["row"], r["confidence"], Markup(f'<span class="text">{esc(_cut(r["text"]))}</span>'),
             r["true"], r["predicted"], r["wrong_from_level"]] for r in rows]
    return section("errors", "Worst errors", paragraph(
        f"The {len(rows)} wrong paths the model was most sure of (confidence of the predicted class at level "
        f"{data.hierarchy.depth}): no confidence threshold filters these out. Look for label noise and for "
        "classes that need more or clearer training data.", "note"),
        table(["row", "confidence", "text", "true path", "predicted path", "wrong from level"], body,
              table_id="errors-table", numeric=[True, True, False, False, False, True], scroll=True))


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS].rstrip() + "…"


def calibration_section(data: ReportData, calibration: list[dict]) -> Markup:
    if not len(data.texts):
        return section("calibration", "Calibration", empty(NO_ROWS))
    raw = data.raw_confidences
    parts = [paragraph(
        "Each point is a bin of rows by the confidence of the predicted class (10 equal-width bins): on the "
        "diagonal, a confidence of 0.8 is right 80% of the time. Below the diagonal, the model is over-confident. "
        "The histograms show how many rows fall in each bin.", "note")]
    parts.append(paragraph(f"Calibration: {_calibration_method(data.calibration)}." if data.calibration else
                           "This model has no calibration step: the confidences are its own.", ""))
    if raw is None:
        parts.append(empty("No raw (uncalibrated) confidences: only one curve per level."))
    figures = []
    for d in range(data.hierarchy.depth):
        correct = data.true_ids[:, d] == data.pred_ids[:, d]
        confidence = analysis.predicted_confidence(data.confidences[d], data.pred_ids[:, d])
        raw_confidence = None if raw is None else analysis.predicted_confidence(raw[d], data.pred_ids[:, d])
        figures.append(figure(charts.reliability_chart(
            d + 1, confidence, correct, raw_confidence, expected_calibration_error(confidence, correct),
            None if raw_confidence is None else expected_calibration_error(raw_confidence, correct))))
    parts.append(Markup(f'<div class="charts">{"".join(figures)}</div>'))
    headers = ["level", "ECE", "Brier"] + (["raw ECE", "raw Brier"] if raw is not None else [])
    keys = ["level", "ece", "brier"] + (["raw_ece", "raw_brier"] if raw is not None else [])
    parts.append(table(headers, [[r[k] for k in keys] for r in calibration], table_id="calibration-table"))
    parts.append(paragraph("ECE: expected calibration error (Guo et al., 2017), lower is better. Brier: mean "
                           "squared error of the class probabilities (Brier, 1950), 0 is perfect, 2 the worst.",
                           "note"))
    return section("calibration", "Calibration", *parts)


def _calibration_method(calibration: dict | None) -> str:
    """'temperature, T = 1.70, 2.10 per level' and the like, from the calibration dict."""
    if not calibration:
        return "none"
    method = str(calibration.get("method", "unknown method"))
    temperatures = calibration.get("temperatures")
    if temperatures:
        return f"{method}, T = {', '.join(number(t, 2) for t in temperatures)} per level"
    return method


def thresholds_section(data: ReportData) -> Markup:
    if not data.sweep:
        return section("thresholds", "Thresholds", empty(
            "No threshold sweep for this run: the model always predicts the full path."))
    depth = data.hierarchy.depth
    preferred = ["threshold", *[f"stop_level_{d}" for d in range(1, depth + 1)], "full_path_share",
                 "hierarchical_precision", "hierarchical_recall", "hierarchical_f1", "kept_accuracy",
                 "exact_path_accuracy"]
    seen = [k for r in data.sweep for k in r]
    keys = [k for k in preferred if k in seen] + sorted({k for k in seen if k not in preferred})
    return section("thresholds", "Thresholds", paragraph(
        "With a confidence threshold the model stops at the deepest level it is sure enough of, instead of "
        "guessing the full path: precision rises, recall and the share of full paths fall.", "note"),
        figure(charts.sweep_chart(data.sweep, depth)),
        table([k.replace("_", " ") for k in keys], [[_value(r.get(k)) for k in keys] for r in data.sweep],
              table_id="thresholds-table", numeric=[True] * len(keys)))


TRAINING_COLUMNS = ("epoch", "train_loss", "val_loss", "val_exact_path_accuracy", "val_hierarchical_f1",
                    "val_level_1_accuracy", "best", "seconds")


def training_section(data: ReportData) -> Markup:
    records = data.training
    if not records:
        return section("training", "Training", empty("No training history for this run (metrics.jsonl is empty)."))
    if len(records) == 1:
        record = records[0]
        rows = [[key.replace("_", " "), value] for key, value in record.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "processes"]
        return section("training", "Training", paragraph(
            "Trained in one go (one record, so no curves): the validation scores after fitting.", "note"),
            table(["metric", "value"], rows, table_id="training-table", numeric=[False, True]))
    keys = [k for k in TRAINING_COLUMNS if any(k in r for r in records)]
    body = [[bool(r.get(k)) if k == "best" else round(r[k]) if k == "seconds" and r.get(k) is not None
             else _value(r.get(k)) for k in keys] for r in records]
    return section("training", "Training", figure(charts.training_chart(records)),
                   table([k.replace("_", " ") for k in keys], body, table_id="training-table",
                         numeric=[True] * len(keys)))
