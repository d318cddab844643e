"""Sparse hierarchy ops agree with the dense R and M of the original KTT."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ktt_core.hierarchy import Hierarchy
from ktt_core.ops import leaves_to_levels, max_over_descendants, multi_hot

labels = st.sampled_from(list("abcde"))
paths = st.lists(st.lists(labels, min_size=1, max_size=3).map(tuple), min_size=1, max_size=15)


@settings(max_examples=40, deadline=None)
@given(paths, st.integers(0, 2**31 - 1))
def test_ops_match_dense_matrices(paths, seed):
    h = Hierarchy.from_paths(paths)
    g = torch.Generator().manual_seed(seed)
    leaf_values = torch.rand((3, h.n_leaves), generator=g)
    R = torch.as_tensor(h.R())
    for reduce, dense in (("amax", (leaf_values[:, :, None] * R).amax(1)),
                          ("sum", leaf_values @ R)):
        sparse = torch.cat(leaves_to_levels(leaf_values, torch.as_tensor(h.leaf_ancestors), h.level_sizes, reduce), 1)
        assert torch.allclose(sparse, dense, atol=1e-6)
    values = torch.rand((3, h.n_classes), generator=g)
    M = torch.as_tensor(h.M())
    per_level = [values[:, h.level_offsets[d]:h.level_offsets[d + 1]] for d in range(h.depth)]
    parents = [None] + [torch.as_tensor(h.parent_of[d]) for d in range(1, h.depth)]
    assert torch.allclose(torch.cat(max_over_descendants(per_level, parents), 1),
                          (values[:, None, :] * M).amax(2))
    targets = torch.as_tensor(h.encode_many(paths[:3]))
    assert torch.equal(multi_hot(targets, h.level_offsets), torch.as_tensor(h.R())[targets[:, -1]])
