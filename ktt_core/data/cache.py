"""A small on-disk cache of tensors (token ids, frozen encoder features) per dataset.

Entries are plain-tensor files keyed by a hash of everything they depend on, written
atomically and read with ``weights_only=True``; an unreadable entry is recomputed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch

from ktt_core.files import atomic_path


def cache_key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def load_or_compute(cache_dir: Path | None, name: str, key: str,
                    compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The cached dict of tensors for ``name``/``key``, computing and storing it if absent."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged entry is only a cache miss
            path.unlink(missing_ok=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value
