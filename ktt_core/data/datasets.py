"""Imported datasets: cleaning, splitting, and the files under ``datasets/NAME/``.

A dataset folder holds ``train.parquet``, ``val.parquet``, ``test.parquet`` (columns
``text`` and ``path``, a list of labels coarse to fine), ``hierarchy.json`` built from all
rows, and ``import.json`` recording the source, options and the import report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ktt_core.data.importers import ImportResult
from ktt_core.errors import KttError
from ktt_core.files import atomic_directory
from ktt_core.hierarchy import Hierarchy

SPLITS = ("train", "val", "test")


@dataclass
class ImportReport:
    rows_read: int
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> rows
    padded_short_paths: int = 0
    # Rows whose path ends at a node that also has children ("Food" beside "Food > Fruit"):
    # kept, as a leaf class of their own under that node (see docs/bad-inputs.md).
    inner_node_paths: int = 0
    inner_node_example: str = ""
    long_texts: int = 0              # texts over importers.LONG_TEXT_CHARS characters (kept)
    longest_text: list[int] = field(default_factory=lambda: [0, 0])  # [source row, characters]
    split_rows: dict[str, int] = field(default_factory=dict)
    classes_per_level: list[int] = field(default_factory=list)
    stratified: bool = False


def clean(result: ImportResult, keep_duplicates: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop repeated (text, path) rows, and texts that carry conflicting paths.

    A text labelled two ways cannot be learned as both; all of its rows are dropped and
    counted so the user can fix the source.
    """
    df = pd.DataFrame({"text": result.texts, "path": [tuple(p) for p in result.paths]})
    dropped = dict(result.dropped)
    if keep_duplicates or df.empty:
        return df, dropped
    paths_per_text = df.groupby("text")["path"].nunique()
    conflicting = df["text"].isin(paths_per_text.index[paths_per_text > 1])
    if conflicting.any():
        dropped["conflicting labels for the same text"] = int(conflicting.sum())
        df = df[~conflicting]
    repeated = df.duplicated(["text", "path"])
    if repeated.any():
        dropped["duplicate text and label"] = int(repeated.sum())
        df = df[~repeated]
    return df.reset_index(drop=True), dropped


def split_indices(leaf_keys: list, ratios: tuple[float, float, float], seed: int,
                  method: str = "stratified") -> tuple[dict[str, np.ndarray], bool]:
    """Row indices per split, and whether stratification was used.

    ``random``: shuffle with ``numpy.random.default_rng(seed)`` and cut by ratios (the
    split of the peer baselines). ``stratified``: each path with enough rows for every
    split is cut in proportion; rarer paths are pooled and cut at random, so no class is
    forced into a split it is too small for.
    """
    rng = np.random.default_rng(seed)
    n = len(leaf_keys)
    if method == "random":
        perm = rng.permutation(n)
        a, b = int(ratios[0] * n), int((ratios[0] + ratios[1]) * n)
        return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}, False
    smallest = min(r for r in ratios[1:] if r > 0) if any(ratios[1:]) else 1.0
    min_rows = int(np.ceil(1 / smallest))
    groups: dict = {}
    for i, key in enumerate(leaf_keys):
        groups.setdefault(key, []).append(i)
    parts = {s: [] for s in SPLITS}
    pooled = []
    for key in sorted(groups, key=str):
        rows = np.array(groups[key])
        if len(rows) < min_rows:
            pooled.extend(rows.tolist())
            continue
        rows = rng.permutation(rows)
        n_test, n_val = int(round(len(rows) * ratios[2])), int(round(len(rows) * ratios[1]))
        parts["test"].extend(rows[:n_test])
        parts["val"].extend(rows[n_test:n_test + n_val])
        parts["train"].extend(rows[n_test + n_val:])
    pooled = rng.permutation(np.array(pooled, dtype=np.int64))
    a, b = int(ratios[0] * len(pooled)), int((ratios[0] + ratios[1]) * len(pooled))
    for name, chunk in zip(SPLITS, (pooled[:a], pooled[a:b], pooled[b:])):
        parts[name].extend(chunk.tolist())
    return {s: rng.permutation(np.array(v, dtype=np.int64)) for s, v in parts.items()}, True


