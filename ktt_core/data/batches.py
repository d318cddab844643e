"""Tokenized splits and padded batches.

Each split is tokenized once, in one fast-tokenizer call; batches are padded only to their
own longest text (dynamic padding) rather than to ``max_length``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ktt_core.hierarchy import Hierarchy


@dataclass
class EncodedSplit(Dataset):
    """Token ids and per-level targets of one split, ready for batching."""

    texts: list[str]
    input_ids: list[list[int]]
    targets: np.ndarray  # (N, depth) local class ids; -1 where unknown (prediction only)
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> int:
        return i  # collate gathers rows by index, avoiding per-row tensor work

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def encode_texts(texts: Sequence[str], tokenizer, max_length: int, hierarchy: Hierarchy,
                 paths: Sequence[Sequence[str]] | None = None) -> EncodedSplit:
    """Tokenize ``texts`` (and encode their label ``paths``, when known)."""
    texts = list(texts)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    if paths is None:
        targets = np.full((len(texts), hierarchy.depth), -1, dtype=np.int64)
    else:
        targets = hierarchy.encode_many(paths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedSplit(texts, ids, targets, pad)


class Collate:
    """Pad a list of row indices of ``split`` into a batch of tensors."""

    def __init__(self, split: EncodedSplit):
        self.split = split

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self.split.input_ids[i] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.split.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.as_tensor(seq)
            mask[r, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "targets": torch.from_numpy(self.split.targets[rows]), "rows": torch.as_tensor(rows)}


class LengthSortedSampler(Sampler):
    """Batches of similar length, for inference: order does not matter, padding does."""

    def __init__(self, split: EncodedSplit):
        self.order = np.argsort(split.lengths, kind="stable").tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def train_loader(split: EncodedSplit, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split, batch_size=batch_size, shuffle=True, generator=generator,
                      collate_fn=Collate(split))


def eval_loader(split: EncodedSplit, batch_size: int) -> DataLoader:
    return DataLoader(split, batch_size=batch_size, sampler=LengthSortedSampler(split),
                      collate_fn=Collate(split))
