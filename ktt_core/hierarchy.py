"""The label hierarchy: classes per level, their parents, and the matrices models need.

A node is identified by its full path from the root, so the same name may sit at two
levels or under two parents ("Accessories" under "Phones" and under "Cameras") without
being merged. Classes of all levels are numbered in one global vector, level ``d``
occupying ``[level_offsets[d], level_offsets[d + 1])``.

Variable depth (policy ``pad``, the default): a path shorter than the hierarchy's depth is
padded with a placeholder node under its last real node, one per missing level, so every
leaf sits at the last level and leaf-level models see every row. Placeholders are named
by :data:`PAD` and stripped again whenever a path is shown or scored by hierarchical
metrics (``Baby`` stays ``Baby``, not ``Baby > Baby``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ktt_core.errors import KttError

#: Label of the placeholder node that pads a short path; real labels are never empty.
PAD = ""
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """Levels of node paths, coarse to fine; built with :meth:`from_paths`."""

    levels: tuple[tuple[tuple[str, ...], ...], ...]

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str]], depth: int | None = None) -> "Hierarchy":
        """Build from label paths; short paths are padded to ``depth`` (default: deepest)."""
        paths = [tuple(p) for p in paths]
        if not paths:
            raise KttError("cannot build a hierarchy from no label paths")
        for path in paths:
            if not path or any(not isinstance(x, str) or not x.strip() for x in path):
                raise KttError(f"invalid label path {list(path)!r}: every level needs a non-empty label")
        depth = depth or max(len(p) for p in paths)
        nodes: list[set[tuple[str, ...]]] = [set() for _ in range(depth)]
        for path in paths:
            padded = pad_path(path[:depth], depth)
            for d in range(depth):
                nodes[d].add(padded[: d + 1])
        return cls(tuple(tuple(sorted(level)) for level in nodes))

    # -- shape ----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.levels)

    @cached_property
    def level_sizes(self) -> list[int]:
        return [len(level) for level in self.levels]

    @cached_property
    def level_offsets(self) -> list[int]:
        """Start of each level in the global class vector, plus the total at the end."""
        return [0, *np.cumsum(self.level_sizes).tolist()]

    @property
    def n_classes(self) -> int:
        return self.level_offsets[-1]

    def split_levels(self, scores):
        """(N, n_classes) scores of all levels side by side -> one (N, n_d) block per level."""
        return [scores[:, self.level_offsets[d]:self.level_offsets[d + 1]] for d in range(self.depth)]

    @property
    def n_leaves(self) -> int:
        return self.level_sizes[-1]

    @cached_property
    def classes(self) -> list[list[str]]:
        """Display name of every class, per level (a placeholder shows its parent's name)."""
        return [[display_label(node) for node in level] for level in self.levels]

    @cached_property
    def _index(self) -> list[dict[tuple[str, ...], int]]:
        return [{node: i for i, node in enumerate(level)} for level in self.levels]

    @cached_property
    def parent_of(self) -> list[np.ndarray]:
        """``parent_of[d][c]``: index in level ``d-1`` of class ``c`` of level ``d`` (level 0: -1)."""
        out = [np.full(self.level_sizes[0], -1, dtype=np.int64)]
        for d in range(1, self.depth):
            up = self._index[d - 1]
            out.append(np.array([up[node[:-1]] for node in self.levels[d]], dtype=np.int64))
        return out

    @cached_property
    def leaf_ancestors(self) -> np.ndarray:
        """(n_leaves, depth) local class index at every level of each leaf's path."""
        out = np.empty((self.n_leaves, self.depth), dtype=np.int64)
        out[:, -1] = np.arange(self.n_leaves)
        for d in range(self.depth - 1, 0, -1):
            out[:, d - 1] = self.parent_of[d][out[:, d]]
        return out

    @cached_property
    def is_placeholder(self) -> np.ndarray:
        """Boolean mask over the global class vector: True for padding nodes."""
        return np.array([node[-1] == PAD for level in self.levels for node in level], dtype=bool)

    # -- matrices of the original KTT (dense; fine up to a few thousand classes) ----------
    def R(self) -> np.ndarray:
        """(n_leaves, n_classes): R[l, j] = 1 when class j is leaf l or one of its ancestors."""
        out = np.zeros((self.n_leaves, self.n_classes), dtype=np.float32)
        rows = np.arange(self.n_leaves)
        for d in range(self.depth):
            out[rows, self.level_offsets[d] + self.leaf_ancestors[:, d]] = 1.0
        return out

    def M(self) -> np.ndarray:
        """(n_classes, n_classes): M[j, k] = 1 when class k is j or one of j's descendants."""
        out = np.zeros((self.n_classes, self.n_classes), dtype=np.float32)
        for d in range(self.depth):
            node = self.level_offsets[d] + np.arange(self.level_sizes[d])
            ancestor = np.arange(self.level_sizes[d])
            for up in range(d, -1, -1):
                out[self.level_offsets[up] + ancestor, node] = 1.0
                if up > 0:
                    ancestor = self.parent_of[up][ancestor]
        return out

    # -- paths <-> ids ----------------------------------------------------------------
    def encode(self, path: Sequence[str]) -> np.ndarray:
        """Per-level local class ids of a label path; KttError if the path is unknown."""
        padded = pad_path(tuple(path)[: self.depth], self.depth)
        try:
            return np.array([self._index[d][padded[: d + 1]] for d in range(self.depth)], dtype=np.int64)
        except KeyError:
            raise KttError(f"label path {format_path(path)!r} is not in the hierarchy") from None

    def encode_many(self, paths: Iterable[Sequence[str]]) -> np.ndarray:
        """(N, depth) local class ids; KttError names the first unknown path."""
        rows = [self.encode(p) for p in paths]
        return np.stack(rows) if rows else np.empty((0, self.depth), np.int64)

    def leaf_path(self, leaf: int) -> tuple[str, ...]:
        """The real (unpadded) label path of a leaf."""
        return strip_padding(self.levels[-1][leaf])

    def node_path(self, level: int, index: int) -> tuple[str, ...]:
        return strip_padding(self.levels[level][index])

    def is_consistent(self, level_ids: np.ndarray) -> np.ndarray:
        """(N,) True where each predicted class is a child of the prediction one level up.

        -1 marks a level where a partial prediction stopped; deeper levels must be -1 too.
        """
        level_ids = np.asarray(level_ids)
        ok = np.ones(len(level_ids), dtype=bool)
        for d in range(1, self.depth):
            child, parent = level_ids[:, d], level_ids[:, d - 1]
            stopped = child < 0
            ok &= stopped | ((parent >= 0) & (self.parent_of[d][np.maximum(child, 0)] == parent))
        return ok

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "ktt-hierarchy", "version": FORMAT_VERSION, "depth": self.depth,
                "placeholder": PAD, "levels": [[list(node) for node in level] for level in self.levels]}

    @classmethod
    def from_dict(cls, data: dict, source: str = "hierarchy") -> "Hierarchy":
        """Validate and rebuild; KttError names ``source`` and the field that is wrong.

        The structure is checked against :data:`ktt_core.schemas.HIERARCHY_SCHEMA`, then
        the rules of a tree of full paths: level ``d`` holds paths of ``d + 1`` labels, each
        listed once, each under a path of level ``d - 1``, each (but the last level's) with
        a child; labels are not blank; the placeholder only pads the end of a path. A node's
        parent is its path minus the last label, so no file can give a node two parents or
        make a cycle; a file that tries (say with a ``parents`` field) is refused.
        """
        from ktt_core import schemas

        if not isinstance(data, dict) or data.get("format") != "ktt-hierarchy":
            raise KttError(f"{source}: not a KTT hierarchy (missing \"format\": \"ktt-hierarchy\")")
        schemas.validate(data, schemas.HIERARCHY_SCHEMA, source)
        version = data.get("version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise KttError(f"{source}: version: {version} is newer than this KTT reads ({FORMAT_VERSION}); "
                           "upgrade KTT or re-import the dataset")
        levels = data["levels"]
        if "depth" in data and data["depth"] != len(levels):
            raise KttError(f"{source}: depth: says {data['depth']}, but 'levels' holds {len(levels)} levels")
        out: list[tuple[tuple[str, ...], ...]] = []
        for d, level in enumerate(levels):
            seen: dict[tuple[str, ...], int] = {}
            for i, node in enumerate(level):
                where = f"{source}: levels[{d}][{i}]"
                if len(node) != d + 1:
                    raise KttError(f"{where}: expected a path of {d + 1} labels (level {d + 1}), got {node!r}")
                _check_node(node, where)
                node = tuple(node)
                if node in seen:
                    raise KttError(f"{source}: levels[{d}] lists a path twice: {node!r} "
                                   f"(items {seen[node]} and {i})")
                seen[node] = i
            out.append(tuple(tuple(node) for node in level))
        for d in range(1, len(out)):
            parents = set(out[d - 1])
            for i, node in enumerate(out[d]):
                if node[:-1] not in parents:
                    raise KttError(f"{source}: levels[{d}][{i}]: {format_path(node)!r} at level {d + 1} "
                                   f"has no parent at level {d} (levels[{d - 1}] lacks {list(node[:-1])!r})")
        for d in range(len(out) - 1):
            with_children = {node[:-1] for node in out[d + 1]}
            for i, node in enumerate(out[d]):
                if node not in with_children:
                    raise KttError(f"{source}: levels[{d}][{i}]: {format_path(node)!r} has no child at "
                                   f"level {d + 2}; every path must reach the last level (a short path is "
                                   f"padded with placeholder \"\" labels)")
        return cls(tuple(out))

    def save(self, path: Path) -> None:
        from ktt_core.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Hierarchy":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KttError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KttError(f"{path}: not valid JSON ({exc})") from None
        except (OSError, RecursionError, ValueError) as exc:  # a folder; nested too deeply; a huge integer
            raise KttError(f"{path}: cannot read it ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        return cls.from_dict(data, source=str(path))

    def summary(self) -> str:
        return ", ".join(f"level {d + 1}: {n} classes" for d, n in enumerate(self.level_sizes))


def _check_node(node: list, where: str) -> None:
    """Real labels are not blank; the placeholder pads only the end of a path, below a real label."""
    if node[0] == PAD:
        raise KttError(f"{where}[0]: a path cannot start with the placeholder \"\" (level 1 needs a real label)")
    for k, label in enumerate(node):
        if label != PAD and not label.strip():
            raise KttError(f"{where}[{k}]: blank label {label!r}")
        if k and label != PAD and node[k - 1] == PAD:
            raise KttError(f"{where}[{k}]: label {label!r} after a placeholder \"\"; "
                           "placeholders only pad the end of a path")


def pad_path(path: tuple[str, ...], depth: int) -> tuple[str, ...]:
    return path + (PAD,) * (depth - len(path))


def strip_padding(path: Sequence[str]) -> tuple[str, ...]:
    return tuple(x for x in path if x != PAD)


def display_label(node: tuple[str, ...]) -> str:
    real = strip_padding(node)
    return real[-1]


def format_path(path: Sequence[str], sep: str = " > ") -> str:
    return sep.join(strip_padding(path))
