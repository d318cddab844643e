"""Hyperparameters: model-class defaults < model defaults < --config file < --set / options.

Every key is typed by its default value; an unknown key or a value of the wrong type is
refused with a message that names the key and where it came from.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from ktt_core.errors import KttError
from ktt_core.registry import ModelSpec

#: Keys every model has, whatever its framework.
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "monitor": "exact_path_accuracy",  # validation metric that picks best.pt (or "loss")
    "calibration": "per-level",        # per-level | temperature | none (ktt_core/calibration.py)
}

#: Keys of the core's transformer models (:class:`ktt_core.model.EncoderModel`); kept here,
#: not there, so that reading a config never imports torch. Plugins override values and
#: may add keys of their own.
ENCODER_DEFAULTS: dict[str, Any] = {
    "encoder": "all-MiniLM-L6-v2",   # packaged default; any HF name or local folder works
    "pooling": "mean",               # mean | cls: how token states become one text vector
    "max_length": 64,                # tokens per text
    "train_batch_size": 32,
    "eval_batch_size": 256,          # capped by tokens per batch (data.batches.MAX_EVAL_TOKENS)
    "epochs": 3,
    # Chosen for the packaged MiniLM with a freshly initialised head (docs/quality.md):
    # the original KTT's 1e-5 for both, tuned for DistilBERT over many epochs, leaves the
    # head nearly untrained in 3 epochs (examples/original-db-linear.yaml keeps them).
    "encoder_lr": 5e-5,
    "classifier_lr": 2e-3,
    "weight_decay": 0.0,
    "scheduler": "linear",           # constant | linear (warm-up then linear decay)
    "warmup_ratio": 0.06,
    "grad_clip": 1.0,                # max gradient norm; 0 disables clipping
    "reference_features": 24,        # pooled feature width in reference sets
    "allow_download": False,         # let the encoder be fetched from the Hugging Face Hub
    "precision": "auto",             # auto (bf16 on CUDA and on CPUs with native bf16) | fp32 | bf16
    "compile": False,                # torch.compile the model for training
    "freeze_encoder": False,         # train the head only, on encoder features computed once
    "group_by_length": True,         # batch texts of similar length together (less padding)
}

CHOICES = {
    "pooling": ("mean", "cls"),
    "scheduler": ("constant", "linear"),
    "precision": ("auto", "fp32", "bf16"),
    "calibration": ("per-level", "temperature", "none"),
    "monitor": ("exact_path_accuracy", "hierarchical_f1", "leaf_accuracy", "leaf_weighted_precision",
                "leaf_auprc_micro", "loss"),
}
POSITIVE = {"max_length", "train_batch_size", "eval_batch_size", "epochs", "reference_features",
            "encoder_lr", "classifier_lr"}
FRACTIONS = {"dropout", "warmup_ratio", "label_smoothing"}  # in [0, 1)
NON_NEGATIVE = {"weight_decay", "grad_clip"}
#: Inclusive ranges: numpy's global seed must fit in 32 bits.
RANGES = {"seed": (0, 2**32 - 1)}


def defaults_for(spec: ModelSpec) -> dict[str, Any]:
    """Every key of ``spec``'s config with its default: common keys, the model class's, the spec's."""
    base = ENCODER_DEFAULTS if spec.model is None else spec.model_class.base_defaults()
    return {**COMMON_DEFAULTS, **base, **spec.defaults}


