"""Tensor operations over the hierarchy that several heads need, without dense R or M.

Dense (leaves x classes) or (classes x classes) matrices grow quadratically; with thousands
of classes they exhaust memory. These use index gathers and scatters instead: memory is
linear in the number of classes.
"""
from __future__ import annotations

import torch


def multi_hot(targets: torch.Tensor, level_offsets: list[int]) -> torch.Tensor:
    """(batch, n_classes) 0/1 targets over all levels from (batch, depth) local class ids."""
    out = torch.zeros((targets.shape[0], level_offsets[-1]), device=targets.device)
    offsets = torch.as_tensor(level_offsets[:-1], device=targets.device)
    out.scatter_(1, targets + offsets, 1.0)
    return out


def leaves_to_levels(leaf_values: torch.Tensor, leaf_ancestors: torch.Tensor, level_sizes: list[int],
                     reduce: str = "amax") -> list[torch.Tensor]:
    """Per level, (batch, n_d): ``reduce`` ("amax" or "sum") of the values of the leaves under each class."""
    out = []
    for d, size in enumerate(level_sizes):
        index = leaf_ancestors[:, d].expand(leaf_values.shape[0], -1)
        init = torch.zeros((leaf_values.shape[0], size), dtype=leaf_values.dtype, device=leaf_values.device)
        out.append(init.scatter_reduce(1, index, leaf_values, reduce=reduce, include_self=False))
    return out


def max_over_descendants(values: list[torch.Tensor], parent_index: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Per level, each class's maximum over itself and all its descendants (bottom-up).

    ``parent_index[d]`` maps level ``d``'s classes to their parents in level ``d-1``
    (``None`` for the top level). This is C-HMCNN's max constraint module.
    """
    out = [None] * len(values)
    out[-1] = values[-1]
    for d in range(len(values) - 1, 0, -1):
        index = parent_index[d].expand(values[d].shape[0], -1)
        below = values[d - 1].scatter_reduce(1, index, out[d], reduce="amax", include_self=True)
        out[d - 1] = below
    return out