def write_dataset(directory: Path, result: ImportResult, *, ratios=(0.8, 0.1, 0.1), seed: int = 0,
                  split: str = "stratified", keep_duplicates: bool = False, depth: int | None = None,
                  force: bool = False, options: dict | None = None) -> ImportReport:
    """Clean, split and write a dataset folder atomically; returns the import report."""
    if directory.exists() and not force:
        raise KttError(f"dataset '{directory.name}' already exists in {directory.parent}; "
                       "pass --force to replace it")
    df, dropped = clean(result, keep_duplicates)
    if df.empty:
        raise KttError(f"{result.source}: no usable rows left after cleaning ({_reasons(dropped)})")
    hierarchy = Hierarchy.from_paths(df["path"], depth=depth)
    report = ImportReport(rows_read=result.total_rows, kept=len(df), dropped=dropped,
                          classes_per_level=hierarchy.level_sizes)
    report.padded_short_paths = int((df["path"].map(len) < hierarchy.depth).sum())
    inner = {p[:k] for p in set(df["path"]) for k in range(1, len(p))}
    at_inner = df["path"].isin(inner) if inner else pd.Series(False, index=df.index)
    report.inner_node_paths = int(at_inner.sum())
    if report.inner_node_paths:
        report.inner_node_example = " > ".join(df["path"][at_inner].iloc[0])
    report.long_texts, report.longest_text = result.long_texts, list(result.longest_text)
    indices, report.stratified = split_indices(df["path"].tolist(), ratios, seed, split)
    # Tables are built before any folder is made, so a value Arrow cannot store fails
    # with nothing written.
    tables = {}
    for name in SPLITS:
        part = df.iloc[indices[name]]
        report.split_rows[name] = len(part)
        tables[name] = pd.DataFrame({"text": part["text"].tolist(), "path": [list(p) for p in part["path"]]})
        try:
            tables[name] = pa.Table.from_pandas(tables[name], preserve_index=False)
        except (pa.ArrowException, UnicodeError, ValueError, TypeError) as exc:
            raise KttError(f"{result.source}: cannot store the rows as Parquet ({' '.join(str(exc).split())[:200]})") from None
    with atomic_directory(directory, replace=force) as tmp:
        for name in SPLITS:
            pq.write_table(tables[name], tmp / f"{name}.parquet")
        hierarchy.save(tmp / "hierarchy.json")
        record = {"source": result.source, "options": options or {}, "report": report.__dict__}
        (tmp / "import.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _reasons(dropped: dict[str, int]) -> str:
    return "; ".join(f"{n} {why}" for why, n in dropped.items()) or "no rows"


class Dataset:
    """An imported dataset folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.name = self.directory.name
        self.hierarchy = Hierarchy.load(self.directory / "hierarchy.json")

    def split(self, name: str) -> pd.DataFrame:
        """One split's rows (``text``, ``path`` as a tuple); KttError names the file when it is
        unreadable, lacks a column, or holds a row that does not fit ``hierarchy.json``."""
        path = self.directory / f"{name}.parquet"
        if not path.is_file():
            raise KttError(f"dataset '{self.name}': missing {path.name}; re-import it")
        try:
            df = pd.read_parquet(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise KttError(f"{path}: cannot read as Parquet ({' '.join(str(exc).split())[:200]}); "
                           "re-import the dataset") from None
        missing = [c for c in ("text", "path") if c not in df.columns]
        if missing:
            raise KttError(f"{path}: no column '{missing[0]}' (a dataset split holds 'text' and 'path'); "
                           "re-import the dataset")
        known = {self.hierarchy.node_path(self.hierarchy.depth - 1, i) for i in range(self.hierarchy.n_leaves)}
        paths = []
        for row, (text, labels) in enumerate(zip(df["text"], df["path"]), 1):
            if not isinstance(text, str) or not text.strip():
                raise KttError(f"{path}: row {row}, column 'text': expected a non-empty string; re-import the dataset")
            if not isinstance(labels, (list, tuple, np.ndarray)) or not all(isinstance(x, str) for x in labels):
                raise KttError(f"{path}: row {row}, column 'path': expected a list of labels; re-import the dataset")
            labels = tuple(labels)
            if labels[: self.hierarchy.depth] not in known:
                raise KttError(f"{path}: row {row}: label path {' > '.join(labels)!r} is not in "
                               f"{self.directory / 'hierarchy.json'}; re-import the dataset")
            paths.append(labels)
        df["path"] = paths
        return df
