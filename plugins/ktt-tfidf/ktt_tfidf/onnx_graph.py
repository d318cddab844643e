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
``build_onnx(state, *, opset=20, locale="C.UTF-8")``
    one ONNX graph: string input ``text`` [N] -> float ``path_log_scores``
    [N, n_leaves].  TF-IDF is computed inside the graph (word, char and
    char_wb analyzers) with ``com.microsoft.Tokenizer`` + ``ai.onnx``
    ``TfIdfVectorizer``.  skl2onnx is not used: its TfidfVectorizer converter
    refuses char_wb and tokenizes words differently from scikit-learn
    (``[a-zA-Z0-9_]+``: "café" becomes "caf"; docs/export.md).
``UnsupportedVectorizerConfig``
    raised for settings the graph cannot reproduce.

tests/test_tfidf_onnx.py checks parity against scikit-learn on multilingual
texts for every analyzer.

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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "UnsupportedVectorizerConfig",
    "build_onnx",
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


def _custom_op_types(nodes) -> list:
    """The type of every output of the graph's ``com.microsoft.Tokenizer`` nodes (string
    tensors). onnx has no schema for that domain, so its shape inference leaves them untyped,
    and onnx 1.23 then crashes (segfault) inferring the ``RegexFullMatch`` that reads one;
    declared, the graph goes through standard tools: shape inference and onnxruntime's
    quantizer (``ktt export --onnx --quantize int8``)."""
    return [helper.make_tensor_value_info(output, TensorProto.STRING, None)
            for node in nodes if node.domain == MS_DOMAIN and node.op_type == "Tokenizer" for output in node.output]


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
        g.inits, value_info=_custom_op_types(g.nodes))
    model = helper.make_model(graph, producer_name="ktt-tfidf", opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model
