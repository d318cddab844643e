"""Run an ONNX export (``ktt export MODEL DATASET --onnx``) without torch or transformers.

:class:`OnnxModel` needs onnxruntime and numpy (and the ``tokenizers`` library for
graphs over token ids). A graph takes either token ids (the transformer models: it
tokenizes with the export's ``tokenizer/tokenizer.json``, truncated to ``max_length``,
padded to the longest text of each batch) or the texts themselves (``inputs_kind``
``"text"`` in ``ktt.json``: the TF-IDF models, whose graph holds its own n-gram
vectorizer). :class:`OnnxEnsemble` runs an ensemble's export: one folder per member and
the ensemble's weights. Both decode the path scores with :func:`ktt_core.decoding.decode`,
exactly as the model does, and have the ``run``, ``name`` and ``hierarchy`` of
:class:`ktt_core.scoring.ModelPredictor`, so a service can use either; :func:`open_onnx`
opens whichever a folder holds.

This module must not import torch or transformers (a test runs it with both made
unimportable); :mod:`ktt_core.hierarchy`, :mod:`ktt_core.decoding` and
:mod:`ktt_core.streaming` and :mod:`ktt_core.ensemble` do not either.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ktt_core.decoding import Predictions, decode, describe_all
from ktt_core.errors import KttError
from ktt_core.files import sha256_file
from ktt_core.hierarchy import Hierarchy

FORMAT = "ktt-onnx"
FORMAT_VERSION = 1


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (n, longest), padded on the right with ``pad_id``
    (as :class:`ktt_core.data.batches.Collate` pads for the torch model)."""
    width = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def read_export_info(directory: Path, fmt: str, schema: dict) -> dict:
    """``ktt.json`` of the export in ``directory``, once the export's manifest has verified every
    file of the folder (:func:`ktt_core.manifest.verify_manifest`) and the fields their types.

    The one gate of every ONNX load: KttError (one line) names the folder, the file changed,
    missing or added since the export, or the malformed field.
    """
    from ktt_core.manifest import verify_manifest
    from ktt_core.schemas import validate

    info_path = directory / "ktt.json"
    if not directory.is_dir():
        raise KttError(f"{directory}: no such folder (export one with ktt export MODEL DATASET --onnx)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KttError(f"{info_path}: no such file; {directory} is not a KTT ONNX export "
                       "(ktt export MODEL DATASET --onnx)") from None
    except (OSError, ValueError) as exc:
        raise KttError(f"{info_path}: cannot read it ({_one_line(exc)})") from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        found = info.get("format") if isinstance(info, dict) else None
        raise KttError(f"{info_path}: not a KTT ONNX export (format {found!r}, expected {fmt!r})")
    version = info.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise KttError(f"{info_path}: version {version!r} is not one this KTT reads ({FORMAT_VERSION}); "
                       "upgrade KTT or export again")
    verify_manifest(directory, "export")
    validate(info, schema, str(info_path))
    return info


def _calibration(info: dict, hierarchy: Hierarchy, info_path: Path):
    """The export's calibration (``ktt.json`` ``calibration``), applied to its scores as the
    checkpoint's is (:mod:`ktt_core.calibration`); ``None`` for raw scores."""
    from ktt_core.calibration import Calibration

    return Calibration.from_dict(info.get("calibration"), hierarchy.depth, str(info_path))


