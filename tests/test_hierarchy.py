"""Hierarchy: ids, parents, R and M, variable depth, JSON round trip, validation."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy, format_path

PATHS = [("Food", "Fruit"), ("Food", "Bakery"), ("Home", "Kitchen"), ("Baby",),
         # the same name under two parents stays two nodes
         ("Home", "Accessories"), ("Toys", "Accessories")]


def test_levels_offsets_and_parents():
    h = Hierarchy.from_paths(PATHS)
    assert h.depth == 2
    assert h.classes[0] == ["Baby", "Food", "Home", "Toys"]
    assert h.level_sizes == [4, 6]
    assert h.level_offsets == [0, 4, 10]
    for leaf in range(h.n_leaves):
        path = h.leaf_path(leaf)
        parent = h.parent_of[1][leaf]
        assert h.classes[0][parent] == path[0]
    assert sorted(h.classes[1]).count("Accessories") == 2


def test_short_paths_are_padded_and_shown_without_padding():
    h = Hierarchy.from_paths(PATHS)
    ids = h.encode(("Baby",))
    assert h.leaf_path(ids[-1]) == ("Baby",)
    assert h.is_placeholder[h.level_offsets[1] + ids[1]]
    assert h.classes[1][ids[1]] == "Baby"
    assert format_path(h.levels[1][ids[1]]) == "Baby"


def test_R_and_M_mark_ancestors_and_descendants():
    h = Hierarchy.from_paths(PATHS)
    R, M = h.R(), h.M()
    assert R.shape == (h.n_leaves, h.n_classes) and M.shape == (h.n_classes, h.n_classes)
    assert (R.sum(1) == h.depth).all()  # each leaf: itself and one ancestor per level above
    food = h.classes[0].index("Food")
    fruit = h.n_leaves and int(h.encode(("Food", "Fruit"))[1])
    assert R[fruit, food] == 1 and R[fruit, h.level_offsets[1] + fruit] == 1
    assert M[food, h.level_offsets[1] + fruit] == 1 and M[h.level_offsets[1] + fruit, food] == 0
    assert (np.diag(M) == 1).all()
    # R is M's leaf columns seen from the leaf side
    assert np.array_equal(R, M[:, h.level_offsets[1]:].T)


def test_consistency_check():
    h = Hierarchy.from_paths(PATHS)
    good = h.encode(("Food", "Fruit"))
    bad = np.array([h.classes[0].index("Home"), good[1]])
    partial = np.array([good[0], -1])
    assert h.is_consistent(np.stack([good, bad, partial])).tolist() == [True, False, True]


def test_unknown_path_is_an_error():
    h = Hierarchy.from_paths(PATHS)
    with pytest.raises(KttError, match="'Food > Meat' is not in the hierarchy"):
        h.encode(("Food", "Meat"))


def test_json_round_trip(tmp_path):
    h = Hierarchy.from_paths(PATHS)
    h.save(tmp_path / "h.json")
    back = Hierarchy.load(tmp_path / "h.json")
    assert back.levels == h.levels and back.level_offsets == h.level_offsets


@pytest.mark.parametrize("data, message", [
    ({"levels": []}, "not a KTT hierarchy"),
    ({"format": "ktt-hierarchy", "levels": []}, "hierarchy.json: levels: must not be empty"),
    ({"format": "ktt-hierarchy", "levels": [[["A"]], [["B", "x"]]]}, "has no parent"),
    ({"format": "ktt-hierarchy", "levels": [[["A"], ["A"]]]}, "lists a path twice"),
    ({"format": "ktt-hierarchy", "levels": [[["A", "B"]]]}, "expected a path of 1 labels"),
    # schema: the file and the field are named
    ({"format": "ktt-hierarchy", "levels": [[["A"]], [["A", "x"], ["A", 3]]]},
     "hierarchy.json: levels[1][1][1]: expected a string, got an integer"),
    ({"format": "ktt-hierarchy", "levels": [[["A"]]], "parents": {}}, "hierarchy.json: unknown field 'parents'"),
    ({"format": "ktt-hierarchy", "levels": [[["A"]]], "depth": "1"}, "hierarchy.json: depth: expected an integer"),
    ({"format": "ktt-hierarchy", "levels": [[["A"]]], "placeholder": "-"}, 'placeholder: expected ""'),
    # tree rules
    ({"format": "ktt-hierarchy", "levels": [[["A"], ["B"]], [["A", "x"]]]}, "'B' has no child at level 2"),
    ({"format": "ktt-hierarchy", "levels": [[["A"]], [["A", ""]], [["A", "", "x"]]]}, "after a placeholder"),
    ({"format": "ktt-hierarchy", "levels": [[[" "]]]}, "levels[0][0][0]: blank label"),
])
def test_invalid_hierarchy_json_is_refused(tmp_path, data, message):
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KttError, match=re.escape(message)):
        Hierarchy.load(path)


def test_short_paths_and_repeated_names_pass_validation():
    h = Hierarchy.from_paths(PATHS + [("Baby", "Baby")])
    assert Hierarchy.from_dict(h.to_dict()).levels == h.levels


labels = st.text(alphabet="abcxyz &,", min_size=1, max_size=6).filter(lambda s: s.strip())
paths = st.lists(st.lists(labels, min_size=1, max_size=4).map(tuple), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(paths)
def test_every_path_encodes_and_decodes_to_itself(paths):
    h = Hierarchy.from_paths(paths)
    for path in paths:
        ids = h.encode(path)
        assert h.leaf_path(ids[-1]) == path
        assert h.is_consistent(ids[None, :])[0]
        assert tuple(h.leaf_ancestors[ids[-1]]) == tuple(ids)
    assert Hierarchy.from_dict(json.loads(json.dumps(h.to_dict()))).levels == h.levels
