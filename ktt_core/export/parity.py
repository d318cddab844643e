"""The check every ONNX export passes before it is kept: the export, run by
:mod:`ktt_core.onnx_runtime`, must score probe texts as the model's scoring call does."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ktt_core.decoding import softmax
from ktt_core.errors import KttError

#: Largest absolute difference allowed between the export and the model on the probe texts
#: (path probabilities, per-level log-scores, drift features).
TOLERANCE = 1e-4


def probe_texts(hierarchy) -> list[str]:
    """Texts of very different lengths made of the hierarchy's labels: one short, one far
    longer than any max_length (truncation), digits, accents and non-Latin script."""
    labels = [label for level in hierarchy.classes for label in level if label]
    words = " ".join(labels[:12]) or "probe"
    return [f"{words} probe", "a", f"export check {words}", " ".join([words] * 80), "42 x",
            "Crème brûlée 製品 ✓ 100%"]


def check_onnx_parity(plugins, spec, model, directory: Path) -> float:
    """Compare the export in ``directory`` with :func:`ktt_core.scoring.score`; returns the
    largest difference, KttError beyond :data:`TOLERANCE` (naming the output)."""
    from ktt_core.contract import full_precision
    from ktt_core.onnx_runtime import open_onnx
    from ktt_core.scoring import score

    try:
        runtime = open_onnx(directory)
    except KttError as exc:
        raise KttError(f"ONNX export of {model.name} does not load: {exc}") from None
    stored = runtime.calibration.to_dict() if runtime.calibration is not None else None
    if stored != (model.calibration.to_dict() if model.calibration is not None else None):
        raise KttError(f"ONNX export of {model.name}: ktt.json does not hold the model's calibration")
    texts = probe_texts(model.hierarchy)
    with full_precision():  # the export computes in fp32, whatever precision the model runs in
        want = score(plugins, spec, model, texts, features=True)
    got = runtime.scores(texts, batch_size=4)  # two batches: batching is checked too
    pairs = [("path probabilities", softmax(want.path_log_scores.astype(np.float64)),
              softmax(got["path_log_scores"].astype(np.float64))),
             ("features", want.features, got.get("features"))]
    if want.level_log_scores is not None:
        pairs.append(("level_log_scores", np.concatenate(want.level_log_scores, axis=1),
                      got.get("level_log_scores")))
    worst = 0.0
    for name, expected, have in pairs:
        if have is None or np.shape(have) != np.shape(expected):
            raise KttError(f"ONNX export of {model.name}: output {name} has shape "
                           f"{None if have is None else np.shape(have)}, the model gives {np.shape(expected)}")
        diff = float(np.max(np.abs(np.asarray(have, np.float64) - expected))) if np.size(expected) else 0.0
        if not diff <= TOLERANCE:  # also catches NaN
            raise KttError(f"ONNX export of {model.name}: onnxruntime differs from the model by {diff:.3g} "
                           f"on {name} (tolerance {TOLERANCE:g}); the export is not written")
        worst = max(worst, diff)
    return worst
