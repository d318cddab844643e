"""Single-file checkpoints that load without unpickling arbitrary objects, and whose
content is verified on every load.

A checkpoint is a ``torch.save`` file holding only tensors, strings, numbers and bytes:
the model's name, its config and hierarchy as JSON strings, the model's own ``state``
(:meth:`ktt_core.contract.Model.state`: for an encoder model the encoder config, the
tokenizer's files and the weights; for a scikit-learn model its vocabulary and
coefficient arrays; numpy arrays are stored as tensors), and optionally the optimizer
state and what a resumed run needs (scheduler, RNG states, the position inside an
epoch). It is read back with ``torch.load(weights_only=True)``, which refuses any other
pickled object, whatever framework the model uses.

Integrity: the entry ``"sha256"`` is the SHA-256 of a canonical serialization of every
other entry (:func:`content_digest`): type tags, dict keys in sorted order, the dtype,
shape and raw bytes of each tensor, exact float values. It is independent of how
``torch.save`` lays out its zip file, so it is computed from the objects on save and
again from the loaded objects on load; any flipped byte in the weights, the optimizer
state or the JSON strings changes it. (``torch.load`` itself does not check the zip's
CRCs: a damaged tensor loads silently.) Version-1 checkpoints, written before the hash
existed, carry no ``"sha256"`` and are accepted unverified; from version 2 on the hash
is required. Versions 1 and 2 kept an encoder model's state at the top level; they load as
version 3 does.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

import numpy as np

from ktt_core.errors import KttError
from ktt_core.files import atomic_path

FORMAT = "ktt-checkpoint"
VERSION = 3          # 3: the model's own "state"; 2: adds "sha256" (and "resume"); 1: no hash
HASHED_SINCE = 2
#: Where versions 1 and 2 kept an encoder model's state: at the top level.
LEGACY_STATE = ("encoder_config_json", "tokenizer_files", "state_dict")


def save_checkpoint(path: Path | str, model, optimizer_state: dict | None = None,
                    training_state: dict | None = None, resume_state: dict | None = None) -> Path:
    """Write ``model`` (any :class:`ktt_core.contract.Model`) and, for resuming, optimizer and
    training state to ``path`` atomically.

    ``training_state`` is JSON (epoch, step, best score, ...); ``resume_state`` holds what
    JSON cannot: scheduler state, RNG state tensors, the running loss of a part-done epoch.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.name,
        "config_json": json.dumps(model.config),
        "hierarchy_json": json.dumps(model.hierarchy.to_dict(), ensure_ascii=False),
        "state": _storable(model.state()),
        # On CPU so the file loads anywhere and hashes without device copies;
        # Optimizer.load_state_dict moves the state back to its parameters' device.
        "optimizer": _to_cpu(optimizer_state),
        "training_json": json.dumps(training_state or {}),
        "resume": _to_cpu(resume_state),
        "calibration_json": json.dumps(_calibration_dict(model)),
    }
    return _write(path, payload)


def _calibration_dict(model) -> dict | None:
    calibration = getattr(model, "calibration", None)
    return None if calibration is None else calibration.to_dict()


def set_calibration(path: Path | str, calibration) -> Path:
    """Store ``calibration`` (a :class:`ktt_core.calibration.Calibration`) in the checkpoint
    at ``path``, which is verified first and replaced atomically, hash renewed."""
    path = Path(path)
    load_checkpoint(path)  # one-line errors for a missing, unsafe or damaged file
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload.pop("sha256", None)
    payload["version"] = max(int(payload.get("version", 1)), HASHED_SINCE)
    payload["calibration_json"] = json.dumps(calibration.to_dict())
    return _write(path, payload)


def _write(path: Path | str, payload: dict) -> Path:
    payload["sha256"] = content_digest(payload)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _Writer(fh)
        try:
            torch.save(payload, writer)
        except RuntimeError:
            # torch reports a failed write (disk full, file size limit) as an opaque
            # RuntimeError; raise the OSError underneath, which names the problem.
            if writer.error is not None:
                raise writer.error from None
            raise
    return Path(path)


class _Writer:
    """A file for ``torch.save`` that keeps the OSError of a failed write."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()

    @property
    def name(self) -> str:
        return self.fh.name


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
            "state": raw["state"] if "state" in raw else {k: raw[k] for k in LEGACY_STATE},
            "optimizer": raw.get("optimizer"),
            "training": json.loads(raw.get("training_json") or "{}"),
            "resume": raw.get("resume"),
            "calibration": json.loads(raw.get("calibration_json") or "null"),
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


def _storable(value):
    """``value`` with numpy arrays as tensors and bytes as uint8 tensors (what ``weights_only``
    loads), tensors on the CPU; anything else must be a string, number, bool or None."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("a checkpoint cannot hold numpy arrays of Python objects")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8) if value else torch.empty(0, dtype=torch.uint8)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value


def hierarchy_and_config(spec, checkpoint: dict[str, Any]):
    """The hierarchy and the config a loaded checkpoint holds, both checked (a checkpoint may
    come from elsewhere: its config is validated like a config file). For ``from_state``."""
    from ktt_core.config import resolve_config
    from ktt_core.hierarchy import Hierarchy

    path = checkpoint["path"]
    return Hierarchy.from_dict(checkpoint["hierarchy"], source=path), resolve_config(spec, [(path, checkpoint["config"])])


def as_numpy(value, path: str, what: str, dtype=None, ndim: int | None = None) -> np.ndarray:
    """A stored tensor as a numpy array; KttError naming the file when it is not one of the
    expected shape (a checkpoint may come from elsewhere)."""
    if not isinstance(value, torch.Tensor) or (ndim is not None and value.dim() != ndim):
        raise KttError(f"{path}: checkpoint entry {what} is not a {ndim}-d array")
    array = value.numpy()
    return array.astype(dtype, copy=False) if dtype is not None else array


def as_bytes(value: torch.Tensor) -> bytes:
    """Bytes stored by :func:`save_checkpoint` (as a uint8 tensor)."""
    return bytes(value.numpy().tobytes())


def _to_cpu(value):
    """``value`` with every tensor moved to the CPU (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
