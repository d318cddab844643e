"""ONNX export of a TF-IDF + linear hierarchical scorer.

The model state is plain data (no pickles)::

    state = {
        "vectorizers": [
            {"params": {...TfidfVectorizer kwargs...},
             "vocabulary": {term: column},
             "idf": float array (n_terms,)},
            ...
        ],
        "levels": [
            {"coef": float32 (n_classes, n_features),
             "intercept": float32 (n_classes,),
             "groups": int64 (n_classes,) or None},
            ...
        ],
        "leaf_ancestors": int64 (n_leaves, n_levels),
    }

Features = concatenation, in list order, of each vectorizer's TF-IDF output
(each block normalised on its own, as scikit-learn does).  For each level,
``logits = X @ coef.T + intercept`` followed by a log-softmax, either over all
classes (``groups is None``) or within each group of siblings.  The output is
``path_log_scores[:, j] = sum_d level_log_scores[d][:, leaf_ancestors[j, d]]``.

Public functions
----------------
``reference_scores(state, texts)``
    float64 numpy / scikit-learn reference, shape (N, n_leaves).
``reference_features(state, texts)``
    the float64 sparse feature matrix of the reference (scipy CSR).
``build_onnx(state, *, opset=20, locale="C.UTF-8")``
    one ONNX graph: string input ``text`` [N] -> float ``path_log_scores``
    [N, n_leaves].  TF-IDF is computed inside the graph (word, char and
    char_wb analyzers) with ``com.microsoft.Tokenizer`` + ``ai.onnx``
    ``TfIdfVectorizer``; no skl2onnx needed at export time.
``make_session(model, threads=1)``
    an ``onnxruntime.InferenceSession`` for the model.
``onnx_scores(model_or_session, texts)``
    run the graph, returns float32 (N, n_leaves).
``check_parity(state, texts, atol=1e-4)``
    build, run, compare; returns a dict with ``max_abs_diff`` etc.
``has_lowercase_caveat(text)``
    True if the graph's lowercasing may differ from Python's for this text
    ("İ", Greek word-final "Σ").
``make_synthetic_state(texts, labels, parents, vectorizer_params, hierarchical)``
    fit TfidfVectorizer(s) + LogisticRegression into a state (for tests).
``synthetic_corpus(n, seed)``
    a small synthetic multilingual corpus with a 2-level label hierarchy.
``probe_skl2onnx(texts)``
    try skl2onnx's own TfidfVectorizer converter for word / char / char_wb
    and report what converts / loads / matches.

``python onnx_graph.py`` runs the self-check (parity for several configs,
skl2onnx probe, speed on 1,000 texts).

Exactness notes (what the graph reproduces and what it does not)
-----------------------------------------------------------------
* word analyzer, default ``token_pattern`` ``(?u)\\b\\w\\w+\\b``: the graph uses
  the RE2 pattern ``[W]{2,}`` where ``[W]`` is the explicit set of code points
  for which Python's ``str.isalnum()`` is true plus ``_`` (this is exactly
  Python's Unicode ``\\w``), so non-ASCII words tokenize like scikit-learn.
  (skl2onnx instead rewrites the default pattern to ``[a-zA-Z0-9_]+``, which
  splits "café" into "caf" and keeps 1-character tokens.)  Other
  ``token_pattern`` values are refused.
* char / char_wb: scikit-learn's whitespace normalisation (``\\s\\s+`` -> " ",
  Unicode ``\\s``) is reproduced with a Tokenizer that keeps whitespace runs
  as single tokens, then RegexFullMatch + Where.  char_wb words are not
  materialised: the n-grams are taken over " " + normalised text + " ", which
  yields exactly the vocabulary n-grams scikit-learn's per-word loop yields
  (char_wb terms only carry spaces at their ends), including sklearn's quirk of
  emitting a whole padded short word shorter than ``min_n``.
* lowercase: ``StringNormalizer`` (towlower in the given C++ locale).  The
  default ONNX locale ``en_US.UTF-8`` does not exist on many Linux images
  (session creation then fails), so ``C.UTF-8`` is used.  Differences with
  Python's ``str.lower()``: characters whose lowercase is several code points
  (e.g. "İ" -> "i̇" in Python, "i" in C++), and Greek final sigma
  ("ΟΔΟΣ".lower() == "οδος" in Python, "οδοσ" in C++).
* Not exportable (``UnsupportedVectorizerConfig``): strip_accents, stop_words,
  custom preprocessor / tokenizer / callable analyzer, non-default
  token_pattern, input != "content", norm not in {"l2", "l1", None}.
* The TfIdfVectorizer op outputs a dense (N, n_terms) float32 matrix: memory
  is N x n_features x 4 bytes, so score large batches in chunks.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "UnsupportedVectorizerConfig",
    "reference_features",
    "reference_scores",
    "build_onnx",
    "make_session",
    "onnx_scores",
    "check_parity",
    "has_lowercase_caveat",
    "make_synthetic_state",
    "synthetic_corpus",
    "probe_skl2onnx",
]

DEFAULT_OPSET = 20  # StringConcat / RegexFullMatch need 20; ScatterElements(max) 18
MS_DOMAIN = "com.microsoft"
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# Padding token of the Tokenizer: several characters and contains "\x00",
# so it can never equal a character token, a whitespace run or a \w{2,} word.
_PAD = "\x00<pad>\x00"
_NEG_BIG = float(np.finfo(np.float32).min)

# TfidfVectorizer kwargs that only matter at fit time (the vocabulary and idf
# are given by the state) or that do not change the maths.
_FIT_ONLY = {"max_df", "min_df", "max_features", "vocabulary", "dtype", "smooth_idf",
             "encoding", "decode_error"}


class UnsupportedVectorizerConfig(NotImplementedError):
    """A TfidfVectorizer configuration that the ONNX export cannot reproduce."""


# --------------------------------------------------------------------------
# State helpers
# --------------------------------------------------------------------------

def _params(vec_state: dict) -> dict:
    """TfidfVectorizer kwargs with list-valued ngram_range turned into tuples."""
    p = dict(vec_state.get("params") or {})
    if "ngram_range" in p:
        p["ngram_range"] = tuple(int(v) for v in p["ngram_range"])
    return p


def _n_terms(vec_state: dict) -> int:
    voc = vec_state["vocabulary"]
    return int(max(voc.values()) + 1) if voc else len(vec_state["idf"])


def _levels(state: dict):
    out = []
    for lv in state["levels"]:
        coef = np.asarray(lv["coef"])
        intercept = np.asarray(lv["intercept"]).reshape(-1)
        groups = lv.get("groups")
        groups = None if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
        if coef.ndim != 2 or coef.shape[0] != intercept.shape[0]:
            raise ValueError(f"bad level shapes coef={coef.shape} intercept={intercept.shape}")
        if groups is not None and groups.shape[0] != coef.shape[0]:
            raise ValueError("groups must have one entry per class")
        out.append((coef, intercept, groups))
    return out


def _leaf_ancestors(state: dict, n_levels: int) -> np.ndarray:
    anc = np.asarray(state["leaf_ancestors"], dtype=np.int64)
    if anc.ndim == 1:
        anc = anc[:, None]
    if anc.shape[1] != n_levels:
        raise ValueError(f"leaf_ancestors has {anc.shape[1]} columns for {n_levels} levels")
    return anc


# --------------------------------------------------------------------------
# Reference (numpy / scikit-learn, float64)
# --------------------------------------------------------------------------

def _sk_vectorizer(vec_state: dict):
    from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

    params = _params(vec_state)
    params.pop("vocabulary", None)
    params["dtype"] = np.float64
    vec = TfidfVectorizer(**params)
    vec.vocabulary_ = {str(k): int(v) for k, v in vec_state["vocabulary"].items()}
    vec.fixed_vocabulary_ = True
    idf = np.asarray(vec_state["idf"], dtype=np.float64)
    if vec.use_idf:
        vec.idf_ = idf
    else:  # an unfitted-idf transformer still needs to exist for transform()
        import scipy.sparse as sp

        vec._tfidf = TfidfTransformer(norm=vec.norm, use_idf=False,
                                      sublinear_tf=vec.sublinear_tf).fit(
            sp.csr_matrix((1, len(vec.vocabulary_))))
    return vec


def reference_features(state: dict, texts: Sequence[str]):
    """Float64 CSR feature matrix: hstack of each vectorizer's TF-IDF output."""
    import scipy.sparse as sp

    texts = [str(t) for t in texts]
    blocks = [_sk_vectorizer(v).transform(texts) for v in state["vectorizers"]]
    return sp.hstack(blocks, format="csr", dtype=np.float64)


