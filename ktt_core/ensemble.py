"""``ensemble``: the core's own model, a weighted combination of trained runs.

``ktt train ensemble DATASET --set members=db_linear,tfidf_lsgd`` combines the latest run
of each named model on DATASET (or run folders, by path), whatever their framework:
every member scores texts through the scoring call, each member's path scores are
normalised into log-probabilities over the same hierarchy, and the ensemble's path
log-score is

- ``probability``: ``log(sum_m w_m * p_m(path))``, a weighted mean of path probabilities;
- ``log``: ``sum_m w_m * log p_m(path)``, a weighted mean of log-probabilities (a
  product of experts), renormalised by the decoder.

Either way it scores paths of the hierarchy, so decoding stays consistent by construction.
Training fits the weights (a grid over the simplex) and, with ``combine: auto``, the rule,
on the validation split: the best exact-path accuracy, ties broken by the lower
negative log-likelihood. The checkpoint embeds every member's own state, so an ensemble
run is one self-contained file like any other (DVC, BentoML and a moved workspace just
work) and a member retrained later does not change it.

This module imports neither torch nor scikit-learn (the ONNX runtime uses
:func:`combine_scores`).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ktt_core.contract import LabelledTexts, Model, Scores
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.registry import ModelSpec

ENSEMBLE_FORMAT = "ktt-onnx-ensemble"
COMBINES = ("probability", "log")


def log_normalise(path_log_scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, float64: any model's path scores as log-probabilities."""
    scores = np.asarray(path_log_scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def combine_scores(member_scores: Sequence[np.ndarray], weights: Sequence[float], combine: str) -> np.ndarray:
    """The ensemble's (N, n_leaves) path log-scores from its members' (see the module docstring)."""
    return combine_log_probs([log_normalise(s) for s in member_scores], weights, combine)


def combine_log_probs(logs: Sequence[np.ndarray], weights: Sequence[float], combine: str) -> np.ndarray:
    """:func:`combine_scores` for members' scores already normalised to log-probabilities."""
    if combine == "log":
        return sum(w * lp for w, lp in zip(weights, logs))
    if combine == "probability":
        total = sum(w * np.exp(lp) for w, lp in zip(weights, logs))
        return np.log(np.maximum(total, 1e-300))
    raise KttError(f"unknown combine rule {combine!r}; use one of {', '.join(COMBINES)}")


def weight_grid(n: int) -> np.ndarray:
    """Points of the simplex of ``n`` weights: steps of 0.05 up to 3 members, 0.1 up to 5, then 0.25."""
    steps = 20 if n <= 3 else 10 if n <= 5 else 4
    points = [c for c in itertools.product(range(steps + 1), repeat=n - 1) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in points], dtype=np.float64) / steps


def fit_weights(member_logs: Sequence[np.ndarray], true_leaves: np.ndarray, combines: Sequence[str]
                ) -> tuple[np.ndarray, str, float]:
    """(weights, combine rule, validation exact-path accuracy) of the best combination."""
    best: tuple | None = None
    rows = np.arange(len(true_leaves))
    member_logs = [log_normalise(m) for m in member_logs]
    for combine in combines:
        for weights in weight_grid(len(member_logs)):
            scores = log_normalise(combine_log_probs(member_logs, weights, combine))
            accuracy = float((scores.argmax(axis=1) == true_leaves).mean())
            nll = float(-scores[rows, true_leaves].mean())
            key = (accuracy, -nll)
            if best is None or key > best[0]:
                best = (key, weights, combine)
    (accuracy, _), weights, combine = best
    return weights, combine, accuracy


def parse_weights(text: str, n: int) -> np.ndarray:
    """``--set weights=0.7,0.3``: one non-negative number per member, not all zero; normalised."""
    try:
        values = np.array([float(x) for x in text.split(",")], dtype=np.float64)
    except ValueError:
        raise KttError(f"key 'weights' must be comma-separated numbers, one per member, got {text!r}") from None
    if len(values) != n:
        raise KttError(f"key 'weights' has {len(values)} numbers for {n} members")
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise KttError(f"key 'weights' must be finite, non-negative and not all zero, got {text!r}")
    return values / values.sum()


