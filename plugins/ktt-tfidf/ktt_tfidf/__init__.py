"""KTT plugin: the original KTT's scikit-learn models, TF-IDF + linear classifiers.

``tfidf_lsgd`` scores every full path with one classifier; ``tfidf_hsgd`` has a local
classifier per parent node (see :mod:`ktt_tfidf.model`). Neither needs an encoder.
"""
from ktt_core import hookimpl
from ktt_core.registry import ModelSpec

CHOICES = {"classifier": ("sgd", "logreg")}
RANGES = {"word_ngram_max": (0, 5), "char_ngram_min": (1, 10), "char_ngram_max": (0, 10), "min_df": (1, None),
          "max_features": (0, None), "C": (1e-6, None), "alpha": (1e-12, None), "max_iter": (1, None),
          "n_jobs": (-1, 64),
          "reference_features": (1, 512)}

SEARCH_SPACE = {
    "alpha": {"type": "float", "low": 1e-7, "high": 1e-4, "log": True},
    "max_iter": {"type": "int", "low": 5, "high": 30},
    "word_ngram_max": {"type": "int", "low": 1, "high": 3},
    "char_ngram_max": {"type": "categorical", "choices": [0, 5, 6]},
    "min_df": {"type": "int", "low": 1, "high": 3},
    "sublinear_tf": {"type": "categorical", "choices": [True, False]},
}

KEY_HELP = {
    "word_ngram_max": "word n-grams 1..N (0: none)",
    "char_ngram_min": "shortest character n-gram (inside word boundaries)",
    "char_ngram_max": "longest character n-gram (0: none)",
    "min_df": "keep n-grams seen in at least this many training texts",
    "max_features": "per vectorizer, keep the most frequent n-grams (0: all)",
    "sublinear_tf": "term frequency as 1 + log(tf)",
    "classifier": "sgd (log loss) or logreg (lbfgs)",
    "alpha": "sgd: regularisation strength",
    "C": "logreg: inverse regularisation strength",
    "max_iter": "epochs (sgd) or solver iterations (logreg)",
    "n_jobs": "cores for fitting; -1: all",
}

# What both models share: their keys, and so their checks and search space.
SHARED = {"choices": CHOICES, "ranges": RANGES, "search_space": SEARCH_SPACE, "key_help": KEY_HELP}


@hookimpl
def ktt_register_models(register):
    register(ModelSpec(
        name="tfidf_lsgd", display_name="TF-IDF + linear classifier over paths", model="ktt_tfidf.model:FlatTfidfModel",
        service="ktt_tfidf.bentoml.service:TfidfLsgdService", **SHARED,
        description="Word and character n-gram TF-IDF, one SGD (log loss) or logistic-regression "
                    "classifier over the full label paths."))
    register(ModelSpec(
        name="tfidf_hsgd", display_name="TF-IDF + a classifier per parent node", model="ktt_tfidf.model:HierarchicalTfidfModel",
        service="ktt_tfidf.bentoml.service:TfidfHsgdService", **SHARED,
        description="Word and character n-gram TF-IDF, a local classifier per parent node (hiclass-style); "
                    "path score = sum of the log-probabilities along it."))
