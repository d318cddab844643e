"""The original KTT's scikit-learn models: TF-IDF n-grams and linear classifiers.

Both models turn a text into the concatenation of two TF-IDF vectors (word n-grams and
character n-grams inside word boundaries, each L2-normalised, as scikit-learn's
``TfidfVectorizer`` makes them) and score the hierarchy with linear layers:

- ``tfidf_lsgd`` (:class:`FlatTfidfModel`): one classifier over the full paths (leaves).
  ``log p(path) = log_softmax(X W^T + b)``.
- ``tfidf_hsgd`` (:class:`HierarchicalTfidfModel`): a local classifier per parent node
  (hiclass' "local classifier per parent node"): for each node, a classifier over its
  children trained on the rows under it. ``log p(path) = sum_d log p(c_d | c_{d-1})``,
  a log-softmax within each group of siblings, so the best path is decoded consistently.

The classifier is scikit-learn's ``SGDClassifier`` with the log loss (the original's SGD,
and the default: on full Walmart it matched logistic regression's accuracy in a seventh
of the time, docs/models/tfidf.md) or ``LogisticRegression`` (``classifier: logreg``); its
decision values are read as logits of a softmax over the classes (over siblings for the
hierarchical model). The model's state is plain data (the
vocabularies as JSON, idf vectors and coefficient matrices as arrays): saved in KTT's
checkpoint format, never pickled, and exported to one ONNX graph that computes the TF-IDF
vectors itself (:mod:`ktt_tfidf.onnx_graph`).

Drift features: a fixed signed-hash projection of the TF-IDF vector to
``reference_features`` columns (feature ``j`` adds to column ``j % width`` with sign
``+1`` or ``-1`` by the parity of ``j // width``), cheap and the same in the ONNX graph.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ktt_core.contract import LabelledTexts, Model, Scores
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy

#: Logit of a class the training split never shows: the classifier cannot have learnt it.
UNSEEN_LOGIT = -30.0


def group_log_softmax(logits: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Log-softmax over all columns, or within each group of columns of equal ``groups`` value."""
    logits = np.asarray(logits, dtype=np.float64)
    if groups is None:
        groups = np.zeros(logits.shape[1], dtype=np.int64)
    out = np.empty_like(logits)
    for g in np.unique(groups):
        cols = np.flatnonzero(groups == g)
        sub = logits[:, cols]
        shifted = sub - sub.max(axis=1, keepdims=True)
        out[:, cols] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