class EnsembleModel(Model):
    """Trained models of any framework, combined (see the module docstring)."""

    def __init__(self, name: str, hierarchy: Hierarchy, config: dict[str, Any], members: list[dict] | None = None,
                 weights: np.ndarray | None = None, combine: str | None = None):
        self.name, self.hierarchy, self.config = name, hierarchy, config
        # Each member: {"spec", "model", "source" (run folder), "source_sha256" (its best.pt)}.
        self.members = members or []
        self.weights = weights
        self.combine = combine

    @classmethod
    def base_defaults(cls) -> dict[str, Any]:
        return {"members": "", "combine": "auto", "weights": ""}

    @classmethod
    def build(cls, spec: ModelSpec, hierarchy: Hierarchy, config: dict[str, Any]) -> "EnsembleModel":
        names = member_names(config)
        if len(names) < 2:
            raise KttError("an ensemble combines at least two trained runs: "
                           "--set members=MODEL_OR_RUN,MODEL_OR_RUN[,...]")
        if config["weights"]:
            parse_weights(config["weights"], len(names))
        return cls(spec.name, hierarchy, config)

    # -- training: resolve the members, fit the weights --------------------------------------
    def fit(self, train: LabelledTexts, val: LabelledTexts, run) -> list[dict]:
        import time

        from ktt_core.decoding import decode_scores
        from ktt_core.scoring import score

        started = time.perf_counter()
        if run.plugins is None or run.workspace is None:
            raise KttError("an ensemble is trained by ktt train, which names its workspace and dataset")
        self.members = [self._open_member(run, item) for item in member_names(self.config)]
        for member in self.members:
            member["model"].to(run.device)
            run.log(f"member {member['spec'].name}: {member['source']}")
        logs = [log_normalise(score(run.plugins, m["spec"], m["model"], val.texts).path_log_scores)
                for m in self.members]
        for member, member_logs in zip(self.members, logs):
            accuracy = float((member_logs.argmax(axis=1) == val.targets[:, -1]).mean())
            run.log(f"  {member['spec'].name}: val exact_path_accuracy {accuracy:.4f}")
        combines = COMBINES if self.config["combine"] == "auto" else (self.config["combine"],)
        if self.config["weights"]:
            self.weights = parse_weights(self.config["weights"], len(self.members))
            self.combine = combines[0] if len(combines) == 1 else "probability"
        else:
            self.weights, self.combine, _ = fit_weights(logs, val.targets[:, -1], combines)
        shares = ", ".join(f"{m['spec'].name} {w:.2f}" for m, w in zip(self.members, self.weights))
        run.log(f"weights {shares}; combine {self.combine}")
        combined = Scores(combine_scores(logs, self.weights, self.combine))
        predictions = decode_scores(self.hierarchy, combined, val.targets)
        return run.finish_fit(self, val, predictions, started, weights=[float(w) for w in self.weights],
                              combine=self.combine)

    def _open_member(self, run, item: str) -> dict:
        """A member named by model (its latest run on the dataset) or by run folder; refused by
        name when missing, damaged, or trained on another dataset or hierarchy."""
        from ktt_core.checkpoint import load_checkpoint
        from ktt_core.files import sha256_file
        from ktt_core.jobs import resolve_checkpoint

        ws, plugins = run.workspace, run.plugins
        looks_like_path = "/" in item or "\\" in item or Path(item).is_dir()
        if looks_like_path:
            folder = Path(item).expanduser().resolve()
            if not folder.is_dir():
                raise KttError(f"ensemble member {item}: no such run folder")
            path = resolve_checkpoint(ws, "", run.dataset, str(folder), None)
        else:
            plugins.model(item)  # an unknown model is named as such
            if item == self.name:
                raise KttError("an ensemble member cannot be 'ensemble' by name; give its run folder")
            try:
                path = resolve_checkpoint(ws, item, run.dataset, None, None)
            except KttError as exc:
                raise KttError(f"ensemble member {item}: {exc}") from None
        checkpoint = load_checkpoint(path)
        settings_path = path.parent / "config.json"
        if settings_path.is_file():
            try:
                trained_on = json.loads(settings_path.read_text(encoding="utf-8")).get("dataset")
            except (OSError, ValueError, AttributeError):
                trained_on = None
            if trained_on is not None and trained_on != run.dataset:
                raise KttError(f"ensemble member {item} ({path.parent}) was trained on dataset "
                               f"'{trained_on}', not '{run.dataset}'")
        if checkpoint["hierarchy"] != self.hierarchy.to_dict():
            raise KttError(f"ensemble member {item} ({path}) was trained on another label hierarchy than "
                           f"dataset '{run.dataset}' has; retrain it on this dataset")
        spec = plugins.model(checkpoint["model"])
        model = plugins.hook.ktt_load_model(spec=spec, checkpoint=checkpoint)
        return {"spec": spec, "model": model, "source": str(path.parent), "source_sha256": sha256_file(path)}

    # -- scoring -------------------------------------------------------------------------
    def score(self, texts: Sequence[str], features: bool = False) -> Scores:
        from ktt_core.plugins import get_plugins
        from ktt_core.scoring import score

        plugins = get_plugins()
        outputs = [score(plugins, m["spec"], m["model"], texts, features=features and i == 0)
                   for i, m in enumerate(self.members)]
        # Drift features are the first member's: the monitor compares one input space.
        return Scores(combine_scores([o.path_log_scores for o in outputs], self.weights, self.combine),
                      features=outputs[0].features if features else None)

    def to(self, device) -> "EnsembleModel":
        for member in self.members:
            member["model"].to(device)
        return self

    def summary(self) -> str:
        return f"members {self.config['members']}"

    # -- saving and loading: every member's state inside the one checkpoint ---------------
    def state(self) -> dict[str, Any]:
        return {"weights": np.asarray(self.weights, dtype=np.float64), "combine": self.combine,
                "members": [{"model": m["spec"].name,
                             "config_json": json.dumps(m["model"].config),
                             "hierarchy_json": json.dumps(m["model"].hierarchy.to_dict(), ensure_ascii=False),
                             "state": m["model"].state(),
                             "source": m["source"], "source_sha256": m["source_sha256"]}
                            for m in self.members]}

    @classmethod
    def from_state(cls, spec: ModelSpec, checkpoint: dict[str, Any]) -> "EnsembleModel":
        from ktt_core.checkpoint import as_numpy, hierarchy_and_config
        from ktt_core.plugins import get_plugins

        path, state = checkpoint["path"], checkpoint["state"]
        hierarchy, config = hierarchy_and_config(spec, checkpoint)
        plugins = get_plugins()
        try:
            weights = as_numpy(state["weights"], path, "weights", np.float64, ndim=1)
            combine = str(state["combine"])
            stored = list(state["members"])
        except (KeyError, TypeError) as exc:
            raise KttError(f"{path}: ensemble checkpoint is incomplete ({exc!r:.80})") from None
        if combine not in COMBINES or len(weights) != len(stored) or len(stored) < 2:
            raise KttError(f"{path}: ensemble checkpoint has {len(stored)} members, {len(weights)} weights "
                           f"and combine rule {combine!r}; it is damaged")
        members = []
        for i, entry in enumerate(stored):
            where = f"{path} (member {i + 1})"
            try:
                member_spec = plugins.model(entry["model"])
                member_checkpoint = {"path": where, "model": entry["model"], "state": entry["state"],
                                     "config": json.loads(entry["config_json"]),
                                     "hierarchy": json.loads(entry["hierarchy_json"]),
                                     "training": {}, "resume": None, "optimizer": None}
            except (KeyError, TypeError, ValueError) as exc:
                raise KttError(f"{where}: member entry is damaged ({exc!r:.80})") from None
            if member_checkpoint["hierarchy"] != checkpoint["hierarchy"]:
                raise KttError(f"{where}: member has another hierarchy than the ensemble")
            model = plugins.hook.ktt_load_model(spec=member_spec, checkpoint=member_checkpoint)
            members.append({"spec": member_spec, "model": model, "source": str(entry.get("source", "")),
                            "source_sha256": str(entry.get("source_sha256", ""))})
        return cls(spec.name, hierarchy, config, members, weights, combine)

    # -- export: one folder per member ------------------------------------------------------
    def export(self, fmt: str, directory) -> Path | None:
        if fmt != "onnx":
            return None
        from ktt_core.export import export_with_hook
        from ktt_core.files import atomic_write_json
        from ktt_core.plugins import get_plugins

        directory = Path(directory)
        plugins = get_plugins()
        entries = []
        for i, member in enumerate(self.members):
            export_with_hook(plugins, member["model"], "onnx", directory / "members" / str(i))
            entries.append({"folder": f"members/{i}", "model": member["spec"].name, "source": member["source"]})
        self.hierarchy.save(directory / "hierarchy.json")
        atomic_write_json(directory / "ktt.json", {
            "format": ENSEMBLE_FORMAT, "version": 1, "model": self.name, "config": self.config,
            "members": entries, "weights": [float(w) for w in self.weights], "combine": self.combine})
        return directory


def member_names(config: dict) -> list[str]:
    return [x.strip() for x in str(config.get("members", "")).split(",") if x.strip()]


ENSEMBLE_SPEC = ModelSpec(
    name="ensemble",
    display_name="Ensemble of trained runs",
    model=EnsembleModel,
    choices={"combine": ("auto", *COMBINES)},
    key_help={"members": "trained runs to combine: model names (their latest run) or run folders, comma list",
              "combine": "probability or log mean; auto picks the better on validation",
              "weights": "comma list of member weights (default: fitted on validation)"},
    service="ktt_core.serving.ensemble_service:EnsembleService",
    description="Weighted mean of the path probabilities (or log-probabilities) of trained runs of any "
                "models on one dataset; weights fitted on the validation split.",
)
