"""A deterministic synthetic dataset with a deep hierarchy (4 levels, ~800 leaves by default).

    python benchmarks/deep_hierarchy.py OUT.parquet [--seed N] [--rows-per-leaf N]
        [--branching 4,6,6,6] [--words-per-node N] [--words-per-level N] [--noise-words N]
        [--noise-vocab N] [--level-names Group,Type,Kind,Item]

The tree has one level per entry of ``--branching`` (4 x 6 x 6 x 6 = 864 leaves by
default). Node names repeat across branches ("Type 3" exists under every level-1 node), so
a node is identified by its path, as in KTT. Every node has its own small vocabulary of
made-up words (``--words-per-node``, unique across the tree); a text for a leaf samples
``--words-per-level`` words from the vocabulary of each node on its path, adds
``--noise-words`` words from a vocabulary shared by all texts and shuffles them. A coarse
class is thus named by its words in every text below it (easy), a leaf only by a few words
of its own among the others (hard), and only the whole text tells the path.

Each leaf gets ``--rows-per-leaf`` rows, give or take up to ``--rows-jitter`` (22 +- 3 by
default: ~19,000 rows). The output parquet has ``text`` (str) and ``category`` (list of
str, coarse to fine); import it with

    ktt import OUT.parquet deep --text text --labels category

The same arguments always write the same file (numpy ``default_rng(seed)``).
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

CONSONANTS = list("bdfgklmnprstvz")
VOWELS = list("aeiou")
DEFAULT_LEVEL_NAMES = ("Group", "Type", "Kind", "Item", "Part", "Piece")


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def make_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """``count`` new pronounceable made-up words (2-3 consonant-vowel syllables), none in ``taken``."""
    words = []
    while len(words) < count:
        syllables = int(rng.integers(2, 4))
        word = "".join(str(rng.choice(CONSONANTS)) + str(rng.choice(VOWELS)) for _ in range(syllables))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def generate(seed: int = 0, rows_per_leaf: int = 22, rows_jitter: int = 3,
             branching: tuple[int, ...] = (4, 6, 6, 6), words_per_node: int = 6,
             words_per_level: int = 2, noise_words: int = 3, noise_vocab: int = 300,
             level_names: tuple[str, ...] = DEFAULT_LEVEL_NAMES) -> pd.DataFrame:
    if len(level_names) < len(branching):
        level_names = tuple(level_names) + tuple(f"Level{d + 1}" for d in range(len(level_names), len(branching)))
    if words_per_level > words_per_node:
        raise ValueError("words_per_level must not exceed words_per_node")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    noise = make_words(rng, noise_vocab, taken)
    # vocab[path] = the words of the node at that path (a tuple of local indices).
    vocab: dict[tuple[int, ...], list[str]] = {}
    for depth in range(1, len(branching) + 1):
        for path in itertools.product(*(range(b) for b in branching[:depth])):
            vocab[path] = make_words(rng, words_per_node, taken)
    texts, categories = [], []
    for leaf in itertools.product(*(range(b) for b in branching)):
        labels = [f"{level_names[d]} {i + 1}" for d, i in enumerate(leaf)]
        count = rows_per_leaf + int(rng.integers(-rows_jitter, rows_jitter + 1)) if rows_jitter else rows_per_leaf
        for _ in range(max(1, count)):
            words: list[str] = []
            for depth in range(1, len(leaf) + 1):
                node_words = vocab[leaf[:depth]]
                words += [node_words[i] for i in rng.choice(len(node_words), words_per_level, replace=False)]
            words += [noise[i] for i in rng.integers(0, len(noise), noise_words)]
            rng.shuffle(words)
            texts.append(" ".join(words))
            categories.append(labels)
    order = rng.permutation(len(texts))
    return pd.DataFrame({"text": [texts[i] for i in order], "category": [categories[i] for i in order]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output .parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-leaf", type=int, default=22)
    parser.add_argument("--rows-jitter", type=int, default=3, help="each leaf gets rows-per-leaf +- this")
    parser.add_argument("--branching", type=int_list, default=[4, 6, 6, 6],
                        help="children per node at each level, coarse to fine (its length is the depth)")
    parser.add_argument("--words-per-node", type=int, default=6, help="size of each node's own vocabulary")
    parser.add_argument("--words-per-level", type=int, default=2, help="words a text takes from each ancestor")
    parser.add_argument("--noise-words", type=int, default=3, help="shared noise words per text")
    parser.add_argument("--noise-vocab", type=int, default=300, help="size of the shared noise vocabulary")
    parser.add_argument("--level-names", default=",".join(DEFAULT_LEVEL_NAMES),
                        help="comma list of node-name prefixes per level (names repeat across branches)")
    args = parser.parse_args(argv)
    frame = generate(args.seed, args.rows_per_leaf, args.rows_jitter, tuple(args.branching),
                     args.words_per_node, args.words_per_level, args.noise_words, args.noise_vocab,
                     tuple(n.strip() for n in args.level_names.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out, index=False)
    leaves = int(np.prod(args.branching))
    print(f"{args.out}: {len(frame)} rows, {len(args.branching)} levels, {leaves} leaves, "
          f"e.g. {frame.text[0]!r} -> {' > '.join(frame.category[0])}")


if __name__ == "__main__":
    main()
