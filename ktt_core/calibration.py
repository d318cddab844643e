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

from ktt_core.errors import KttError

METHODS = ("per-level", "temperature", "none")
#: Fewer labelled validation rows than this leave the scores raw: a temperature fit on a
#: handful of rows says more about those rows than about the model.
MIN_ROWS = 20
#: Temperatures are searched in [1/T_MAX, T_MAX] (log scale); a fit at a bound is noted.
T_MAX = 20.0
#: How much lower the validation ECE of the ECE-grid temperature must be than that of the
#: raw scores and of the NLL fit for it to be taken (see :func:`_fit_level`).
ECE_MARGIN = 0.005


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

def _softmax(log_scores: np.ndarray) -> np.ndarray:
    z = log_scores - log_scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _level_mass(hierarchy, path_probs: np.ndarray, level: int) -> np.ndarray:
    acc = np.zeros((path_probs.shape[0], hierarchy.level_sizes[level]), dtype=np.float64)
    np.add.at(acc.T, hierarchy.leaf_ancestors[:, level], path_probs.T)
    return acc


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
        return _softmax(scores), None
    temps = calibration.temperatures
    path_probs = _softmax(scores / temps[-1])
    if all(t == temps[-1] for t in temps):
        return path_probs, None
    levels = [_level_mass(hierarchy, path_probs if t == temps[-1] else _softmax(scores / t), d)
              for d, t in enumerate(temps)]
    # Levels fit apart could make a child more certain than its parent; a class is never
    # more likely than the class it belongs to, so each is capped by its parent's.
    for d in range(1, hierarchy.depth):
        levels[d] = np.minimum(levels[d], levels[d - 1][:, hierarchy.parent_of[d]])
    return path_probs, levels


# -- fitting ------------------------------------------------------------------------------

def _level_nll(hierarchy, scores: np.ndarray, targets: np.ndarray, level: int, temperature: float) -> float:
    mass = _level_mass(hierarchy, _softmax(scores / temperature), level)
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
    level whose fit would not lower its validation ECE keeps T = 1 (:func:`_fit_level`).
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


def _level_ece(hierarchy, scores: np.ndarray, targets: np.ndarray, level: int, temperature: float,
               all_levels: bool) -> float:
    """Validation ECE of ``level`` at ``temperature`` (of every level, for one shared T)."""
    from ktt_core.calibration_metrics import expected_calibration_error

    probs = _softmax(scores / temperature)
    best_path = hierarchy.leaf_ancestors[scores.argmax(axis=1)]  # the same at every temperature
    rows = np.arange(len(targets))
    eces = []
    for d in range(hierarchy.depth) if all_levels else [level]:
        confidence = _level_mass(hierarchy, probs, d)[rows, best_path[:, d]]
        eces.append(expected_calibration_error(confidence, best_path[:, d] == targets[:, d]))
    return float(np.mean(eces))


def _fit_level(hierarchy, scores: np.ndarray, targets: np.ndarray, level: int, all_levels: bool
               ) -> tuple[float, dict]:
    """The temperature of one level (of all levels, for ``all_levels``) and how it was chosen.

    The standard fit minimises the validation negative log-likelihood (Guo et al.). NLL and
    ECE can disagree, for heads whose scores are not shaped like a softmax's (AWX's leaf
    level on Walmart: the NLL-optimal T = 0.96 left ECE at 0.17; T = 0.51 brought it to
    0.07). So the candidates are T = 1 (raw), the NLL fit, and the T of a log grid with the
    lowest validation ECE; the one with the lowest validation ECE is kept, the ECE-grid one
    only when it beats the other two by :data:`ECE_MARGIN` (a small gain is noise).
    """
    nll = lambda t: _level_nll(hierarchy, scores, targets, level, t)  # noqa: E731
    ece = lambda t: _level_ece(hierarchy, scores, targets, level, t, all_levels)  # noqa: E731
    by_nll = _best_temperature(nll)
    candidates = {"raw": 1.0, "nll": by_nll}
    eces = {name: ece(t) for name, t in candidates.items()}
    grid = np.exp(np.linspace(-math.log(T_MAX), math.log(T_MAX), 61))
    grid_eces = [ece(float(t)) for t in grid]
    by_ece = float(grid[int(np.argmin(grid_eces))])
    chosen = min(eces, key=eces.get)
    if min(grid_eces) < eces[chosen] - ECE_MARGIN:
        chosen, candidates["ece"], eces["ece"] = "ece", by_ece, min(grid_eces)
    temperature = round(candidates[chosen], 4)
    record = {"by": chosen, "val_ece_raw": round(eces["raw"], 5), "val_ece": round(eces[chosen], 5),
              "val_nll_raw": round(nll(1.0), 5), "val_nll": round(nll(temperature), 5)}
    return temperature, record