def _log_softmax(z: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        m = z.max(axis=1, keepdims=True)
        s = z - m
        return s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    out = np.empty_like(z)
    for g in np.unique(groups):
        cols = np.flatnonzero(groups == g)
        sub = z[:, cols]
        s = sub - sub.max(axis=1, keepdims=True)
        out[:, cols] = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return out


def reference_scores(state: dict, texts: Sequence[str]) -> np.ndarray:
    """Path log-scores (N, n_leaves), float64, with scikit-learn's TfidfVectorizer."""
    X = reference_features(state, texts)
    levels = _levels(state)
    anc = _leaf_ancestors(state, len(levels))
    total = np.zeros((X.shape[0], anc.shape[0]), dtype=np.float64)
    for d, (coef, intercept, groups) in enumerate(levels):
        if coef.shape[1] != X.shape[1]:
            raise ValueError(f"level {d}: coef has {coef.shape[1]} features, "
                             f"vectorizers give {X.shape[1]}")
        z = np.asarray(X @ coef.astype(np.float64).T) + intercept.astype(np.float64)
        total += _log_softmax(z, groups)[:, anc[:, d]]
    return total


# --------------------------------------------------------------------------
# Unicode character classes (Python semantics) as RE2 classes
# --------------------------------------------------------------------------

def _ranges_to_re2_class(pred) -> str:
    parts, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates cannot appear in UTF-8 text
            ok = False
        else:
            ok = pred(chr(cp))
        if ok:
            if start is None:
                start = cp
            prev = cp
        elif start is not None:
            parts.append(f"\\x{{{start:X}}}" if start == prev
                         else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
            start = None
    if start is not None:
        parts.append(f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=None)
def _word_class() -> str:
    """Python's Unicode ``\\w`` (str.isalnum() or '_') as an RE2 class."""
    return _ranges_to_re2_class(lambda c: c.isalnum() or c == "_")


@functools.lru_cache(maxsize=None)
def _space_class() -> str:
    """Python's Unicode ``\\s`` (str.isspace()) as an RE2 class."""
    return _ranges_to_re2_class(str.isspace)


# --------------------------------------------------------------------------
# Graph construction
# --------------------------------------------------------------------------

class _G:
    """Tiny helper accumulating nodes / initializers with unique names."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, value, dtype=None, base="c") -> str:
        name = self.name(base)
        arr = np.array(value, dtype=dtype) if not isinstance(value, np.ndarray) or dtype else value
        if arr.dtype.kind in "OU":
            t = helper.make_tensor(name, TensorProto.STRING, arr.shape,
                                   [s.encode("utf-8") for s in arr.reshape(-1).tolist()])
        else:
            t = numpy_helper.from_array(arr, name)
        self.inits.append(t)
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", out=None, **attrs):
        outs = list(out) if out else [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.name("n_" + op_type),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs


def _check_supported(params: dict, index: int) -> None:
    def bad(msg):
        raise UnsupportedVectorizerConfig(f"vectorizer {index}: {msg}")

    analyzer = params.get("analyzer", "word")
    if not isinstance(analyzer, str) or analyzer not in ("word", "char", "char_wb"):
        bad(f"analyzer={analyzer!r} is not exportable (word, char, char_wb only)")
    if params.get("input", "content") != "content":
        bad("only input='content' is exportable")
    if params.get("strip_accents") is not None:
        bad("strip_accents is not exportable (ONNX has no Unicode decomposition op)")
    if params.get("preprocessor") is not None or params.get("tokenizer") is not None:
        bad("custom preprocessor/tokenizer callables are not exportable")
    if params.get("stop_words") is not None and analyzer == "word":
        bad("stop_words is not exportable (removing tokens changes n-gram adjacency)")
    if analyzer == "word" and params.get("token_pattern", DEFAULT_TOKEN_PATTERN) != DEFAULT_TOKEN_PATTERN:
        bad("only the default token_pattern r'(?u)\\b\\w\\w+\\b' is exportable")
    if params.get("norm", "l2") not in ("l2", "l1", None):
        bad(f"norm={params.get('norm')!r} is not exportable")
    known = {"input", "strip_accents", "lowercase", "preprocessor", "tokenizer", "analyzer",
             "stop_words", "token_pattern", "ngram_range", "binary", "norm", "use_idf",
             "sublinear_tf"} | _FIT_ONLY
    unknown = set(params) - known
    if unknown:
        bad(f"unknown TfidfVectorizer parameters {sorted(unknown)}")


def _tfidf_block(g: _G, text: str, n_rows: str, vec_state: dict, index: int,
                 lowered: dict, locale: str) -> str:
    """Nodes computing one vectorizer's normalised TF-IDF block; returns its name."""
    params = _params(vec_state)
    _check_supported(params, index)
    analyzer = params.get("analyzer", "word")
    lowercase = bool(params.get("lowercase", True))
    vocab = {str(k): int(v) for k, v in vec_state["vocabulary"].items()}
    n_terms = _n_terms(vec_state)
    idf = np.asarray(vec_state["idf"], dtype=np.float32).reshape(-1)
    if len(idf) != n_terms:
        raise ValueError(f"vectorizer {index}: idf has {len(idf)} entries, vocabulary {n_terms}")

    # 1. lowercase (shared between vectorizers)
    if lowercase:
        if "lower" not in lowered:
            lowered["lower"] = g.op("StringNormalizer", [text], case_change_action="LOWER",
                                    is_case_sensitive=0, locale=locale)
        src = lowered["lower"]
    else:
        src = text

    # 2. tokens [N, T] (padded with _PAD)
    ws = _space_class()
    if analyzer == "word":
        tokens = g.op("Tokenizer", [src], domain=MS_DOMAIN, tokenexp=_word_class() + "{2,}",
                      pad_value=_PAD, mark=0, mincharnum=1)
        pieces = {t: t.split(" ") for t in vocab}
    else:
        if analyzer == "char_wb":
            sp_ = g.const(np.array([" "], dtype=object))
            src = g.op("StringConcat", [g.op("StringConcat", [sp_, src]), sp_])
            collapse = ws + "+"           # every whitespace run is a word boundary -> " "
        else:
            collapse = ws + "{2,}"        # sklearn: \s\s+ -> " ", single \s kept as is
        raw = g.op("Tokenizer", [src], domain=MS_DOMAIN, tokenexp=ws + "+|(?s).",
                   pad_value=_PAD, mark=0, mincharnum=1)
        is_run = g.op("RegexFullMatch", [raw], pattern=collapse)
        tokens = g.op("Where", [is_run, g.const(np.array([" "], dtype=object)), raw])
        pieces = {t: list(t) for t in vocab}

    # always one trailing pad column: Tokenizer returns [N, 0] for a batch of
    # empty strings, which TfIdfVectorizer would reject.
    pad_shape = g.op("Concat", [n_rows, g.const([1], np.int64)], axis=0)
    pad_col = g.op("Expand", [g.const(np.array([[_PAD]], dtype=object)), pad_shape])
    tokens = g.op("Concat", [tokens, pad_col], axis=1)

    # 3. n-gram counts with ai.onnx TfIdfVectorizer (mode TF)
    if not vocab:
        raise ValueError(f"vectorizer {index}: empty vocabulary")
    by_len = sorted(vocab, key=lambda t: (len(pieces[t]), vocab[t]))
    lens = [len(pieces[t]) for t in by_len]
    min_n, max_n = min(lens), max(lens)
    pool, ngram_counts, ngram_indexes = [], [], []
    for n in range(1, max_n + 1):
        ngram_counts.append(len(pool))
        for t in by_len:
            if len(pieces[t]) == n:
                pool.extend(pieces[t])
                ngram_indexes.append(vocab[t])
    counts = g.op("TfIdfVectorizer", [tokens], mode="TF", min_gram_length=min_n,
                  max_gram_length=max_n, max_skip_count=0, pool_strings=pool,
                  ngram_counts=ngram_counts, ngram_indexes=ngram_indexes)
    if max(ngram_indexes) + 1 < n_terms:  # unused trailing columns
        zeros_shape = g.op("Concat", [n_rows, g.const([n_terms - max(ngram_indexes) - 1], np.int64)], axis=0)
        zeros = g.op("ConstantOfShape", [zeros_shape],
                     value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
        counts = g.op("Concat", [counts, zeros], axis=1)

    # 4. tf transforms, idf, normalisation
    x = counts
    if params.get("binary", False):
        x = g.op("Min", [x, g.const([1.0], np.float32)])
    if params.get("sublinear_tf", False):
        zero = g.const([0.0], np.float32)
        logp1 = g.op("Add", [g.op("Log", [x]), g.const([1.0], np.float32)])
        x = g.op("Where", [g.op("Greater", [x, zero]), logp1, zero])
    if params.get("use_idf", True):
        x = g.op("Mul", [x, g.const(idf[None, :], np.float32)])
    norm = params.get("norm", "l2")
    if norm is not None:
        ax = g.const([1], np.int64)
        if norm == "l2":
            nrm = g.op("Sqrt", [g.op("ReduceSumSquare", [x, ax], keepdims=1)])
        else:
            nrm = g.op("ReduceL1", [x, ax], keepdims=1)
        nrm = g.op("Max", [nrm, g.const([np.finfo(np.float32).tiny], np.float32)])
        x = g.op("Div", [x, nrm])
    return x


def _group_log_softmax(g: _G, z: str, n_rows: str, groups: np.ndarray | None) -> str:
    if groups is None:
        return g.op("LogSoftmax", [z], axis=1)
    uniq, gid = np.unique(groups, return_inverse=True)
    gid = gid.astype(np.int64)
    n_cls, n_grp = len(gid), len(uniq)
    if n_grp == 1:
        return g.op("LogSoftmax", [z], axis=1)
    gid_c = g.const(gid, np.int64)
    # per-group max via ScatterElements(reduction="max")
    idx = g.op("Expand", [g.const(gid[None, :], np.int64), g.op("Shape", [z])])
    init_shape = g.op("Concat", [n_rows, g.const([n_grp], np.int64)], axis=0)
    init = g.op("Expand", [g.const(np.array([[_NEG_BIG]], np.float32)), init_shape])
    gmax = g.op("ScatterElements", [init, idx, z], axis=1, reduction="max")
    shifted = g.op("Sub", [z, g.op("Gather", [gmax, gid_c], axis=1)])
    onehot = np.zeros((n_cls, n_grp), dtype=np.float32)
    onehot[np.arange(n_cls), gid] = 1.0
    gsum = g.op("MatMul", [g.op("Exp", [shifted]), g.const(onehot)])
    return g.op("Sub", [shifted, g.op("Gather", [g.op("Log", [gsum]), gid_c], axis=1)])


def build_onnx(state: dict, *, opset: int = DEFAULT_OPSET, locale: str = "C.UTF-8",
               name: str = "ktt_tfidf_linear") -> onnx.ModelProto:
    """One ONNX graph: ``text`` (string [N]) -> ``path_log_scores`` (float [N, n_leaves]).

    Raises ``UnsupportedVectorizerConfig`` for TfidfVectorizer settings that
    cannot be reproduced in the graph.  ``locale`` is the C++ locale of the
    lowercasing ``StringNormalizer``; it must exist where the model runs
    ("C.UTF-8" exists on glibc >= 2.35 and most Docker images; ONNX's default
    "en_US.UTF-8" often does not).
    """
    if opset < 20:
        raise ValueError("opset >= 20 is required (StringConcat, RegexFullMatch)")
    levels = _levels(state)
    if not levels:
        raise ValueError("state has no levels")
    anc = _leaf_ancestors(state, len(levels))
    g = _G()
    text_in = "text"
    n_rows = g.op("Slice", [g.op("Shape", [text_in]), g.const([0], np.int64),
                            g.const([1], np.int64)])

    lowered: dict = {}
    blocks = [_tfidf_block(g, text_in, n_rows, v, i, lowered, locale)
              for i, v in enumerate(state["vectorizers"])]
    n_feat = sum(_n_terms(v) for v in state["vectorizers"])
    X = blocks[0] if len(blocks) == 1 else g.op("Concat", blocks, axis=1)

    # all levels in one GEMM, then split per level
    for d, (coef, _, _) in enumerate(levels):
        if coef.shape[1] != n_feat:
            raise ValueError(f"level {d}: coef has {coef.shape[1]} features, "
                             f"vectorizers give {n_feat}")
    W = np.concatenate([c.astype(np.float32).T for c, _, _ in levels], axis=1)
    b = np.concatenate([i.astype(np.float32) for _, i, _ in levels])
    logits = g.op("Gemm", [X, g.const(np.ascontiguousarray(W)), g.const(b)])
    sizes = [c.shape[0] for c, _, _ in levels]
    if len(levels) == 1:
        per_level = [logits]
    else:
        per_level = g.op("Split", [logits, g.const(sizes, np.int64)], n_out=len(levels), axis=1)

    parts = []
    for d, (z, (coef, _, groups)) in enumerate(zip(per_level, levels)):
        ls = _group_log_softmax(g, z, n_rows, groups)
        col = anc[:, d]
        if col.min() < 0 or col.max() >= coef.shape[0]:
            raise ValueError(f"leaf_ancestors[:, {d}] out of range for {coef.shape[0]} classes")
        parts.append(g.op("Gather", [ls, g.const(col, np.int64)], axis=1))
    out = "path_log_scores"
    if len(parts) == 1:
        g.op("Identity", parts, out=[out])
    else:
        g.op("Sum", parts, out=[out])

    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(text_in, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", int(anc.shape[0])])],
        g.inits)
    model = helper.make_model(graph, producer_name="ktt-tfidf", opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def make_session(model: onnx.ModelProto | bytes | str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # failures still raise; no stderr noise
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def onnx_scores(model_or_session, texts: Sequence[str]) -> np.ndarray:
    sess = model_or_session
    if not hasattr(sess, "run"):
        sess = make_session(sess)
    arr = np.array([str(t) for t in texts], dtype=object)
    if arr.shape[0] == 0:  # ORT's StringNormalizer rejects an empty batch
        return np.zeros((0, sess.get_outputs()[0].shape[1]), dtype=np.float32)
    return sess.run(["path_log_scores"], {"text": arr})[0]


_LOWER_CAVEAT = None


def has_lowercase_caveat(text: str) -> bool:
    """True if StringNormalizer's lowercasing may differ from Python's for `text`.

    C++ towlower (locale C.UTF-8) equals Python's per-character str.lower() on
    every code point except U+0130 "İ"; Python also applies the Greek
    final-sigma rule (word-final "Σ" -> "ς", the graph gives "σ").
    """
    global _LOWER_CAVEAT
    if _LOWER_CAVEAT is None:
        import re

        _LOWER_CAVEAT = re.compile(r"\u0130|\wΣ(?!\w)")
    return bool(_LOWER_CAVEAT.search(text))


def check_parity(state: dict, texts: Sequence[str], atol: float = 1e-4,
                 verbose: bool = True, label: str = "") -> dict:
    """Compare onnxruntime and the float64 reference; returns a dict of figures.

    ``ok`` is judged on the texts without a lowercasing caveat (see
    ``has_lowercase_caveat``) when any vectorizer lowercases; the max
    difference over all texts is reported as well.
    """
    model = build_onnx(state)
    sess = make_session(model)
    got = onnx_scores(sess, texts).astype(np.float64)
    ref = reference_scores(state, texts)
    diff = np.abs(got - ref)
    lowers = any(_params(v).get("lowercase", True) for v in state["vectorizers"])
    clean = np.array([not (lowers and has_lowercase_caveat(t)) for t in texts])
    diff_clean = diff[clean] if clean.any() else np.zeros((1, 1))
    res = {
        "label": label,
        "n_texts": len(texts),
        "n_features": int(sum(_n_terms(v) for v in state["vectorizers"])),
        "n_leaves": int(ref.shape[1]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agree": float((got.argmax(1) == ref.argmax(1)).mean()),
        "worst_text": str(texts[int(diff.max(1).argmax())])[:60],
        "n_caveat_texts": int((~clean).sum()),
        "max_abs_diff_no_caveat": float(diff_clean.max()),
        "ok": bool(diff_clean.max() <= atol),
        "model_bytes": len(model.SerializeToString()),
    }
    if verbose:
        print(f"[{label}] features={res['n_features']} leaves={res['n_leaves']} "
              f"max|diff|={res['max_abs_diff']:.3g} mean={res['mean_abs_diff']:.3g} "
              f"| {res['n_caveat_texts']} lowercase-caveat texts excluded: "
              f"max|diff|={res['max_abs_diff_no_caveat']:.3g} "
              f"argmax-agree={res['argmax_agree']:.4f} ok={res['ok']} "
              f"(worst: {res['worst_text']!r})")
    return res


# --------------------------------------------------------------------------
# Synthetic data / state for the self-check
# --------------------------------------------------------------------------

_TOPICS = {
    0: ["economy", "Börse", "inflation", "taux", "рынок", "銀行", "profit", "euro€", "crédit"],
    1: ["football", "match", "goal", "équipe", "футбол", "Olympia", "score", "coach", "サッカー"],
    2: ["science", "molecule", "ADN", "physik", "наука", "λόγος", "quantum", "lab", "实验"],
}
_CHILD_WORDS = {
    0: ["bank", "loan", "rate"], 1: ["stock", "trade", "Aktie"],
    2: ["league", "cup"], 3: ["tennis", "set", "Wimbledon"],
    4: ["gene", "cell", "ДНК"], 5: ["star", "planet", "galaxie"], 6: ["atom", "réaction"],
}
_PARENT_OF = np.array([0, 0, 1, 1, 2, 2, 2], dtype=np.int64)
_FILLER = ["the", "a", "of", "and", "le", "la", "und", "и", "de", "I", "é", "x",
           "2024", "3.14", "COVID-19", "e-mail", "naïve", "façade", "Ærø", "ÉCOLE",
           "ΛΌΓΟΙ", "straße", "😀", "can't", "C++", "well-known", "مرحبا", "नमस्ते"]
_PUNCT = ["", "", ",", ".", "!", "?", ";", ":", "...", "—", "(", ")", "\"", "'"]
_SPACES = [" "] * 12 + ["  ", "\t", "\n", " \n ", "\u00a0", "\u3000"]


def synthetic_corpus(n: int = 400, seed: int = 0):
    """(texts, leaf_labels, parent_of_leaf). Includes edge cases."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        leaf = int(rng.integers(len(_PARENT_OF)))
        parent = int(_PARENT_OF[leaf])
        words = []
        for _ in range(int(rng.integers(3, 25))):
            r = rng.random()
            pool = _CHILD_WORDS[leaf] if r < 0.3 else _TOPICS[parent] if r < 0.6 else _FILLER
            w = pool[int(rng.integers(len(pool)))]
            if rng.random() < 0.2:
                w = w.upper()
            elif rng.random() < 0.2:
                w = w.capitalize()
            words.append(w + _PUNCT[int(rng.integers(len(_PUNCT)))])
        text = ""
        for w in words:
            text += w + _SPACES[int(rng.integers(len(_SPACES)))]
        if rng.random() < 0.3:
            text = text.strip()
        texts.append(text)
        labels.append(leaf)
    # edge cases (labels arbitrary)
    extra = ["", " ", "!!! ??? ...", "a b c", "☃ ☃", "Ω", "q",
             "ECONOMY BANK LOAN", "économie — crédit; taux: 3,5 %", "Наука и ДНК",
             "ΛΌΓΟΙ Ωμέγα", "ÀÉÎÕÜ Ђорђе", "tab\tseparated\twords", "new\nline\n\nbreaks",
             "  leading and trailing  ", "x" * 300, "銀行サッカー实验"]
    texts += extra
    labels += [int(i % len(_PARENT_OF)) for i in range(len(extra))]
    return texts, np.array(labels, dtype=np.int64), _PARENT_OF.copy()


# Texts on which ONNX StringNormalizer (C++ towlower) and Python's str.lower()
# disagree: U+0130 "İ" (Python: "i" + U+0307) and Greek final sigma.
KNOWN_LOWERCASE_MISMATCH = [
    "İstanbul economy bank", "KİTAP football goal", "ΟΔΟΣ science", "ΛΌΓΟΣ ΟΔΟΣ quantum lab",
]


def _vec_state(vec) -> dict:
    p = {k: v for k, v in vec.get_params().items()
         if k in ("analyzer", "ngram_range", "min_df", "max_df", "max_features", "sublinear_tf",
                  "lowercase", "binary", "norm", "use_idf", "smooth_idf", "token_pattern",
                  "strip_accents", "stop_words")}
    p["ngram_range"] = list(p["ngram_range"])
    return {"params": p,
            "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
            "idf": (np.asarray(vec.idf_, dtype=np.float64) if vec.use_idf
                    else np.ones(len(vec.vocabulary_)))}


def make_synthetic_state(texts, labels, parents, vectorizer_params: Iterable[dict],
                         hierarchical: bool = False) -> dict:
    """Fit TfidfVectorizer(s) + LogisticRegression(s) into a plain-data state.

    flat: one level over the leaves.  hierarchical: level 0 = parents
    (softmax over all), level 1 = leaves with groups = parent index.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vstates, blocks = [], []
    for p in vectorizer_params:
        kw = dict(p)
        kw["ngram_range"] = tuple(kw.get("ngram_range", (1, 1)))
        vec = TfidfVectorizer(**kw)
        blocks.append(vec.fit_transform(texts))
        vstates.append(_vec_state(vec))
    X = sp.hstack(blocks, format="csr")
    labels = np.asarray(labels)
    n_leaves = len(parents)

    def fit(y, n_cls):
        clf = LogisticRegression(C=10.0, max_iter=300).fit(X, y)
        coef = np.zeros((n_cls, X.shape[1]), np.float32)
        inter = np.zeros(n_cls, np.float32)
        cls = clf.classes_
        if len(cls) == 2:  # binary LR -> two symmetric logits
            coef[cls[1]], inter[cls[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
            coef[cls[0]], inter[cls[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
        else:
            coef[cls], inter[cls] = clf.coef_, clf.intercept_
        return coef, inter

    if not hierarchical:
        c, i = fit(labels, n_leaves)
        levels = [{"coef": c, "intercept": i, "groups": None}]
        anc = np.arange(n_leaves, dtype=np.int64)[:, None]
    else:
        n_par = int(parents.max()) + 1
        c0, i0 = fit(parents[labels], n_par)
        c1, i1 = fit(labels, n_leaves)
        levels = [{"coef": c0, "intercept": i0, "groups": None},
                  {"coef": c1, "intercept": i1, "groups": parents.astype(np.int64)}]
        anc = np.stack([parents, np.arange(n_leaves)], axis=1).astype(np.int64)
    return {"vectorizers": vstates, "levels": levels, "leaf_ancestors": anc}


# --------------------------------------------------------------------------
# skl2onnx probe
# --------------------------------------------------------------------------

def probe_skl2onnx(texts: Sequence[str], locale: str | None = "C.UTF-8") -> list[dict]:
    """Try skl2onnx's TfidfVectorizer converter per analyzer; report results."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import StringTensorType
    except ImportError:  # pragma: no cover
        return [{"analyzer": "*", "status": "skl2onnx not installed"}]
    configs = [("word", (1, 2)), ("char_wb", (2, 4)), ("char", (1, 3))]
    out = []
    arr = np.array(list(texts), dtype=object)
    for analyzer, ngr in configs:
        vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngr, min_df=2).fit(texts)
        rec: dict[str, Any] = {"analyzer": analyzer, "ngram_range": ngr}
        for loc in ([None, locale] if locale else [None]):
            key = f"locale={loc}"
            opts = {id(vec): {"locale": loc}} if loc else None
            try:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    m = to_onnx(vec, initial_types=[("text", StringTensorType([None]))],
                                target_opset={"": DEFAULT_OPSET, "ai.onnx.ml": 3}, options=opts)
                warn = "; ".join(str(x.message)[:60] for x in w)
            except Exception as e:
                rec[key] = f"convert error: {type(e).__name__}: {str(e)[:90]}"
                continue
            try:
                sess = make_session(m)
                got = sess.run(None, {"text": arr})[0]
            except Exception as e:
                rec[key] = f"runtime error: {str(e)[-120:]}"
                continue
            ref = vec.transform(texts).toarray()
            rows = np.abs(got - ref).max(1) > 1e-4
            rec[key] = (f"converted{' (warn: ' + warn + ')' if warn else ''}; "
                        f"max|diff|={np.abs(got - ref).max():.3g}, "
                        f"rows differing={int(rows.sum())}/{len(texts)}")
        out.append(rec)
    return out


# --------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------

def _bench(state, texts, repeat=3):
    sess = make_session(build_onnx(state), threads=1)
    onnx_scores(sess, texts[:8])  # warm-up
    t_onnx = min(_timeit(lambda: onnx_scores(sess, texts)) for _ in range(repeat))
    t_ref = min(_timeit(lambda: reference_scores(state, texts)) for _ in range(repeat))
    return t_onnx, t_ref


def _timeit(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    texts, labels, parents = synthetic_corpus(400, seed=0)
    test_texts, _, _ = synthetic_corpus(200, seed=1)
    word = {"analyzer": "word", "ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True,
            "lowercase": True}
    char_wb = {"analyzer": "char_wb", "ngram_range": [2, 5], "min_df": 2, "sublinear_tf": True,
               "max_features": 4000}
    char_wb45 = {"analyzer": "char_wb", "ngram_range": [4, 5], "min_df": 2}
    char = {"analyzer": "char", "ngram_range": [1, 4], "min_df": 2, "max_features": 4000,
            "lowercase": False, "binary": True}
    word_l1 = {"analyzer": "word", "ngram_range": [1, 3], "min_df": 1, "norm": "l1",
               "use_idf": False}
    configs = [
        ("flat word(1,2)", [word], False),
        ("2-level word(1,2)", [word], True),
        ("flat char_wb(2,5)", [char_wb], False),
        ("2-level char_wb(2,5)", [char_wb], True),
        ("flat char_wb(4,5)", [char_wb45], False),
        ("flat char(1,4) binary no-lower", [char], False),
        ("flat word(1,3) l1 no-idf", [word_l1], False),
        ("2-level word + char_wb", [word, char_wb], True),
    ]
    ok = True
    for label, vps, hier in configs:
        state = make_synthetic_state(texts, labels, parents, vps, hierarchical=hier)
        r = check_parity(state, test_texts, atol=1e-4, label=label)
        ok &= r["ok"]
        if label.startswith("2-level word + char_wb") or label.startswith("flat char_wb(4"):
            check_parity(state, KNOWN_LOWERCASE_MISMATCH, verbose=True,
                         label=label + " | known lowercase mismatches, raw")
            r = check_parity(state, [t.lower() for t in KNOWN_LOWERCASE_MISMATCH],
                             label=label + " | same texts pre-lowered in Python")
            ok &= r["ok"]
    try:
        make_synthetic_state(texts, labels, parents,
                             [{"analyzer": "word", "strip_accents": "unicode"}])
        build_onnx(make_synthetic_state(texts, labels, parents,
                                        [{"analyzer": "word", "strip_accents": "unicode"}]))
        print("strip_accents: unexpectedly exported")
        ok = False
    except UnsupportedVectorizerConfig as e:
        print(f"unsupported config raises UnsupportedVectorizerConfig: {e}")

    print("\nskl2onnx's own converter (min_df=2):")
    for rec in probe_skl2onnx(test_texts):
        print(" ", rec)

    big, _, _ = synthetic_corpus(1000, seed=2)
    big = big[:1000]
    for label, vps, hier in [("2-level word(1,2)", [word], True),
                             ("2-level word + char_wb", [word, char_wb], True)]:
        state = make_synthetic_state(texts, labels, parents, vps, hierarchical=hier)
        t_onnx, t_ref = _bench(state, big)
        print(f"speed [{label}] 1000 texts: onnxruntime(1 thread) {t_onnx * 1e3:.1f} ms, "
              f"numpy/sklearn reference {t_ref * 1e3:.1f} ms")
    print("ALL OK" if ok else "PARITY FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