class OnnxModel:
    """An exported model folder, checked and ready to predict with onnxruntime.

    KttError (one line, naming the file) when ``ktt.json`` is missing, not a KTT ONNX
    export or has a malformed field, when any file differs from the export's manifest
    (:func:`read_export_info`), or when the tokenizer, hierarchy or graph cannot be loaded.
    """

    def __init__(self, directory, providers: Sequence[str] | None = None, threads: int | None = None):
        from ktt_core.schemas import ONNX_INFO_SCHEMA

        self.directory = directory = Path(directory)
        info_path = directory / "ktt.json"
        info = read_export_info(directory, FORMAT, ONNX_INFO_SCHEMA)
        self.inputs_kind = info.get("inputs_kind", "token_ids")
        try:
            self.name: str = str(info["model"])
            self.max_length: int = int(info.get("max_length") or 0)
            self.config: dict = dict(info.get("config") or {})
            self.pad_token_id: int = int(info.get("pad_token_id", 0))
            expected_sha = str(info["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KttError(f"{info_path}: missing or malformed field ({_one_line(exc)})") from None
        self.info = info

        onnx_path = directory / "model.onnx"
        if not onnx_path.is_file():
            raise KttError(f"{onnx_path}: no such file; export the model again")
        if sha256_file(onnx_path) != expected_sha:
            raise KttError(f"{onnx_path}: content hash does not match ktt.json; the file is damaged or was "
                           "replaced (export the model again)")
        self.hierarchy: Hierarchy = Hierarchy.load(directory / "hierarchy.json")
        self.calibration = _calibration(info, self.hierarchy, info_path)
        self._tokenizer = None
        if self.inputs_kind == "token_ids":
            self._tokenizer = self._load_tokenizer(directory / "tokenizer" / "tokenizer.json",
                                                   info.get("truncation_side", "right"))
        self._session = self._load_session(onnx_path, providers, threads)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        allowed = {"text"} if self.inputs_kind == "text" else {"input_ids", "attention_mask", "token_type_ids"}
        missing = {"path_log_scores", "features"} - set(self.output_names)
        if missing or not set(self.input_names) <= allowed:
            raise KttError(f"{onnx_path}: not a KTT graph (inputs {self.input_names}, outputs {self.output_names})")
        shape = self._session.get_outputs()[self.output_names.index("path_log_scores")].shape
        if shape[-1] != self.hierarchy.n_leaves:
            raise KttError(f"{onnx_path}: scores {shape[-1]} paths, but hierarchy.json has "
                           f"{self.hierarchy.n_leaves}; the folder mixes two exports")
        width = self._session.get_outputs()[self.output_names.index("features")].shape[-1]
        self.feature_width = width if isinstance(width, int) else None

    def _load_tokenizer(self, path: Path, side: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise KttError("running an ONNX export needs tokenizers: pip install tokenizers") from None
        if not path.is_file():
            raise KttError(f"{path}: no such file; the export has no fast tokenizer (export the model again)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise KttError(f"{path}: cannot load the tokenizer ({_one_line(exc)})") from None
        tokenizer.no_padding()  # batches are padded by pad(), as the torch path pads them
        tokenizer.enable_truncation(self.max_length, direction="left" if side == "left" else "right")
        return tokenizer

    @staticmethod
    def _load_session(path: Path, providers, threads):
        try:
            import onnxruntime as ort
        except ImportError:
            raise KttError("running an ONNX export needs onnxruntime: pip install onnxruntime") from None
        from ktt_core.cpu import default_threads

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # onnxruntime's own default is one thread per physical core of the machine, which
        # overcommits a container or a CPU set limited to fewer.
        options.intra_op_num_threads = threads or default_threads()
        try:
            return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own types for invalid graphs
            raise KttError(f"{path}: onnxruntime cannot load it ({_one_line(exc)})") from None

    # -- the steps of run() ------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids (special tokens added, truncated to ``max_length``)."""
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))] if texts else []

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) of one batch, padded to its longest text."""
        return pad(self.token_ids(texts), self.pad_token_id)

    def session_outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name for one padded batch."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": np.zeros_like(input_ids)}
        values = self._session.run(None, {name: feed[name] for name in self.input_names})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.output_names, values)}

    def scores(self, texts: Sequence[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Every output of the graph for ``texts``, rows in text order.

        Texts are batched by token length (as the torch path batches them), so padding
        stays small; the rows are put back in order.
        """
        if batch_size < 1:
            raise KttError(f"batch size {batch_size}: must be at least 1")
        if self.inputs_kind == "text":
            return self._text_scores(list(texts), batch_size)
        ids = self.token_ids(texts)
        order = np.argsort(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)), kind="stable")
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), batch_size):
            rows = order[start:start + batch_size]
            values = self.session_outputs(*pad([ids[i] for i in rows], self.pad_token_id))
            for name, value in values.items():
                if name not in out:
                    out[name] = np.empty((len(ids), *value.shape[1:]), dtype=np.float32)
                out[name][rows] = value
        if not ids:
            h = self.hierarchy
            out = {"path_log_scores": np.empty((0, h.n_leaves), np.float32),
                   "features": np.empty((0, self.feature_width or 0), np.float32)}
            if "level_log_scores" in self.output_names:
                out["level_log_scores"] = np.empty((0, h.n_classes), np.float32)
        return out

    def _text_scores(self, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
        """Outputs of a graph that takes the texts themselves, batch by batch, in order."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(texts), batch_size):
            batch = np.array(texts[start:start + batch_size], dtype=object)
            values = self._session.run(None, {"text": batch})
            for name, value in zip(self.output_names, values):
                parts.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
        if not texts:
            return {"path_log_scores": np.empty((0, self.hierarchy.n_leaves), np.float32),
                    "features": np.empty((0, self.feature_width or 0), np.float32)}
        return {name: np.concatenate(values) for name, values in parts.items()}

    def run(self, texts: list[str], batch_size: int = 64) -> tuple[Predictions, np.ndarray]:
        """Decoded predictions and pooled features (float32, (N, width)) of ``texts``."""
        out = self.scores(texts, batch_size)
        h = self.hierarchy
        levels = out.get("level_log_scores")
        per_level = None if levels is None else h.split_levels(levels)
        return decode(h, out["path_log_scores"], None, per_level, self.calibration), out["features"]

    def describe(self, texts: list[str], top_k: int = 1, decoding: str = "consistent",
                 threshold: float | None = None, batch_size: int | None = None) -> list[dict]:
        """One :func:`ktt_core.decoding.describe` result per text, as ``ktt predict`` prints them."""
        predictions, _ = self.run(texts, batch_size or int(self.config.get("eval_batch_size", 64)))
        return describe_all(self.hierarchy, predictions, top_k, decoding, threshold)


class OnnxEnsemble:
    """An ensemble's export: ``members/N/`` (each a member's own export) and ``ktt.json``
    with the members' weights and how their scores combine (:mod:`ktt_core.ensemble`)."""

    def __init__(self, directory, providers: Sequence[str] | None = None, threads: int | None = None):
        from ktt_core.ensemble import ENSEMBLE_FORMAT
        from ktt_core.schemas import ENSEMBLE_INFO_SCHEMA

        self.directory = directory = Path(directory)
        info_path = directory / "ktt.json"
        info = read_export_info(directory, ENSEMBLE_FORMAT, ENSEMBLE_INFO_SCHEMA)
        try:
            self.name = str(info["model"])
            self.config = dict(info.get("config") or {})
            self.weights = np.asarray(info["weights"], dtype=np.float64)
            self.combine = str(info["combine"])
            folders = [directory / str(m["folder"]) for m in info["members"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise KttError(f"{info_path}: missing or malformed field ({_one_line(exc)})") from None
        self.info = info
        self.hierarchy = Hierarchy.load(directory / "hierarchy.json")
        self.calibration = _calibration(info, self.hierarchy, info_path)
        self.members = [OnnxModel(folder, providers, threads) for folder in folders]
        if len(self.members) != len(self.weights):
            raise KttError(f"{info_path}: {len(self.members)} members but {len(self.weights)} weights")
        for member in self.members:
            if member.hierarchy.to_dict() != self.hierarchy.to_dict():
                raise KttError(f"{member.directory}: member has another hierarchy than the ensemble")
        self.output_names = ["path_log_scores", "features"]
        self.feature_width = self.members[0].feature_width

    def scores(self, texts: Sequence[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        from ktt_core.ensemble import combine_scores

        outputs = [member.scores(texts, batch_size) for member in self.members]
        paths = combine_scores([o["path_log_scores"] for o in outputs], self.weights, self.combine)
        return {"path_log_scores": paths.astype(np.float32), "features": outputs[0]["features"]}

    run = OnnxModel.run
    describe = OnnxModel.describe


def open_onnx(directory, providers: Sequence[str] | None = None, threads: int | None = None):
    """The export in ``directory``: an :class:`OnnxEnsemble` or an :class:`OnnxModel`."""
    info_path = Path(directory) / "ktt.json"
    try:
        kind = json.loads(info_path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        kind = None  # OnnxModel names what is wrong
    from ktt_core.ensemble import ENSEMBLE_FORMAT

    if kind == ENSEMBLE_FORMAT:
        return OnnxEnsemble(directory, providers, threads)
    return OnnxModel(directory, providers, threads)


# -- what ``ktt predict --onnx`` calls -----------------------------------------------------

def open_export(model_name: str, directory, calibrated: bool = True, threads: int | None = None):
    """The export in ``directory``, refusing one of another model than ``model_name``; with
    ``calibrated`` False its scores stay raw (``--no-calibration``); ``threads``: onnxruntime's
    intra-op threads (None: :func:`ktt_core.cpu.default_threads`)."""
    model = open_onnx(directory, threads=threads)
    if not calibrated:
        model.calibration = None
    if model.name != model_name:
        raise KttError(f"{Path(directory) / 'ktt.json'}: this is an export of {model.name}, not {model_name}")
    return model


def predict(model_name: str, directory, texts: list[str], top_k: int = 1, decoding: str = "consistent",
            threshold: float | None = None, calibrated: bool = True, threads: int | None = None) -> list[dict]:
    """``jobs.predict`` with an ONNX export instead of a checkpoint."""
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise KttError(f"text {i} is empty")
    return open_export(model_name, directory, calibrated, threads).describe(list(texts), top_k, decoding, threshold)


def predict_file(model_name: str, directory, input_path, output_path, text_column: str = "text",
                 top_k: int = 1, chunk_size: int = 2048, decoding: str = "consistent",
                 threshold: float | None = None, keep=(), calibrated: bool = True, threads: int | None = None) -> int:
    """``jobs.predict_file`` with an ONNX export: every text of a file into another, by chunks."""
    from ktt_core.streaming import TextSource, check_output, write_predictions

    source = TextSource(input_path, text_column, chunk_size, keep)
    check_output(output_path, source)
    model = open_export(model_name, directory, calibrated, threads)
    return write_predictions(source, output_path, lambda texts: model.describe(texts, top_k, decoding, threshold),
                             model.hierarchy.depth, top_k)
