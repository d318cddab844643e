"""The model contract: what the core's jobs need from a model, in texts and label paths.

Every command (train, test, predict, streaming predict, reference set, export, serve,
tune, resume) talks to a model through :class:`Model` alone, by way of the hooks in
:mod:`ktt_core.hookspecs`. Nothing here is tied to a framework: token ids, tensors,
optimizers and devices are details of one implementation (the core's transformer
model, :class:`ktt_core.model.EncoderModel`); a scikit-learn model implements the same
five methods with sparse matrices (``plugins/ktt-tfidf``), and an ensemble
(:mod:`ktt_core.ensemble`) with other models.

This module imports neither torch nor scikit-learn.
"""
from __future__ import annotations

import contextlib
import contextvars
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ktt_core.hierarchy import Hierarchy

if TYPE_CHECKING:  # pragma: no cover
    from ktt_core.registry import ModelSpec
    from ktt_core.runs import RunContext


@dataclass
class LabelledTexts:
    """Texts and their label paths, as per-level class ids of the model's hierarchy.

    ``targets`` is (N, depth) int64, class ids local to each level (``Hierarchy.encode``);
    rows of texts whose labels are unknown (prediction) hold -1.
    """

    texts: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def unlabelled(cls, texts: Sequence[str], hierarchy: Hierarchy) -> "LabelledTexts":
        texts = list(texts)
        return cls(texts, np.full((len(texts), hierarchy.depth), -1, dtype=np.int64))

    @classmethod
    def from_paths(cls, texts: Sequence[str], paths, hierarchy: Hierarchy) -> "LabelledTexts":
        return cls(list(texts), hierarchy.encode_many(paths))


@dataclass
class Scores:
    """What a model says about N texts.

    ``path_log_scores`` (N, n_leaves): the log-score of every path of the hierarchy (one
    per leaf), any scale; the core normalises them (softmax) into path probabilities and
    decodes the best path, so predictions are consistent by construction.
    ``level_log_scores``: per level, (N, n_d) log-scores of that level's classes, for
    models that score levels on their own (per-level decoding uses them), else ``None``.
    ``features``: (N, width) float32 vectors the drift monitor compares (``None`` when not
    asked for). ``loss``: the model's own mean loss on labelled texts, if it has one.
    """

    path_log_scores: np.ndarray
    level_log_scores: list[np.ndarray] | None = None
    features: np.ndarray | None = field(default=None, repr=False)
    loss: float | None = None


class Model(ABC):
    """A trained or trainable hierarchical classifier.

    Subclass it in a plugin and name the subclass in ``ModelSpec(model=...)``. Attributes
    every model has: ``name`` (the ModelSpec's), ``hierarchy``, ``config`` (the resolved
    hyperparameters, a JSON-able dict) and ``calibration``.
    """

    name: str
    hierarchy: Hierarchy
    config: dict[str, Any]
    #: How its scores are calibrated (:class:`ktt_core.calibration.Calibration`), set by the
    #: core after training and on load; ``None``: raw scores. Models never apply it
    #: themselves: :func:`ktt_core.scoring.predict` does, so every command agrees.
    calibration = None

    @classmethod
    def base_defaults(cls) -> dict[str, Any]:
        """Hyperparameters of every model of this class; a ModelSpec's ``defaults`` override them."""
        return {}

    @classmethod
    @abstractmethod
    def build(cls, spec: "ModelSpec", hierarchy: Hierarchy, config: dict[str, Any]) -> "Model":
        """An untrained model for ``hierarchy``. Raise ``KttError`` for a config it cannot use."""

    @classmethod
    @abstractmethod
    def from_state(cls, spec: "ModelSpec", checkpoint: dict[str, Any]) -> "Model":
        """Rebuild the model saved in ``checkpoint`` (:func:`ktt_core.checkpoint.load_checkpoint`):
        ``checkpoint["state"]`` is what :meth:`state` returned, ``checkpoint["config"]`` and
        ``checkpoint["hierarchy"]`` (a dict) its config and hierarchy, ``checkpoint["path"]``
        the file, for error messages."""

    @abstractmethod
    def fit(self, train: LabelledTexts, val: LabelledTexts, run: "RunContext") -> list[dict]:
        """Train on ``train``, validating on ``val``; return one metrics record per epoch
        (models trained in one go return one). Save the model with ``run.save_best(self,
        ...)`` (and ``run.record_epoch`` for ``metrics.jsonl``); resume from ``run.resume``
        when it is set, if the model can."""

    @abstractmethod
    def score(self, texts: Sequence[str], features: bool = False) -> Scores:
        """Score every path of the hierarchy for each text (and the drift features when
        ``features``). Must not change the model."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs besides config and hierarchy, as nested dicts
        and lists of numpy arrays, torch tensors, strings, numbers and bytes: never objects
        that need unpickling."""

    def export(self, fmt: str, directory: Path) -> Path | None:
        """Write the model in format ``fmt`` (``"onnx"``) into ``directory``; return the folder,
        or ``None`` when this model has no such export. ``"bento"`` is the core's for all."""
        return None

    def to(self, device) -> "Model":
        """Move the model to a device; models without devices ignore it."""
        return self

    def summary(self) -> str:
        """One line on the model for ``ktt train``'s header (size, encoder, features...)."""
        return ""

    def dry_run(self, sample: "LabelledTexts") -> str:
        """For ``ktt train --dry-run``: run what can run before fitting on a few training
        rows (a forward pass and the loss, for a torch model) and say what was checked;
        raise KttError naming what is wrong. The default checks nothing."""
        return ""


_FULL_PRECISION = contextvars.ContextVar("ktt_full_precision", default=False)


@contextlib.contextmanager
def full_precision():
    """Within this block models score in full precision (fp32), whatever precision they
    would use (bf16 on CUDA or on a CPU with native bf16: :func:`ktt_core.devices.use_bf16`).

    For comparing a model with its fp32 ONNX export (:mod:`ktt_core.export.parity`): bf16
    scores differ from fp32 ones by more than an export may. A model that computes in
    reduced precision reads :func:`full_precision_requested`.
    """
    token = _FULL_PRECISION.set(True)
    try:
        yield
    finally:
        _FULL_PRECISION.reset(token)


def full_precision_requested() -> bool:
    """Whether the caller is inside :func:`full_precision`."""
    return _FULL_PRECISION.get()
