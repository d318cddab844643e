"""Length-grouped batches, token and feature caches, frozen-encoder training."""
from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoModel

from ktt_core.checkpoint import load_checkpoint
from ktt_core.data.batches import LengthGroupedBatches, encode_texts
from ktt_core.hierarchy import Hierarchy


def test_length_grouped_batches_cover_every_row_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=1000)
    grouped = LengthGroupedBatches(lengths, 16, seed=1)
    plain = LengthGroupedBatches(lengths, 16, seed=1, group_by_length=False)
    for sampler in (grouped, plain):
        rows = np.concatenate(list(sampler))
        assert sorted(rows.tolist()) == list(range(1000))
        assert len(list(sampler)) == len(sampler)

    def padding(sampler):
        return sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in sampler)

    assert padding(grouped) < padding(plain) / 4
    first = [b for b in grouped]
    grouped.set_epoch(2)
    assert [b for b in grouped] != first  # a new order every epoch


def test_sharded_batches_split_rows_between_processes_without_repeats():
    lengths = np.arange(101)
    shards = [np.concatenate(list(LengthGroupedBatches(lengths, 8, seed=0, rank=r, world=2))) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards).tolist()) == list(range(101))


def test_token_cache_is_reused(tmp_path, tiny_encoder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    h = Hierarchy.from_paths([("A", "b")])
    texts = ["some product title", "another one", "x"]
    first = encode_texts(texts, tokenizer, 16, h, cache_dir=tmp_path)
    files = list(tmp_path.glob("tokens-*.pt"))
    assert len(files) == 1
    again = encode_texts(texts, tokenizer, 16, h, cache_dir=tmp_path)
    assert again.input_ids == first.input_ids == tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    encode_texts(texts, tokenizer, 8, h, cache_dir=tmp_path)  # other max_length: other entry
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 2


def test_freeze_encoder_trains_the_head_only_and_caches_features(ktt, synthetic_csv, tiny_encoder, workspace):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    args = ("train", "db_linear", "shop", "--freeze-encoder", "--epochs", "3", "--set", f"encoder={tiny_encoder}",
            "--set", "classifier_lr=0.05", "--set", "dropout=0.0")
    ktt(*args)
    cache = workspace / "datasets" / "shop" / "cache"
    features = sorted(cache.glob("features-*.pt"))
    assert len(features) == 2  # train and val
    stamps = [p.stat().st_mtime_ns for p in features]
    ktt(*args)
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("features-*.pt"))] == stamps  # reused

    run = sorted((workspace / "runs" / "db_linear" / "shop").iterdir())[-1]
    saved = load_checkpoint(run / "best.pt")["state"]["state_dict"]
    pretrained = AutoModel.from_pretrained(tiny_encoder).state_dict()
    for name, value in pretrained.items():
        assert torch.equal(saved[f"encoder.{name}"], value), name
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_exact_path_accuracy"] > 1 / 8  # learns from frozen random features


def test_compile_trains_and_saves_a_usable_checkpoint(ktt, synthetic_csv, tiny_encoder, workspace):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    ktt("train", "db_linear", "shop", "--compile", "--epochs", "2", "--device", "cpu",
        "--set", f"encoder={tiny_encoder}", "--set", "encoder_lr=1e-3", "--set", "classifier_lr=1e-2")
    run = next((workspace / "runs" / "db_linear" / "shop").iterdir())
    assert json.loads((run / "config.json").read_text())["config"]["compile"] is True
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert json.loads(ktt("test", "db_linear", "shop", "--json").output)["rows"] > 0


def test_inference_batches_cut_where_a_long_row_would_pad_the_short_ones():
    import numpy as np

    from ktt_core.data.batches import CPU_SPLIT_TOKENS, eval_batches

    lengths = np.array([40, 5, 6, 5, 41, 5, 6, 5, 5, 6, 5, 39, 5])
    plain = eval_batches(lengths, 64)
    assert len(plain) == 1 and sorted(plain[0]) == list(range(len(lengths)))
    cut = eval_batches(lengths, 64, split_tokens=CPU_SPLIT_TOKENS)
    assert [sorted(int(lengths[i]) for i in b) for b in cut] == [[5] * 7 + [6] * 3, [39, 40, 41]]
    # Sorted lengths that grow a token at a time are never cut below the batch size.
    steady = eval_batches(np.arange(10, 140), 64, split_tokens=CPU_SPLIT_TOKENS)
    assert [len(b) for b in steady] == [64, 64, 2]
    # Long texts go fewer at a time: a batch holds at most max_tokens positions.
    long = eval_batches(np.full(100, 512), 256, max_tokens=16384)
    assert [len(b) for b in long] == [32, 32, 32, 4]
    assert [len(b) for b in eval_batches(np.array([20000, 5]), 256, max_tokens=16384)] == [1, 1]
    # Across two processes each row is scored exactly once.
    shares = [r for rank in (0, 1) for b in eval_batches(lengths, 4, rank, 2, CPU_SPLIT_TOKENS) for r in b]
    assert sorted(shares) == list(range(len(lengths)))
