"""The conformance kit: what a model plugin's own tests import to check it works with KTT.

    from ktt_core.testing import check_model, install_plugin, make_tiny_encoder

    def test_my_model(tmp_path):
        encoder = make_tiny_encoder(tmp_path / "encoder")      # for a transformer head
        metrics = check_model("my_model", tmp_path / "ws", train_args=["--set", f"encoder={encoder}"])

:func:`check_model` runs the model through the real CLI, in a child process, on a small
synthetic hierarchy that a working model learns in seconds: listing and ``ktt config``,
``train --dry-run``, training, ``test`` with both decodings, ``predict`` with top-k, the
checkpoint's round trip and, when the model declares it, the ONNX export (its answers must
match). It fails with an ``AssertionError`` that says which step broke and shows the output.
:func:`install_plugin` installs a module as a real entry-point plugin (a dist-info folder
on ``PYTHONPATH``), as pip would, for tests of plugins that are not installed.

Importing this module imports neither torch nor pytest.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Sequence

# Synthetic hierarchy: each top class and each child has its own keyword, so a small model
# can learn it; texts also carry shared filler words.
TREE = {
    "Food": ["Fruit", "Bakery", "Drinks"],
    "Home": ["Kitchen", "Garden"],
    "Toys": ["Puzzles", "Dolls", "Games"],
}
WORDS = {"Food": "edible", "Home": "household", "Toys": "playful", "Fruit": "apple", "Bakery": "bread",
         "Drinks": "juice", "Kitchen": "pan", "Garden": "shovel", "Puzzles": "jigsaw", "Dolls": "doll",
         "Games": "board"}
FILLER = ["great", "value", "pack", "new", "large", "small", "blue", "red", "premium", "classic"]


def synthetic_rows(n: int, seed: int = 0):
    """``n`` rows (id, title, category ``"Top > Child"``) of the synthetic hierarchy, as a DataFrame."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        top = rng.choice(sorted(TREE))
        child = rng.choice(TREE[top])
        words = [WORDS[top], WORDS[child]] + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"id": i, "title": " ".join(words) + f" {i}", "category": f"{top} > {child}"})
    return pd.DataFrame(rows)


