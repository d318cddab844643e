"""Single-file checkpoints that load without unpickling arbitrary objects, and whose
content is verified on every load.

A checkpoint is a ``torch.save`` file holding only tensors, strings and numbers: the
config, hierarchy and encoder config as JSON strings, the tokenizer's files as byte
tensors, the weights, and optionally the optimizer state and what a resumed run needs
(scheduler, RNG states, the position inside an epoch). It is read back with
``torch.load(weights_only=True)``, which refuses any other pickled object.

Integrity: the entry ``"sha256"`` is the SHA-256 of a canonical serialization of every
other entry (:func:`content_digest`): type tags, dict keys in sorted order, the dtype,
shape and raw bytes of each tensor, exact float values. It is independent of how
``torch.save`` lays out its zip file, so it is computed from the objects on save and
again from the loaded objects on load; any flipped byte in the weights, the optimizer
state or the JSON strings changes it. (``torch.load`` itself does not check the zip's
CRCs: a damaged tensor loads silently.) Version-1 checkpoints, written before the hash
existed, carry no ``"sha256"`` and are accepted unverified; from version 2 on the hash
is required.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ktt_core.encoders import tokenizer_to_files
from ktt_core.errors import KttError
from ktt_core.files import atomic_path

FORMAT = "ktt-checkpoint"
VERSION = 2          # 2: adds "sha256" (and "resume"); 1: no content hash
HASHED_SINCE = 2


def save_checkpoint(path: Path | str, model, optimizer_state: dict | None = None,
                    training_state: dict | None = None, resume_state: dict | None = None) -> Path:
    """Write ``model`` (and optimizer/training state, for resuming) to ``path`` atomically.

    ``training_state`` is JSON (epoch, step, best score, ...); ``resume_state`` holds what
    JSON cannot: scheduler state, RNG state tensors, the running loss of a part-done epoch.
    """
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
        # On CPU so the file loads anywhere and hashes without device copies;
        # Optimizer.load_state_dict moves the state back to its parameters' device.
        "optimizer": _to_cpu(optimizer_state),
        "training_json": json.dumps(training_state or {}),
        "resume": _to_cpu(resume_state),
    }
    payload["sha256"] = content_digest(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint safely and verify its content hash.

    KttError names the file when it is missing, not one of ours, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise KttError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long and styled for terminals; keep its first plain line.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        first = text.splitlines()[0] if text else "unsafe content"
        raise KttError(f"{path}: refused to load: it holds objects other than tensors and strings, "
                       f"which could run code ({first[:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        # A truncated or mangled zip lands here (e.g. "failed finding central directory").
        raise KttError(f"{path}: checkpoint is corrupt or truncated, cannot read it "
                       f"({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise KttError(f"{path}: not a KTT checkpoint")
    verify(path, raw)
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
            "resume": raw.get("resume"),
        }
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise KttError(f"{path}: KTT checkpoint is incomplete or damaged ({exc})") from None


def verify(path: Path, raw: dict) -> None:
    """Check ``raw``'s content hash; legacy (version 1) checkpoints without one pass."""
    stored = raw.get("sha256")
    if stored is None:
        version = raw.get("version")
        if isinstance(version, int) and version < HASHED_SINCE:
            return
        raise KttError(f"{path}: checkpoint is corrupt (content hash missing)")
    try:
        actual = content_digest({k: v for k, v in raw.items() if k != "sha256"})
    except TypeError:
        actual = None  # an entry of a type we never write: the content was altered
    if actual != stored:
        raise KttError(f"{path}: checkpoint is corrupt (content hash mismatch)")


def content_digest(payload: dict) -> str:
    """SHA-256 hex digest of a canonical serialization of ``payload``.

    Each value is written with a type tag and its length, so that no two different
    structures serialize alike; lists and tuples are one kind (pickling may turn one
    into the other), dict keys are sorted, floats are written exactly (``float.hex``).
    """
    hasher = hashlib.sha256()
    _feed(hasher, payload)
    return hasher.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        _tagged(h, b"T", f"{t.dtype}{tuple(t.shape)}".encode())
        data = t.reshape(-1).view(torch.uint8).numpy()  # raw bytes, any dtype (bf16 too)
        h.update(len(data).to_bytes(8, "little"))
        h.update(memoryview(data))
    elif isinstance(value, dict):
        keys = sorted(value, key=lambda k: (type(k).__name__, repr(k)))
        h.update(b"D" + len(keys).to_bytes(8, "little"))
        for key in keys:
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"L" + len(value).to_bytes(8, "little"))
        for item in value:
            _feed(h, item)
    elif value is None:
        h.update(b"N")
    elif isinstance(value, bool):  # before int: bool is an int subclass
        h.update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        _tagged(h, b"I", str(int(value)).encode())
    elif isinstance(value, float):
        _tagged(h, b"F", float(value).hex().encode())
    elif isinstance(value, str):
        _tagged(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        _tagged(h, b"Y", bytes(value))
    else:
        raise TypeError(f"cannot hash a {type(value).__name__} in a checkpoint")


def _tagged(h, tag: bytes, data: bytes) -> None:
    h.update(tag + len(data).to_bytes(8, "little") + data)


def _to_cpu(value):
    """``value`` with every tensor moved to the CPU (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
