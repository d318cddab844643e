"""Single-file checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` file holding only tensors, strings and numbers: the
config, hierarchy and encoder config as JSON strings, the tokenizer's files as byte
tensors, the weights, and optionally the optimizer state. It is read back with
``torch.load(weights_only=True)``, which refuses any other pickled object.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from ktt_core.encoders import tokenizer_to_files
from ktt_core.errors import KttError
from ktt_core.files import atomic_path

FORMAT = "ktt-checkpoint"
VERSION = 1


def save_checkpoint(path: Path | str, model, optimizer_state: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Write ``model`` (and optimizer/training state, for resuming) to ``path`` atomically."""
    tokenizer_files = getattr(model, "_tokenizer_files", None) or tokenizer_to_files(model.tokenizer)
    model._tokenizer_files = tokenizer_files  # saved every epoch; serialise the tokenizer once
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.name,
        "config_json": json.dumps(model.config),
        "hierarchy_json": json.dumps(model.hierarchy.to_dict(), ensure_ascii=False),
        "encoder_config_json": model.encoder.config.to_json_string(),
        "tokenizer_files": {name: torch.frombuffer(bytearray(data), dtype=torch.uint8)
                            for name, data in tokenizer_files.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer_state,
        "training_json": json.dumps(training_state or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint safely; KttError names the file when it is missing or not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise KttError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise KttError(f"{path}: refused to load: not a plain-tensor checkpoint ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise KttError(f"{path}: not a readable checkpoint ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise KttError(f"{path}: not a KTT checkpoint")
    try:
        return {
            "path": str(path),
            "model": raw["model"],
            "config": json.loads(raw["config_json"]),
            "hierarchy": json.loads(raw["hierarchy_json"]),
            "encoder_config_json": raw["encoder_config_json"],
            "tokenizer_files": {k: bytes(v.numpy().tobytes()) for k, v in raw["tokenizer_files"].items()},
            "state_dict": raw["state_dict"],
            "optimizer": raw.get("optimizer"),
            "training": json.loads(raw.get("training_json") or "{}"),
        }
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise KttError(f"{path}: KTT checkpoint is incomplete or damaged ({exc})") from None