def read_config_file(path: Path | str, what: str = "config file") -> dict[str, Any]:
    """Read a JSON or YAML mapping of hyperparameters (``--config``; ``--space`` as a search space file)."""
    from ktt_core.environment import read_small_file

    path = Path(path)
    # Not path.read_text: /dev/zero would be read until memory runs out, a FIFO would hang.
    data = read_small_file(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KttError(f"{path}: config file is not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise KttError(f"{path}: cannot parse config: {' '.join(str(exc).split())}") from None
    except (RecursionError, ValueError) as exc:  # nested too deeply; an integer of thousands of digits
        what = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:160]
        raise KttError(f"{path}: cannot parse config: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KttError(f"{path}: a config file must hold a mapping of key: value")
    for key in data:
        if not isinstance(key, str):
            raise KttError(f"{path}: key {key!r}: keys must be names (strings), got {type(key).__name__}")
    return data


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are parsed as YAML scalars (1e-5, true, 3)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KttError(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except (yaml.YAMLError, RecursionError, ValueError):
            out[key.strip()] = value
    return out


def resolve_config(spec: ModelSpec, layers: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge ``layers`` (``(origin, mapping)``, lowest priority first) over the defaults."""
    config = defaults_for(spec)
    for origin, values in layers:
        for key, value in values.items():
            if key not in config:
                known = ", ".join(sorted(config))
                raise KttError(f"{origin}: unknown key '{key}' for model {spec.name}; known keys: {known}")
            config[key] = coerce(key, value, config[key], origin, spec)
    return config


def coerce(key: str, value: Any, default: Any, origin: str, spec: ModelSpec | None = None) -> Any:
    """Check ``value`` against the type of ``default`` and the key's range."""
    def fail(expected: str):
        raise KttError(f"{origin}: key '{key}' must be {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                value = float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            fail("a finite number")
        if not math.isfinite(value):
            fail("a finite number")
    elif isinstance(default, str):
        # An empty default marks an optional text (the ensemble's weights); others need one.
        if not isinstance(value, str) or (not value and default):
            fail("a non-empty string")
    choices = (spec.choices.get(key) if spec is not None else None) or CHOICES.get(key)
    if choices and value not in choices:
        fail(" or ".join(map(str, choices)))
    low, high = (spec.ranges.get(key) if spec is not None else None) or (None, None)
    if low is not None and value < low:
        fail(f"at least {low}")
    if high is not None and value > high:
        fail(f"at most {high}")
    if key in POSITIVE and value <= 0:
        fail("positive")
    if key in FRACTIONS and not 0 <= value < 1:
        fail("in [0, 1)")
    if key in NON_NEGATIVE and value < 0:
        fail("non-negative")
    if key in RANGES and not RANGES[key][0] <= value <= RANGES[key][1]:
        fail(f"in [{RANGES[key][0]}, {RANGES[key][1]}]")
    return value


#: What the core's keys mean (``ktt config MODEL`` shows them).
DESCRIPTIONS = {
    "seed": "random seed of initialisation, shuffling and dropout",
    "monitor": "validation metric that picks best.pt",
    "calibration": "temperature scaling fit on validation after training: one per level, one for all, or none",
    "encoder": "Hugging Face name or local folder of the encoder",
    "pooling": "how token states become one text vector",
    "max_length": "tokens read per text (longer texts are cut)",
    "train_batch_size": "texts per training step",
    "eval_batch_size": "texts per batch when scoring (at most 16384 tokens per batch)",
    "epochs": "passes over the training split",
    "encoder_lr": "learning rate of the encoder",
    "classifier_lr": "learning rate of the head",
    "weight_decay": "AdamW weight decay",
    "scheduler": "learning-rate schedule",
    "warmup_ratio": "share of steps spent warming up (linear schedule)",
    "grad_clip": "max gradient norm; 0 disables clipping",
    "reference_features": "pooled feature width in drift reference sets",
    "allow_download": "let the encoder be fetched from the Hugging Face Hub",
    "precision": "auto: bf16 on CUDA GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere; "
                 "or fp32, or bf16; scores and metrics are float32 either way",
    "compile": "torch.compile the model for training",
    "freeze_encoder": "train the head only, on encoder features computed once",
    "group_by_length": "batch texts of similar length together (less padding)",
    "dropout": "dropout before the head",
    "label_smoothing": "label smoothing of the loss",
}


def describe_keys(spec: ModelSpec) -> list[dict[str, Any]]:
    """Every config key of ``spec``: its default, what values it takes, what it does."""
    rows = []
    for key, default in defaults_for(spec).items():
        rows.append({"key": key, "default": default, "type": type(default).__name__,
                     "allowed": _allowed(key, default, spec), "tuned": key in spec.search_space,
                     "description": spec.key_help.get(key) or DESCRIPTIONS.get(key, "")})
    return rows


def _allowed(key: str, default: Any, spec: ModelSpec) -> str:
    choices = spec.choices.get(key) or CHOICES.get(key)
    if choices:
        return " | ".join(map(str, choices))
    low, high = spec.ranges.get(key) or RANGES.get(key) or (None, None)
    if key in POSITIVE:
        low = "> 0"
    elif key in FRACTIONS:
        return "[0, 1)"
    elif key in NON_NEGATIVE:
        low = 0
    if low is None and high is None:
        return {"bool": "true | false", "str": "text"}.get(type(default).__name__, "any")
    if high is None:
        return str(low) if str(low).startswith(">") else f">= {low}"
    return f"[{'-inf' if low is None else low}, {high}]"
