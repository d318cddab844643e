"""Tokenized splits and padded batches.

Each split is tokenized once, in one fast-tokenizer call; batches are padded only to their
own longest text (dynamic padding) rather than to ``max_length``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ktt_core.data.cache import cache_key, load_or_compute
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
                 paths: Sequence[Sequence[str]] | None = None, cache_dir=None,
                 targets: np.ndarray | None = None) -> EncodedSplit:
    """Tokenize ``texts`` (and encode their label ``paths``, or take their per-level
    ``targets``, when known).

    With ``cache_dir`` the token ids are kept on disk, keyed by the tokenizer, the
    ``max_length`` and the texts, so a dataset is tokenized once across runs.
    """
    texts = list(texts)
    ids = tokenize(texts, tokenizer, max_length, cache_dir)
    if paths is not None:
        targets = hierarchy.encode_many(paths)
    elif targets is None:
        targets = np.full((len(texts), hierarchy.depth), -1, dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedSplit(texts, ids, targets, pad)


def tokenize(texts: list[str], tokenizer, max_length: int, cache_dir=None) -> list[list[int]]:
    if not texts:
        return []

    def compute() -> dict[str, torch.Tensor]:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return {"flat": torch.tensor([t for row in ids for t in row], dtype=torch.int32),
                "lengths": torch.tensor([len(row) for row in ids], dtype=torch.int64)}

    key = None
    if cache_dir is not None:
        key = cache_key(tokenizer_fingerprint(tokenizer), max_length, "\0".join(texts))
    stored = load_or_compute(cache_dir, "tokens", key, compute)
    flat = stored["flat"].tolist()
    ends = np.cumsum(stored["lengths"].numpy()).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def tokenizer_fingerprint(tokenizer) -> str:
    """What determines a tokenizer's output (its truncation/padding state excluded,
    as calling it with other settings changes that state)."""
    if hasattr(tokenizer, "backend_tokenizer"):
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        return json.dumps(state, sort_keys=True)
    return repr(sorted(tokenizer.get_vocab().items()))


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


class LengthGroupedBatches(Sampler):
    """Training batches of similar length, in a fresh random order every epoch.

    Rows are shuffled, cut into pools of ``pool`` batches, sorted by length inside each pool
    and batched; the batches are shuffled again. Padding shrinks to a few tokens per row
    while every batch still mixes random rows. With ``world > 1`` each process takes every
    ``world``-th row of the shuffle, so every row is seen exactly once per epoch across
    processes (no padding rows as DistributedSampler would add).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool = True,
                 rank: int = 0, world: int = 1, pool: int = 50):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_by_length, self.rank, self.world, self.pool = group_by_length, rank, world, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = rng.permutation(len(self.lengths))[self.rank::self.world]
        if not self.group_by_length:
            return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        batches = []
        chunk = self.batch_size * self.pool
        for start in range(0, len(rows), chunk):
            pool = rows[start:start + chunk]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        return -(-len(range(self.rank, len(self.lengths), self.world)) // self.batch_size)


def train_loader(split: EncodedSplit, batch_size: int, seed: int, group_by_length: bool = True,
                 rank: int = 0, world: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batches for one epoch; call ``loader.batch_sampler.set_epoch(e)`` before each epoch."""
    sampler = LengthGroupedBatches(split.lengths, batch_size, seed, group_by_length, rank, world)
    return DataLoader(split, batch_sampler=sampler, collate_fn=Collate(split), pin_memory=pin_memory)


#: On CPU an inference batch is cut where the next (longer) row would add more padding to
#: the rows already in it than this many tokens: about the fixed cost of one forward pass
#: there. A lone long text in a served batch of short ones then gets a pass of its own
#: instead of stretching every row to its length.
CPU_SPLIT_TOKENS = 64

#: Token positions an inference batch may hold (rows x its longest row), whatever
#: ``eval_batch_size`` says: 256 titles of 20 tokens fit in one batch, texts of 512 tokens
#: go 32 at a time, so a large batch size is safe for long texts too.
MAX_EVAL_TOKENS = 16384


def eval_batches(lengths: np.ndarray, batch_size: int, rank: int = 0, world: int = 1,
                 split_tokens: int | None = None, max_tokens: int = MAX_EVAL_TOKENS) -> list[list[int]]:
    """Row indices in batches sorted by length (order does not matter for inference, padding
    does), at most ``batch_size`` rows and ``max_tokens`` token positions each (one row
    always fits); with ``split_tokens`` a batch also ends where the next row would pad the
    batch's rows by more than that many tokens in all. With ``world > 1``, this process's
    share of the rows."""
    order = np.argsort(lengths, kind="stable")[rank::world]
    batches, current, longest = [], [], 0
    for row in order.tolist():
        length = int(lengths[row])
        if current and (len(current) == batch_size or (len(current) + 1) * length > max_tokens
                        or (split_tokens is not None and len(current) * (length - longest) > split_tokens)):
            batches.append(current)
            current = []
        current.append(row)
        longest = length
    if current:
        batches.append(current)
    return batches


def eval_loader(split: EncodedSplit, batch_size: int, rank: int = 0, world: int = 1,
                pin_memory: bool = False, split_tokens: int | None = None) -> DataLoader:
    """A DataLoader over :func:`eval_batches` of ``split``."""
    batches = eval_batches(split.lengths, batch_size, rank, world, split_tokens)
    return DataLoader(split, batch_sampler=batches, collate_fn=Collate(split), pin_memory=pin_memory)
