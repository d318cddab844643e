"""JSON Schemas of the files KTT reads back, and one-line messages for what fails them.

``hierarchy.json`` (and the copy of it inside every checkpoint) is checked against
:data:`HIERARCHY_SCHEMA` before it is used: the structure (fields, types, non-empty
lists) here, the rules a schema cannot say (path lengths, parents, placeholders) in
:meth:`ktt_core.hierarchy.Hierarchy.from_dict`. A failure names the file and the field::

    datasets/shop/hierarchy.json: levels[1][3][0]: expected a string, got an integer

Hyperparameter files are checked key by key against the model's defaults by
:func:`ktt_core.config.resolve_config` (their keys depend on the model).
"""
from __future__ import annotations

import json
from typing import Any

from ktt_core.errors import KttError

#: Structure of ``hierarchy.json``; see :meth:`ktt_core.hierarchy.Hierarchy.to_dict`.
HIERARCHY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KTT label hierarchy (hierarchy.json)",
    "type": "object",
    "required": ["format", "levels"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": "ktt-hierarchy"},
        "version": {"type": "integer", "minimum": 1},
        "depth": {"type": "integer", "minimum": 1},
        "placeholder": {"const": ""},
        # levels[d] lists the nodes of level d; a node is its full path, d + 1 labels.
        "levels": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "array", "minItems": 1,
                "items": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            },
        },
    },
}

_KINDS = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "null": "null"}


def validate(data: Any, schema: dict, source: str) -> None:
    """Raise KttError ``"{source}: {field}: {problem}"`` for the first place ``data`` fails."""
    from jsonschema import Draft202012Validator

    errors = list(Draft202012Validator(schema).iter_errors(data))
    if errors:
        first = min(errors, key=lambda e: (_path_key(e.absolute_path), e.validator != "type"))
        where = field_path(first.absolute_path)
        raise KttError(f"{source}: {where + ': ' if where else ''}{describe(first)}")


def field_path(parts) -> str:
    """``["levels", 1, 3]`` -> ``levels[1][3]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _path_key(parts) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in parts)


def describe(error) -> str:
    """A short reason for one jsonschema ``ValidationError``."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(_KINDS.get(n, n) for n in names)}, got {json_kind(value)}"
    if kind == "const":
        return f"expected {_short(expected)}, got {_short(value)}"
    if kind == "enum":
        return f"expected one of {', '.join(map(_short, expected))}, got {_short(value)}"
    if kind == "required":
        missing = [k for k in expected if k not in value]
        return f"missing field '{missing[0]}'" if missing else error.message
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in value if k not in known)
        allowed = ", ".join(sorted(known))
        return f"unknown field '{extra[0]}' (allowed: {allowed})" if extra else error.message
    if kind == "minItems":
        return "must not be empty" if expected == 1 else f"needs at least {expected} items"
    if kind == "minLength":
        return "must not be empty"
    if kind == "pattern":
        return f"{_short(value)} is not of the expected form ({expected})"
    if kind == "minimum":
        return f"must be at least {expected}, got {_short(value)}"
    if kind == "maximum":
        return f"must be at most {expected}, got {_short(value)}"
    return " ".join(error.message.split())


def json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: ``ktt.json`` of an ONNX export (:mod:`ktt_core.export.onnx`, the TF-IDF plugin's export).
#: A stored calibration (:class:`ktt_core.calibration.Calibration`); null: raw scores.
CALIBRATION_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["method", "temperatures"],
    "properties": {
        "method": {"enum": ["per-level", "temperature", "none"]},
        "temperatures": {"type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
        "note": {"type": "string"},
        "fit": {"type": "object"},
    },
}

#: What an int8 export (:mod:`ktt_core.export.quantize`) says of itself: ``quantized`` and, in
#: the top ``ktt.json`` of the folder, the accuracy comparison made when it was written.
QUANTIZED_SCHEMA: dict[str, Any] = {"enum": ["int8"]}
QUANTIZATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["accuracy_fp32", "accuracy_int8", "rows", "speedup"],
    "properties": {
        "accuracy_fp32": {"type": "number", "minimum": 0, "maximum": 1},
        "accuracy_int8": {"type": "number", "minimum": 0, "maximum": 1},
        "rows": {"type": "integer", "minimum": 1},
        "speedup": {"type": "number", "exclusiveMinimum": 0},
    },
}

#: Fields a plugin adds are allowed; the ones KTT reads are checked.
ONNX_INFO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KTT ONNX export (ktt.json)",
    "type": "object",
    "required": ["format", "version", "model", "sha256"],
    "properties": {
        "format": {"const": "ktt-onnx"},
        "version": {"type": "integer", "minimum": 1},
        "model": {"type": "string", "minLength": 1},
        "inputs_kind": {"enum": ["token_ids", "text"]},
        "config": {"type": "object"},
        "max_length": {"type": "integer", "minimum": 1},
        "pad_token_id": {"type": "integer", "minimum": 0},
        "truncation_side": {"enum": ["left", "right"]},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "opset": {"type": "integer", "minimum": 1},
        "calibration": CALIBRATION_SCHEMA,
        "quantized": QUANTIZED_SCHEMA,
        "quantization": QUANTIZATION_SCHEMA,
    },
    # Graphs over token ids truncate texts to max_length, so they must say it.
    "if": {"not": {"required": ["inputs_kind"], "properties": {"inputs_kind": {"const": "text"}}}},
    "then": {"required": ["max_length"]},
}

#: ``ktt.json`` of an ensemble's ONNX export (:meth:`ktt_core.ensemble.EnsembleModel.export`).
ENSEMBLE_INFO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KTT ONNX ensemble export (ktt.json)",
    "type": "object",
    "required": ["format", "version", "model", "members", "weights", "combine"],
    "properties": {
        "format": {"const": "ktt-onnx-ensemble"},
        "version": {"type": "integer", "minimum": 1},
        "model": {"type": "string", "minLength": 1},
        "config": {"type": "object"},
        # A member folder is members/N inside the export, never a path elsewhere.
        "members": {"type": "array", "minItems": 1,
                    "items": {"type": "object", "required": ["folder"],
                              "properties": {"folder": {"type": "string", "pattern": "^members/[0-9]+$"}}}},
        "weights": {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": 0}},
        "combine": {"enum": ["probability", "log"]},
        "calibration": CALIBRATION_SCHEMA,
        "quantized": QUANTIZED_SCHEMA,
        "quantization": QUANTIZATION_SCHEMA,
    },
}

#: ``ktt.json`` of a model in the BentoML model store (:mod:`ktt_core.export.bento`).
BENTO_INFO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KTT BentoML model (ktt.json)",
    "type": "object",
    "required": ["format", "version", "model", "checkpoint_sha256"],
    "properties": {
        "format": {"const": "ktt-bento-model"},
        "version": {"type": "integer", "minimum": 1},
        "model": {"type": "string", "minLength": 1},
        "checkpoint_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}