def write_synthetic_csv(path: Path | str, n: int = 400, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_rows(n, seed).to_csv(path, index=False)
    return path


def probe_texts() -> dict[str, list[str]]:
    """One keyword text per leaf, with its path: a trained model gets (nearly) all right."""
    return {f"{WORDS[top]} {WORDS[leaf]} new": [top, leaf] for top, leaves in TREE.items() for leaf in leaves}


def make_tiny_encoder(folder: Path | str) -> str:
    """A randomly initialised 2-layer DistilBERT (dim 32) with the packaged MiniLM's vocabulary,
    saved in ``folder``; pass it as ``--set encoder=FOLDER``. Trains in seconds on a CPU."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from ktt_core.encoders import resolve_encoder

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"))
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                              hidden_dim=64, max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def install_plugin(folder: Path | str, module: str, source: str, *, entry_point: str | None = None,
                   distribution: str | None = None, version: str = "0.1") -> dict[str, str]:
    """Install ``source`` as module ``module`` with a ``ktt`` entry point, as pip would
    (a dist-info folder), into ``folder``. Returns the environment for a child process
    that sees it (``PYTHONPATH``, before the current one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    distribution = distribution or module.replace("_", "-")
    dist = folder / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[ktt]\n{entry_point or module} = {module}\n")
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


class Cli:
    """``ktt`` in a child process, in one workspace: ``cli("train", ...)`` returns stdout."""

    def __init__(self, workspace: Path | str, env: dict[str, str] | None = None, timeout: float = 900):
        self.workspace, self.timeout = Path(workspace), timeout
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}

    def run(self, *args, expect: int = 0) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(self.workspace),
                               *map(str, args)], capture_output=True, text=True, env=self.env,
                              timeout=self.timeout, check=False)
        assert done.returncode == expect, (
            f"ktt {' '.join(map(str, args))} exited {done.returncode}, expected {expect}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def __call__(self, *args) -> str:
        return self.run(*args).stdout


def check_model(model: str, workspace: Path | str, *, train_args: Sequence[str] = (), epochs: int | None = None,
                env: dict[str, str] | None = None, min_accuracy: float = 0.6, export: bool = True) -> dict:
    """Run ``model`` through KTT's commands on the synthetic hierarchy; returns its test metrics.

    ``train_args`` go to ``ktt train`` (e.g. ``["--set", "encoder=DIR"]``); ``env`` to the
    child processes (e.g. from :func:`install_plugin`). ``min_accuracy``: the exact-path
    accuracy the trained model must reach (8 leaves: chance is 1/8).
    """
    workspace = Path(workspace)
    cli = Cli(workspace, env)
    row = next((r for r in json.loads(cli("list-models", "--json")) if r["name"] == model), None)
    assert row is not None, f"ktt list-models does not list {model!r}: is its plugin installed (entry point 'ktt')?"
    keys = json.loads(cli("config", model, "--json"))
    undescribed = [k["key"] for k in keys if not k["description"]]
    assert not undescribed, f"{model}: config keys without a description (ModelSpec.key_help): {undescribed}"

    data = write_synthetic_csv(workspace.parent / f"{workspace.name}-data" / "products.csv")
    cli("import", data, "shop", "--text", "title", "--labels", "category", "--sep", " > ", "--force")
    train = ["train", model, "shop", *(["--epochs", epochs] if epochs else []), *train_args]
    dry = cli(*train, "--dry-run")
    assert "dry run: config" in dry, dry
    runs = workspace / "runs" / model / "shop"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    cli(*train)
    (run,) = set(runs.iterdir()) - before
    assert (run / "best.pt").is_file() and (run / "metrics.jsonl").is_file(), sorted(p.name for p in run.iterdir())

    metrics = json.loads(cli("test", model, "shop", "--json"))
    assert metrics["exact_path_accuracy"] >= min_accuracy, f"{model} learned too little: {metrics}"
    assert metrics["consistency_rate"] == 1.0, f"{model}: consistent decoding gave paths not in the hierarchy"
    per_level = json.loads(cli("test", model, "shop", "--decoding", "per-level", "--json"))
    assert 0.0 <= per_level["consistency_rate_per_level"] <= 1.0

    probes = probe_texts()
    lines = cli("predict", model, "shop", *probes, "--top-k", "3", "--json").splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [p["text"] for p in predictions] == list(probes)
    right = sum(p["path"] == probes[p["text"]] for p in predictions)
    assert right >= len(probes) - 2, f"{model} got {right} of {len(probes)} keyword texts right: {predictions}"
    for p in predictions:
        scores = [alt["score"] for alt in p["top_k"]]
        assert p["path"] == p["top_k"][0]["path"] and scores == sorted(scores, reverse=True), p
        assert all(0.0 <= level["score"] <= 1.0 for level in p["levels"]), p

    # The checkpoint's round trip: fresh loads answer the same.
    args = ("predict", model, "shop", *list(probes)[:3], "--json", "--top-k", "2")
    first = cli(*args, "--checkpoint", run / "best.pt")
    assert first == cli(*args, "--checkpoint", run / "best.pt") == cli(*args), f"{model}: reloads disagree"

    if export and "export_onnx" in row["capabilities"]:
        folder = workspace.parent / f"{workspace.name}-onnx"
        cli("export", model, "shop", "--onnx", "--output", folder)
        onnx = [json.loads(line) for line in cli(*args, "--onnx", folder / "onnx").splitlines()]
        torch_side = [json.loads(line) for line in first.splitlines()]
        assert [p["path"] for p in onnx] == [p["path"] for p in torch_side], f"{model}: ONNX export disagrees"
    return metrics