class TfidfModel(Model):
    """What both TF-IDF models share: vectorizing, scoring, state, export."""

    #: Per level scored: does a level's softmax run within groups of siblings?
    hierarchical = False

    def __init__(self, name: str, hierarchy: Hierarchy, config: dict[str, Any]):
        self.name, self.hierarchy, self.config = name, hierarchy, config
        self.vectorizers: list = []           # fitted sklearn TfidfVectorizers
        self.levels: list[dict] = []          # {"coef": (n, F) float32, "intercept": (n,), "groups": (n,) | None}

    @classmethod
    def base_defaults(cls) -> dict[str, Any]:
        return {
            "word_ngram_max": 2,      # word n-grams 1..N (0: none)
            "char_ngram_min": 3,      # character n-grams inside word boundaries, min..max
            "char_ngram_max": 5,      # (0: none)
            "min_df": 2,              # keep n-grams seen in at least this many training texts
            "max_features": 0,        # per vectorizer, the most frequent ones (0: all)
            "sublinear_tf": True,     # 1 + log(tf)
            "classifier": "sgd",      # sgd (log loss) | logreg
            "alpha": 3e-6,            # sgd: regularisation strength
            "C": 10.0,                # logreg: inverse regularisation strength
            "max_iter": 10,           # epochs (sgd) or solver iterations (logreg)
            "n_jobs": -1,             # cores for fitting (sgd: one-vs-rest classes in parallel); -1: all
            "reference_features": 24,  # width of the drift features
        }

    @classmethod
    def build(cls, spec, hierarchy: Hierarchy, config: dict[str, Any]) -> "TfidfModel":
        if config["word_ngram_max"] == 0 and config["char_ngram_max"] == 0:
            raise KttError("word_ngram_max and char_ngram_max are both 0: the model would see no features")
        if config["char_ngram_max"] and config["char_ngram_min"] > config["char_ngram_max"]:
            raise KttError(f"char_ngram_min {config['char_ngram_min']} is above char_ngram_max "
                           f"{config['char_ngram_max']}")
        return cls(spec.name, hierarchy, config)

    # -- features ------------------------------------------------------------------------
    def _new_vectorizers(self) -> list:
        from sklearn.feature_extraction.text import TfidfVectorizer

        c = self.config
        common = {"min_df": c["min_df"], "sublinear_tf": c["sublinear_tf"], "dtype": np.float32,
                  "max_features": c["max_features"] or None}
        out = []
        if c["word_ngram_max"]:
            out.append(TfidfVectorizer(analyzer="word", ngram_range=(1, c["word_ngram_max"]), **common))
        if c["char_ngram_max"]:
            out.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(c["char_ngram_min"], c["char_ngram_max"]),
                                       **common))
        return out

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(N, F) TF-IDF matrix: each vectorizer's block, side by side."""
        texts = [str(t) for t in texts]
        return sp.hstack([v.transform(texts) for v in self.vectorizers], format="csr", dtype=np.float32)

    @property
    def n_features(self) -> int:
        return sum(len(v.vocabulary_) for v in self.vectorizers)

    def _fit_vectorizers(self, texts: list[str]) -> sp.csr_matrix:
        self.vectorizers = self._new_vectorizers()
        blocks = []
        for vectorizer in self.vectorizers:
            try:
                blocks.append(vectorizer.fit_transform(texts))
            except ValueError as exc:  # "empty vocabulary; perhaps the documents only contain stop words"
                raise KttError(f"TF-IDF ({vectorizer.analyzer} n-grams, min_df {self.config['min_df']}) finds no "
                               f"features in the {len(texts)} training texts ({exc}); lower min_df or use "
                               "other texts") from None
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    # -- classifiers -----------------------------------------------------------------------
    def _classifier(self):
        c = self.config
        if c["classifier"] == "sgd":
            from sklearn.linear_model import SGDClassifier

            # tol=None: exactly max_iter epochs, so time and result do not hinge on a stopping test.
            return SGDClassifier(loss="log_loss", alpha=c["alpha"], max_iter=c["max_iter"], tol=None,
                                 random_state=c["seed"], n_jobs=c["n_jobs"])
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c["C"], max_iter=c["max_iter"], random_state=c["seed"], n_jobs=c["n_jobs"])

    def _fit_group(self, X: sp.csr_matrix, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (n_classes, F) and intercepts of one softmax over ``n_classes`` classes,
        fitted on rows ``X`` with class ids ``y``; classes absent from ``y`` get
        :data:`UNSEEN_LOGIT`; one class alone needs no classifier."""
        coef = np.zeros((n_classes, X.shape[1]), dtype=np.float32)
        intercept = np.full(n_classes, UNSEEN_LOGIT, dtype=np.float32)
        present = np.unique(y)
        if len(present) == 1:
            intercept[present[0]] = 0.0
            return coef, intercept
        classifier = self._classifier()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the user's trade-off
            classifier.fit(X, y)
        learnt_coef = np.asarray(classifier.coef_, dtype=np.float32)
        learnt_intercept = np.asarray(classifier.intercept_, dtype=np.float32)
        if len(present) == 2 and learnt_coef.shape[0] == 1:
            # A binary classifier keeps one row, the logit of the second class against the
            # first: softmax([0, z]) is its sigmoid.
            learnt_coef = np.vstack([np.zeros_like(learnt_coef), learnt_coef])
            learnt_intercept = np.concatenate([[0.0], learnt_intercept]).astype(np.float32)
        coef[classifier.classes_] = learnt_coef
        intercept[classifier.classes_] = learnt_intercept
        return coef, intercept

    def _fit_levels(self, X: sp.csr_matrix, targets: np.ndarray, run) -> None:
        raise NotImplementedError

    def fit(self, train: LabelledTexts, val: LabelledTexts, run) -> list[dict]:
        from ktt_core.decoding import decode_scores

        started = time.perf_counter()
        X = self._fit_vectorizers(train.texts)
        run.log(f"TF-IDF: {X.shape[1]:,} features ({', '.join(f'{v.analyzer} {len(v.vocabulary_):,}' for v in self.vectorizers)})")
        self._fit_levels(X, train.targets, run)
        predictions = decode_scores(self.hierarchy, self.score(val.texts), val.targets)
        return run.finish_fit(self, val, predictions, started, features=int(X.shape[1]))

    # -- scoring ---------------------------------------------------------------------------
    def level_log_probs(self, X: sp.csr_matrix) -> list[np.ndarray]:
        """Per scored level, (N, n) log-softmax of its logits (within sibling groups when grouped)."""
        return [group_log_softmax(np.asarray(X @ level["coef"].T, dtype=np.float64) + level["intercept"],
                                  level["groups"]) for level in self.levels]

    def score(self, texts: Sequence[str], features: bool = False) -> Scores:
        X = self.features(texts)
        ancestors = self.leaf_ancestors
        paths = sum(lp[:, ancestors[:, d]] for d, lp in enumerate(self.level_log_probs(X)))
        return Scores(np.asarray(paths, dtype=np.float32),
                      features=self.drift_features(X) if features else None)

    @property
    def leaf_ancestors(self) -> np.ndarray:
        """(n_leaves, scored levels): the class of each path at each scored level."""
        if self.hierarchical:
            return self.hierarchy.leaf_ancestors
        return np.arange(self.hierarchy.n_leaves)[:, None]

    def projection(self) -> sp.csr_matrix:
        """(F, width) signed-hash projection of the drift features (see the module docstring),
        built once per vocabulary (the service asks for features on every batch)."""
        cached = getattr(self, "_projection", None)
        if cached is not None and cached.shape[0] == self.n_features:
            return cached
        width = int(self.config["reference_features"])
        j = np.arange(self.n_features)
        signs = np.where((j // width) % 2 == 0, 1.0, -1.0).astype(np.float32)
        self._projection = sp.csr_matrix((signs, (j, j % width)), shape=(self.n_features, width))
        return self._projection

    def drift_features(self, X: sp.csr_matrix) -> np.ndarray:
        return np.asarray((X @ self.projection()).todense(), dtype=np.float32)

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "vectorizers": [{"params_json": json.dumps(vectorizer_params(v)),
                             "terms_json": json.dumps(terms_in_order(v), ensure_ascii=False),
                             "idf": np.asarray(v.idf_, dtype=np.float64)} for v in self.vectorizers],
            "levels": [{"coef": level["coef"], "intercept": level["intercept"],
                        **({"groups": level["groups"]} if level["groups"] is not None else {})}
                       for level in self.levels],
        }

    @classmethod
    def from_state(cls, spec, checkpoint: dict[str, Any]) -> "TfidfModel":
        from sklearn.feature_extraction.text import TfidfVectorizer

        from ktt_core.checkpoint import as_numpy, hierarchy_and_config

        path, state = checkpoint["path"], checkpoint["state"]
        hierarchy, config = hierarchy_and_config(spec, checkpoint)
        model = cls(spec.name, hierarchy, config)
        try:
            for i, entry in enumerate(state["vectorizers"]):
                params = json.loads(entry["params_json"])
                if set(params) - SAFE_VECTORIZER_PARAMS:
                    raise ValueError(f"unexpected vectorizer settings {sorted(set(params) - SAFE_VECTORIZER_PARAMS)}")
                params["ngram_range"] = tuple(params["ngram_range"])
                vectorizer = TfidfVectorizer(**params, dtype=np.float32)
                terms = json.loads(entry["terms_json"])
                vectorizer.vocabulary_ = {str(t): k for k, t in enumerate(terms)}
                vectorizer.idf_ = as_numpy(entry["idf"], path, f"vectorizers[{i}].idf", np.float64, ndim=1)
                if len(vectorizer.idf_) != len(terms):
                    raise ValueError(f"vectorizer {i}: {len(terms)} terms but {len(vectorizer.idf_)} idf values")
                model.vectorizers.append(vectorizer)
            for d, entry in enumerate(state["levels"]):
                groups = entry.get("groups")
                model.levels.append({
                    "coef": as_numpy(entry["coef"], path, f"levels[{d}].coef", np.float32, ndim=2),
                    "intercept": as_numpy(entry["intercept"], path, f"levels[{d}].intercept", np.float32, ndim=1),
                    "groups": None if groups is None else as_numpy(groups, path, f"levels[{d}].groups", np.int64, ndim=1)})
        except KttError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise KttError(f"{path}: TF-IDF model state is damaged ({' '.join(str(exc).split())[:160]})") from None
        model._check_shapes(path)
        return model

    def _check_shapes(self, path: str) -> None:
        expected = [len(self.hierarchy.classes[d]) for d in range(self.hierarchy.depth)] if self.hierarchical \
            else [self.hierarchy.n_leaves]
        shapes = [level["coef"].shape for level in self.levels]
        if shapes != [(n, self.n_features) for n in expected] or any(
                len(level["intercept"]) != n for level, n in zip(self.levels, expected)):
            raise KttError(f"{path}: TF-IDF coefficients {shapes} do not fit {self.n_features} features and "
                           f"{expected} classes per level")

    def export(self, fmt: str, directory) -> Path | None:
        if fmt != "onnx":
            return None
        from ktt_tfidf.export import export_onnx

        return export_onnx(self, Path(directory))

    def summary(self) -> str:
        return f"TF-IDF ({self.config['classifier']})"


class FlatTfidfModel(TfidfModel):
    """``tfidf_lsgd``: one linear classifier over the full paths."""

    def _fit_levels(self, X, targets, run) -> None:
        run.log(f"fitting {self.config['classifier']} over {self.hierarchy.n_leaves} paths")
        coef, intercept = self._fit_group(X, targets[:, -1], self.hierarchy.n_leaves)
        self.levels = [{"coef": coef, "intercept": intercept, "groups": None}]


class HierarchicalTfidfModel(TfidfModel):
    """``tfidf_hsgd``: a local classifier per parent node over its children."""

    hierarchical = True

    def _fit_levels(self, X, targets, run) -> None:
        from tqdm.auto import tqdm

        h = self.hierarchy
        parents = [np.zeros(h.level_sizes[0], dtype=np.int64)] + [np.asarray(h.parent_of[d], dtype=np.int64)
                                                                for d in range(1, h.depth)]
        jobs = [(d, p) for d in range(h.depth) for p in np.unique(parents[d])]
        self.levels = [{"coef": np.zeros((h.level_sizes[d], X.shape[1]), dtype=np.float32),
                        "intercept": np.full(h.level_sizes[d], UNSEEN_LOGIT, dtype=np.float32),
                        "groups": parents[d]} for d in range(h.depth)]
        for d, parent in tqdm(jobs, desc="classifiers per parent node", leave=False):
            children = np.flatnonzero(parents[d] == parent)
            rows = np.ones(len(targets), dtype=bool) if d == 0 else targets[:, d - 1] == parent
            if not rows.any():
                continue
            local = np.searchsorted(children, targets[rows, d])  # child ids -> 0..len(children)-1
            coef, intercept = self._fit_group(X[rows], local, len(children))
            self.levels[d]["coef"][children] = coef
            self.levels[d]["intercept"][children] = intercept
        run.log(f"fitted {len(jobs)} local classifiers (one per parent node)")


#: The TfidfVectorizer settings a stored model may carry (anything else is refused at load).
SAFE_VECTORIZER_PARAMS = {"analyzer", "ngram_range", "min_df", "max_features", "sublinear_tf", "lowercase",
                          "norm", "use_idf", "smooth_idf"}


def vectorizer_params(vectorizer) -> dict:
    return {"analyzer": vectorizer.analyzer, "ngram_range": list(vectorizer.ngram_range),
            "min_df": vectorizer.min_df, "max_features": vectorizer.max_features,
            "sublinear_tf": vectorizer.sublinear_tf, "lowercase": vectorizer.lowercase,
            "norm": vectorizer.norm, "use_idf": vectorizer.use_idf, "smooth_idf": vectorizer.smooth_idf}


def terms_in_order(vectorizer) -> list[str]:
    terms = [""] * len(vectorizer.vocabulary_)
    for term, index in vectorizer.vocabulary_.items():
        terms[index] = term
    return terms
