"""Property-based tests of the importer and the hierarchy builder (hypothesis).

Examples are kept small (a few dozen rows, a few levels) so the file runs in well under a
minute on two cores.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ktt_core.data.datasets import SPLITS, clean, write_dataset
from ktt_core.data.importers import extract_records, read_table
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy, format_path

SMALL = settings(max_examples=40, deadline=None)

# -- strategies ---------------------------------------------------------------------------------

SEPARATORS = [" > ", ">", "/", " | ", " :: ", "→", ";"]
_SEP_CHARS = set("".join(SEPARATORS))
# Letters of any script, digits, spaces and punctuation that CSV must quote; no control
# characters or surrogates, nothing a separator uses, no "[" (a JSON-list label).
_label_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
                             blacklist_characters="".join(_SEP_CHARS) + "[\ufeff") | st.sampled_from(',"\' &-')
_label = st.text(_label_chars, min_size=1, max_size=8).map(str.strip).filter(bool)
_text_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff") \
    | st.sampled_from(',"\'\n\t;[]')
_text = st.text(_text_chars, min_size=1, max_size=30).map(str.strip).filter(bool)
_padding = st.sampled_from(["", " ", "  ", "\t", "\u00a0"])


@st.composite
def tables(draw):
    """A table of (text, label string) rows, some of them invalid, with what each row should give.

    Returns (rows, sep, expected) where ``expected[i]`` is ``(text, path)`` for a valid row
    and the drop reason for an invalid one.
    """
    sep = draw(st.sampled_from(SEPARATORS))
    # A small pool of labels, so names repeat at several places in the tree.
    pool = draw(st.lists(_label, min_size=1, max_size=6, unique=True))
    n = draw(st.integers(1, 25))
    rows, expected = [], []
    for _ in range(n):
        path = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4)))
        text = draw(_text)
        kind = draw(st.sampled_from(["ok"] * 6 + ["empty text", "empty level", "missing label"]))
        pads = [(draw(_padding), draw(_padding)) for _ in path]
        labels = [a + label + b for label, (a, b) in zip(path, pads)]
        if kind == "empty level" and len(path) > 1:
            labels[draw(st.integers(0, len(path) - 2))] = draw(_padding)  # not the last: that is a trailing sep
        elif kind == "empty level":
            kind = "ok"
        cell = sep.join(labels)
        if kind == "empty text":
            text = draw(st.sampled_from(["", " ", "\t "]))
        if kind == "missing label":
            cell = draw(st.sampled_from(["", "  "]))
        rows.append((text, cell))
        expected.append((text, path) if kind == "ok" else
                        {"empty text": "empty text", "empty level": "empty label level",
                         "missing label": "missing label"}[kind])
    return rows, sep, expected


def _write(rows, folder: Path, fmt: str) -> Path:
    df = pd.DataFrame({"title": [t for t, _ in rows], "category": [c for _, c in rows]})
    path = folder / f"products.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def _import(path: Path, sep: str):
    return extract_records(read_table(path), text_column="title", label_columns=["category"], sep=sep,
                           drop_invalid=True, source=str(path))


def _dataset_rows(directory: Path) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    out = {}
    for name in SPLITS:
        df = pd.read_parquet(directory / f"{name}.parquet")
        out[name] = [(t, tuple(p)) for t, p in zip(df["text"], df["path"])]
    return out


# -- importer -------------------------------------------------------------------------------------

@SMALL
@given(tables())
def test_import_keeps_valid_rows_and_counts_the_rest(table):
    rows, sep, expected = table
    with tempfile.TemporaryDirectory() as tmp:
        result = _import(_write(rows, Path(tmp), "csv"), sep)
    assert result.total_rows == len(rows)
    assert len(result.texts) + sum(result.dropped.values()) == result.total_rows
    valid = [(i + 1, e) for i, e in enumerate(expected) if isinstance(e, tuple)]
    assert list(zip(result.texts, result.paths)) == [e for _, e in valid]
    assert result.source_rows == [row for row, _ in valid]
    reasons = {}
    for e in expected:
        if isinstance(e, str):
            reasons[e] = reasons.get(e, 0) + 1
    assert result.dropped == reasons


@SMALL
@given(tables(), st.sampled_from(["stratified", "random"]), st.integers(0, 2**32 - 1),
       st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (1.0, 0.0, 0.0), (0.6, 0.4, 0.0)]))
def test_written_dataset_is_complete_and_consistent(table, method, seed, ratios):
    rows, sep, expected = table
    assume(any(isinstance(e, tuple) for e in expected))
    with tempfile.TemporaryDirectory() as tmp:
        result = _import(_write(rows, Path(tmp), "csv"), sep)
        cleaned, _ = clean(result)
        if cleaned.empty:  # every text carried two paths: refused, nothing written
            with pytest.raises(KttError, match="no usable rows left"):
                write_dataset(Path(tmp) / "ds", result, ratios=ratios, seed=seed, split=method)
            assert sorted(p.name for p in Path(tmp).iterdir()) == ["products.csv"]
            return
        report = write_dataset(Path(tmp) / "ds", result, ratios=ratios, seed=seed, split=method)
        hierarchy = Hierarchy.load(Path(tmp) / "ds" / "hierarchy.json")
        written = _dataset_rows(Path(tmp) / "ds")
        record = json.loads((Path(tmp) / "ds" / "import.json").read_text(encoding="utf-8"))
        assert not [p.name for p in Path(tmp).iterdir() if p.name.startswith(".")]  # no temp folders left
    # rows kept + dropped == rows read, at every stage
    assert report.rows_read == len(rows)
    assert report.kept + sum(report.dropped.values()) == report.rows_read
    assert report.kept == len(cleaned)
    # the splits add up to the kept rows, and hold exactly them
    assert sum(report.split_rows.values()) == report.kept
    assert {k: len(v) for k, v in written.items()} == report.split_rows
    every = sorted(row for split in written.values() for row in split)
    assert every == sorted(zip(cleaned["text"], cleaned["path"]))
    if ratios[2] == 0 and method == "random":
        assert not written["test"]
    # every kept path is in the hierarchy, and reads back as itself
    for _, path in every:
        assert hierarchy.leaf_path(hierarchy.encode(path)[-1]) == path
    assert hierarchy.level_sizes == report.classes_per_level
    assert record["report"]["kept"] == report.kept


@settings(max_examples=25, deadline=None)
@given(tables(), st.integers(0, 1000))
def test_csv_parquet_and_jsonl_give_the_same_dataset(table, seed):
    rows, sep, expected = table
    assume(any(isinstance(e, tuple) for e in expected))
    datasets, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet", "jsonl"):
            folder = Path(tmp) / fmt
            folder.mkdir()
            result = results[fmt] = _import(_write(rows, folder, fmt), sep)
            assume(not clean(result)[0].empty)
            write_dataset(folder / "ds", result, seed=seed)
            datasets[fmt] = (_dataset_rows(folder / "ds"), (folder / "ds" / "hierarchy.json").read_text("utf-8"))
    first = results["csv"]
    for fmt in ("parquet", "jsonl"):
        other = results[fmt]
        assert (other.texts, other.paths, other.source_rows, other.dropped, other.total_rows) == \
            (first.texts, first.paths, first.source_rows, first.dropped, first.total_rows), fmt
        assert datasets[fmt] == datasets["csv"], fmt


# -- hierarchy ------------------------------------------------------------------------------------

_name = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=5).filter(str.strip)
_paths = st.lists(st.lists(st.sampled_from(["A", "B", "Accessories", "é", "x y"]) | _name,
                           min_size=1, max_size=4).map(tuple), min_size=1, max_size=25)


@SMALL
@given(_paths)
def test_json_round_trip_is_identity(paths):
    h = Hierarchy.from_paths(paths)
    data = json.loads(json.dumps(h.to_dict(), ensure_ascii=False))
    back = Hierarchy.from_dict(data, source="hierarchy.json")
    assert back.levels == h.levels and back.to_dict() == h.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        h.save(Path(tmp) / "hierarchy.json")
        assert Hierarchy.load(Path(tmp) / "hierarchy.json").levels == h.levels


@SMALL
@given(_paths)
def test_encode_then_decode_gives_the_path_back(paths):
    h = Hierarchy.from_paths(paths)
    for path in paths:
        ids = h.encode(path)
        assert h.leaf_path(ids[-1]) == path
        for d in range(h.depth):  # every level names the path's prefix (short paths: all of it)
            assert h.node_path(d, ids[d]) == path[: d + 1]
        assert h.is_consistent(ids[None, :])[0]
    assert {h.leaf_path(i) for i in range(h.n_leaves)} == set(paths)


@SMALL
@given(_paths)
def test_ancestors_chain_through_parent_of(paths):
    h = Hierarchy.from_paths(paths)
    assert (h.parent_of[0] == -1).all()
    for d in range(1, h.depth):
        for c, node in enumerate(h.levels[d]):
            assert h.levels[d - 1][h.parent_of[d][c]] == node[:-1]
    for leaf in range(h.n_leaves):
        chain = h.leaf_ancestors[leaf]
        assert chain[-1] == leaf
        for d in range(1, h.depth):
            assert h.parent_of[d][chain[d]] == chain[d - 1]
        assert h.levels[-1][leaf][: 1] == h.levels[0][chain[0]]


@SMALL
@given(_paths)
def test_R_and_M_agree_with_parent_of(paths):
    h = Hierarchy.from_paths(paths)
    R, M = h.R(), h.M()
    # ancestor-or-self, from parent_of alone
    expected = np.zeros((h.n_classes, h.n_classes), dtype=np.float32)
    for d in range(h.depth):
        for c in range(h.level_sizes[d]):
            k, up, a = h.level_offsets[d] + c, d, c
            while up >= 0:
                expected[h.level_offsets[up] + a, k] = 1
                a, up = (h.parent_of[up][a], up - 1) if up > 0 else (-1, -1)
    assert np.array_equal(M, expected)
    assert np.array_equal(R, M[:, h.level_offsets[-2]:].T)
    assert (R.sum(axis=1) == h.depth).all()
    assert (np.diag(M) == 1).all()


@SMALL
@given(st.lists(_name, min_size=2, max_size=4, unique=True), _name, st.lists(_paths, max_size=1))
def test_a_name_under_two_parents_stays_two_nodes(parents, child, extra):
    paths = [(p, child) for p in parents] + [p for group in extra for p in group]
    h = Hierarchy.from_paths(paths)
    nodes = [h.encode((p, child))[1] for p in parents]
    assert len(set(nodes)) == len(parents)  # one node per place
    assert len({h.parent_of[1][n] for n in nodes}) == len(parents)  # each under its own parent
    assert all(h.classes[1][n] == child for n in nodes)


@SMALL
@given(_paths, st.data())
def test_a_tampered_hierarchy_is_refused_by_field(paths, data):
    h = Hierarchy.from_paths(paths)
    assume(h.depth > 1)
    doc = h.to_dict()
    d = data.draw(st.integers(0, h.depth - 1), label="level")
    i = data.draw(st.integers(0, h.level_sizes[d] - 1), label="node")
    mutation = data.draw(st.sampled_from(["drop", "relabel", "retype", "duplicate"]), label="mutation")
    level = doc["levels"][d]
    if mutation == "drop":  # an inner node: its children lose their parent
        assume(d < h.depth - 1)
        del level[i]
    elif mutation == "relabel":  # move the node under a parent that does not exist
        assume(d > 0)
        level[i] = ["\u2603 no such parent", *level[i][1:]]
    elif mutation == "retype":
        level[i][-1] = 7
    else:
        level.append(list(level[i]))
    with pytest.raises(KttError) as info:
        Hierarchy.from_dict(doc, source="hierarchy.json")
    message = str(info.value)
    assert message.startswith("hierarchy.json: levels[") and "\n" not in message, message


def test_strategies_produce_variable_depth_and_repeated_names():
    """The hierarchy strategy reaches the cases the properties are about."""
    h = Hierarchy.from_paths([("A", "B"), ("C", "B"), ("A",), ("A", "B", "A")])
    assert h.depth == 3 and sorted(h.classes[1]).count("B") == 2
    assert format_path(h.levels[2][h.encode(("A",))[2]]) == "A"
