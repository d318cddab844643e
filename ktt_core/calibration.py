"""Calibrated confidences: temperature scaling of the path scores, fit on the validation split.

A model's raw path probabilities (the softmax of its path log-scores) are often over- or
under-confident, so a threshold on them means nothing a user can reason about.
Temperature scaling (Guo et al., 2017) divides the log-scores by a temperature T fit to
minimise the negative log-likelihood of the validation labels: T > 1 softens
over-confident scores, T < 1 sharpens timid ones, and the best path never changes (the
order of the scores is kept), so accuracy is untouched.

KTT fits one temperature per level (``per-level``, the default): the confidence of a class
at level d is the probability mass of the paths through it under ``softmax(s / T_d)``,
with T_d fit on that level's labels; path probabilities (top-k paths, the leaf level) use
the last level's. Coarse levels of a hierarchy are usually better calibrated than the
leaves, and one temperature for all levels over-corrects them (docs/quality.md has the
measurements). ``temperature`` fits one T for every level (on the path likelihood);
``none`` keeps the raw scores.

The result is a :class:`Calibration`: stored in the checkpoint (``calibration_json``), in
every export's ``ktt.json``, and applied by :func:`ktt_core.decoding.decode` wherever
scores are decoded (test, predict, streaming, serving, ONNX, ensembles).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ktt_core.decoding import level_mass, softmax
from ktt_core.errors import KttError

METHODS = ("per-level", "temperature", "none")
#: Fewer labelled validation rows than this leave the scores raw: a temperature fit on a
#: handful of rows says more about those rows than about the model.
MIN_ROWS = 20
#: Temperatures are searched in [1/T_MAX, T_MAX] (log scale); a fit at a bound is noted.
T_MAX = 20.0
#: At most this many validation rows are used to fit (a random subset beyond it): enough
#: for one temperature per level, and the fit stays seconds on large splits.
MAX_FIT_ROWS = 10_000


@dataclass
class Calibration:
    """One temperature per level (all equal for ``temperature``); ``note`` says how it was fit."""

    method: str
    temperatures: list[float]
    note: str = ""
    fit: dict = field(default_factory=dict)   # validation NLL before/after, rows

    @property
    def is_identity(self) -> bool:
        return all(t == 1.0 for t in self.temperatures)

    def to_dict(self) -> dict:
        return {"method": self.method, "temperatures": [float(t) for t in self.temperatures],
                "note": self.note, "fit": self.fit}

    @classmethod
    def from_dict(cls, data: dict | None, depth: int, source: str = "calibration") -> "Calibration | None":
        """Read a stored calibration; ``None`` (raw scores) for ``None``; KttError naming
        ``source`` for one that is malformed or of another depth."""
        if data is None:
            return None
        try:
            temps = [float(t) for t in data["temperatures"]]
            method = str(data["method"])
        except (KeyError, TypeError, ValueError):
            raise KttError(f"{source}: malformed calibration (expected method and temperatures)") from None
        if method not in METHODS or len(temps) != depth or not all(math.isfinite(t) and t > 0 for t in temps):
            raise KttError(f"{source}: calibration must have method in {METHODS} and {depth} positive "
                           f"temperatures, got {method!r} {temps}")
        return cls(method, temps, str(data.get("note", "")), dict(data.get("fit") or {}))

    def describe(self) -> str:
        """One line for people: ``per-level temperatures 1.21, 1.65`` or ``none (why)``."""
        if self.method == "none" or self.is_identity and self.note:
            return f"none ({self.note})" if self.note else "none"
        temps = ", ".join(f"{t:.2f}" for t in self.temperatures)
        what = "temperature" if self.method == "temperature" else "per-level temperatures"
        return f"{what} {temps}" + (f" ({self.note})" if self.note else "")


def identity(depth: int, note: str = "", method: str = "none") -> Calibration:
    return Calibration(method, [1.0] * depth, note)


# -- applying -----------------------------------------------------------------------------

def calibrated_probs(hierarchy, path_log_scores: np.ndarray, calibration: Calibration | None
                     ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """(path probabilities, per-level confidences or ``None``) of raw path log-scores.

    Per-level confidences are returned only when some level's temperature differs from the
    last level's; otherwise they follow from the path probabilities
    (:func:`ktt_core.decoding.level_probs`). A path's leaf-level confidence may then be
    below its path probability (capped by an ancestor's); predictions report the former.
    """
    scores = np.asarray(path_log_scores, dtype=np.float64)
    if calibration is None or calibration.is_identity:
        return softmax(scores), None
    temps = calibration.temperatures
    path_probs = softmax(scores / temps[-1])
    if all(t == temps[-1] for t in temps):
        return path_probs, None
    levels = [level_mass(hierarchy, path_probs if t == temps[-1] else softmax(scores / t), d)
              for d, t in enumerate(temps)]
    # Levels fit apart could make a child more certain than its parent; a class is never
    # more likely than the class it belongs to, so each is capped by its parent's.
    for d in range(1, hierarchy.depth):
        levels[d] = np.minimum(levels[d], levels[d - 1][:, hierarchy.parent_of[d]])
    return path_probs, levels


# -- fitting ------------------------------------------------------------------------------

def _level_nll(hierarchy, scores: np.ndarray, targets: np.ndarray, level: int, temperature: float) -> float:
    mass = level_mass(hierarchy, softmax(scores / temperature), level)
    true = mass[np.arange(len(targets)), targets[:, level]]
    return float(-np.log(np.clip(true, 1e-12, 1.0)).mean())


def _best_temperature(nll) -> float:
    """The temperature in [1/T_MAX, T_MAX] minimising ``nll(T)`` (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    bound = math.log(T_MAX)
    result = minimize_scalar(lambda log_t: nll(math.exp(log_t)), bounds=(-bound, bound), method="bounded",
                             options={"xatol": 1e-3})
    return float(math.exp(result.x))


def fit_calibration(hierarchy, path_log_scores: np.ndarray, targets: np.ndarray,
                    method: str = "per-level") -> Calibration:
    """Fit ``method`` on validation scores (N, n_leaves) and their targets (N, depth).

    Degenerate validation data never fails a training: too few labelled rows
    (:data:`MIN_ROWS`), or scores holding NaN or +inf, give the identity with a note; a
    level whose fit does not lower the cross-validated ECE beyond noise keeps T = 1
    (:func:`_fit_level`).
    """
    if method not in METHODS:
        raise KttError(f"calibration must be one of {', '.join(METHODS)}, got {method!r}")
    depth = hierarchy.depth
    if method == "none":
        return identity(depth, "turned off")
    scores = np.asarray(path_log_scores, dtype=np.float64)
    targets = np.asarray(targets)
    known = (targets >= 0).all(axis=1) if len(targets) else np.zeros(0, dtype=bool)
    scores, targets = scores[known], targets[known]
    if len(targets) < MIN_ROWS:
        return identity(depth, f"{len(targets)} labelled validation rows; calibration needs {MIN_ROWS}", method)
    if np.isnan(scores).any() or np.isposinf(scores).any():  # -inf is a path ruled out: fine
        return identity(depth, "validation scores hold NaN or +inf", method)
    if len(targets) > MAX_FIT_ROWS:
        keep = np.random.default_rng(0).choice(len(targets), MAX_FIT_ROWS, replace=False)
        scores, targets = scores[keep], targets[keep]
    # Scores shifted per row change nothing (softmax) but keep exp() in range.
    scores = scores - scores.max(axis=1, keepdims=True)
    levels = range(depth) if method == "per-level" else [depth - 1]
    temps, fit = [], {"rows": int(len(targets)), "levels": {}}
    for d in levels:
        best, record = _fit_level(hierarchy, scores, targets, d, all_levels=method == "temperature")
        temps.append(best)
        fit["levels"][f"level_{d + 1}"] = record
    if method == "temperature":
        temps = temps * depth
    at_bound = [d + 1 for d, t in enumerate(temps) if t <= 1 / T_MAX * 1.01 or t >= T_MAX * 0.99]
    note = f"level {', '.join(map(str, at_bound))} at the search bound" if at_bound else ""
    return Calibration(method, temps, note, fit)


def _confidences(hierarchy, scores: np.ndarray, level: int, temperature: float) -> np.ndarray:
    """Confidence of each row's predicted class at ``level`` (the best path does not depend
    on the temperature)."""
    best_path = hierarchy.leaf_ancestors[scores.argmax(axis=1)]
    mass = level_mass(hierarchy, softmax(scores / temperature), level)
    return mass[np.arange(len(scores)), best_path[:, level]]


def _ece(hierarchy, scores: np.ndarray, targets: np.ndarray, levels, temperature: float) -> float:
    """Mean ECE over ``levels`` at ``temperature``."""
    from ktt_core.calibration_metrics import expected_calibration_error

    best_path = hierarchy.leaf_ancestors[scores.argmax(axis=1)]
    return float(np.mean([expected_calibration_error(_confidences(hierarchy, scores, d, temperature),
                                                     best_path[:, d] == targets[:, d]) for d in levels]))


#: Temperatures the ECE search tries (log-spaced over [1/T_MAX, T_MAX]).
ECE_GRID = np.exp(np.linspace(-math.log(T_MAX), math.log(T_MAX), 41))
#: Folds of the validation split on which the fitting procedures are compared.
FOLDS = 5
#: Raw scores are kept unless a fit lowers the cross-validated ECE by more than
#: NOISE_MARGIN / sqrt(rows): a gain within the sampling noise of an ECE is no gain.
NOISE_MARGIN = 0.25


def _procedures(hierarchy, level: int, levels):
    """The ways to fit a temperature, each ``(scores, targets) -> T``: none (raw), minimum
    negative log-likelihood (Guo et al.) of ``level``, minimum ECE over ``levels`` on a grid."""
    def by_nll(scores, targets):
        return _best_temperature(lambda t: _level_nll(hierarchy, scores, targets, level, t))

    def by_ece(scores, targets):
        eces = [_ece(hierarchy, scores, targets, levels, float(t)) for t in ECE_GRID]
        return float(ECE_GRID[int(np.argmin(eces))])

    return {"raw": lambda scores, targets: 1.0, "nll": by_nll, "ece": by_ece}


def _fit_level(hierarchy, scores: np.ndarray, targets: np.ndarray, level: int, all_levels: bool
               ) -> tuple[float, dict]:
    """The temperature of one level (of all levels, for ``all_levels``) and how it was chosen.

    Three procedures compete: raw scores (T = 1), the NLL fit and the ECE-grid fit. NLL and
    ECE can disagree for heads whose scores are not shaped like a softmax's (AWX's leaf level
    on Walmart: the NLL-optimal T = 0.96 left its ECE at 0.17, T = 0.45 brought it to 0.06),
    and either fit, judged on the rows it was fit on, flatters itself on a small validation
    split. So each procedure is fit on 4/5 of the validation rows and its ECE measured on the
    other fifth, fold by fold (cross-validation); the procedure with the lowest out-of-fold
    ECE is refit on all rows. Raw scores are kept unless the winner beats them by more than
    the noise of an ECE on N rows (``0.25 / sqrt(N)``: 0.014 on 300 rows, 0.005 on 3,000).
    """
    levels = range(hierarchy.depth) if all_levels else [level]
    procedures = _procedures(hierarchy, level, levels)
    rng = np.random.default_rng(0)
    folds = np.array_split(rng.permutation(len(targets)), min(FOLDS, len(targets)))
    out_of_fold = {}
    for name, fit in procedures.items():
        confidence = {d: np.empty(len(targets)) for d in levels}
        for held in folds:
            kept = np.setdiff1d(np.arange(len(targets)), held)
            temperature = fit(scores[kept], targets[kept])
            for d in levels:
                confidence[d][held] = _confidences(hierarchy, scores[held], d, temperature)
        out_of_fold[name] = _pooled_ece(hierarchy, scores, targets, levels, confidence)
    chosen = min(out_of_fold, key=out_of_fold.get)
    if out_of_fold[chosen] > out_of_fold["raw"] - NOISE_MARGIN / math.sqrt(len(targets)):
        chosen = "raw"
    temperature = round(procedures[chosen](scores, targets), 4)
    record = {"by": chosen, "cv_ece": {k: round(v, 5) for k, v in out_of_fold.items()},
              "val_ece_raw": round(_ece(hierarchy, scores, targets, levels, 1.0), 5),
              "val_ece": round(_ece(hierarchy, scores, targets, levels, temperature), 5),
              "val_nll_raw": round(_level_nll(hierarchy, scores, targets, level, 1.0), 5),
              "val_nll": round(_level_nll(hierarchy, scores, targets, level, temperature), 5)}
    return temperature, record


def _pooled_ece(hierarchy, scores, targets, levels, confidence: dict) -> float:
    from ktt_core.calibration_metrics import expected_calibration_error

    best_path = hierarchy.leaf_ancestors[scores.argmax(axis=1)]
    return float(np.mean([expected_calibration_error(confidence[d], best_path[:, d] == targets[:, d])
                          for d in levels]))
