"""Assertions and fixtures' helpers shared by the test modules."""
import contextlib
import json
import math
import os
import subprocess
import sys

import numpy as np
from conftest import TREE, WORDS

from ktt_core.checkpoint import load_checkpoint
from ktt_core.plugins import Plugins
from ktt_core.scoring import score


def assert_clean_error(result, *needles):
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


def train_model(ktt, workspace, model, dataset, encoder, *extra, epochs=4):
    """Train through the CLI; check the losses are finite and fall; return the run folder."""
    out = ktt("train", model, dataset, "--epochs", epochs, "--set", f"encoder={encoder}", *extra).output
    run = sorted((workspace / "runs" / model / dataset).iterdir())[-1]
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["val_loss"]) for e in epochs), out
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"], out
    return run


def check_trained_model(ktt, model, run):
    """Test (both decodings), predict with top-k, and the checkpoint's exact round trip."""
    metrics = json.loads(ktt("test", model, "shop", "--json").output)
    assert metrics["exact_path_accuracy"] > 0.6, metrics  # 8 leaves: chance is 1/8
    assert metrics["consistency_rate"] == 1.0 == metrics["consistency_rate_consistent"]
    assert 0 <= metrics["consistency_rate_per_level"] <= 1
    per_level = json.loads(ktt("test", model, "shop", "--decoding", "per-level", "--json").output)
    assert per_level["decoding"] == "per-level"
    assert per_level["consistency_rate"] == per_level["consistency_rate_per_level"]
    assert per_level["level_1_accuracy"] > 0.6

    # One keyword text per leaf: a trained model gets most right (one unlucky leaf must not fail CI).
    probes = {f"{WORDS[top]} {WORDS[leaf]} new": [top, leaf] for top, leaves in TREE.items() for leaf in leaves}
    lines = ktt("predict", model, "shop", *probes, "--top-k", "3", "--json").output.splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [p["text"] for p in predictions] == list(probes)
    assert sum(p["path"] == probes[p["text"]] for p in predictions) >= len(probes) - 2, predictions
    prediction = predictions[0]
    assert prediction["path"] == prediction["top_k"][0]["path"]
    scores = [p["score"] for p in prediction["top_k"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert prediction["levels"][0]["score"] >= prediction["levels"][1]["score"]

    # Checkpoint round trip: the CLI from best.pt twice (fresh loads) and from the run agree,
    # and two models rebuilt through the plugin hook score identically.
    args = ("predict", model, "shop", "household pan", "playful doll", "--json", "--top-k", "2")
    a = ktt(*args, "--checkpoint", run / "best.pt").output
    assert a == ktt(*args, "--checkpoint", run / "best.pt").output == ktt(*args, "--run", run).output
    plugins = Plugins()
    spec = plugins.model(model)
    rebuilt = [plugins.hook.ktt_load_model(spec=spec, checkpoint=load_checkpoint(run / "best.pt"))
               for _ in range(2)]
    scores = [score(plugins, spec, m, ["household pan", "edible juice"]).path_log_scores for m in rebuilt]
    assert scores[0].shape == (2, 8) and np.array_equal(scores[0], scores[1])
    if spec.head_class is not None:
        check_encoder_round_trip(plugins, spec, rebuilt)


def check_encoder_round_trip(plugins, spec, rebuilt):
    """Two encoder models rebuilt from one checkpoint give identical raw head outputs."""
    import torch

    assert type(rebuilt[0].head) is spec.head_class
    batch = rebuilt[0].tokenizer(["household pan", "edible juice"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        outs = [m.eval()(batch["input_ids"], batch["attention_mask"]) for m in rebuilt]
        paths = [m.path_log_scores(batch["input_ids"], batch["attention_mask"]) for m in rebuilt]
    assert outs[0].shape == (2, 11)
    assert torch.equal(outs[0], outs[1]) and torch.equal(paths[0], paths[1])


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables (seen by child processes too) and restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    if "BENTOML_HOME" in values:
        _forget_bentoml_store()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if "BENTOML_HOME" in values:
            _forget_bentoml_store()


def _forget_bentoml_store() -> None:
    """BentoML reads BENTOML_HOME once per process and caches its stores; forget them, so that
    in-process BentoML calls follow the variable (tests use one temporary home each)."""
    import sys

    if "bentoml" not in sys.modules:
        return
    from bentoml._internal.configuration.containers import BentoMLContainer
    from simple_di import sentinel
    from simple_di.providers import SingletonFactory

    for provider in vars(type(BentoMLContainer)).values():
        if isinstance(provider, SingletonFactory):
            provider._cache = sentinel


# A fresh interpreter where some top-level packages cannot be imported; any attempt is also
# reported on stderr at exit, in case the code under test swallowed the ImportError.
_BLOCKER = r"""
import atexit, importlib.abc, json, sys
BLOCKED, attempts = set(json.loads(sys.argv.pop(1))), []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
atexit.register(lambda: attempts and print("BLOCKED IMPORT ATTEMPTED: " + ", ".join(attempts), file=sys.stderr))
"""


def run_python_blocking(blocked, code: str, *args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run Python ``code`` (with ``sys.argv[1:] == args``) where the packages ``blocked`` fail to import."""
    return subprocess.run([sys.executable, "-c", _BLOCKER + code, json.dumps(sorted(blocked)), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)


def run_ktt_blocking(blocked, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run ``ktt ARGS`` where the packages ``blocked`` (e.g. torch) fail to import."""
    code = 'sys.argv = ["ktt", *sys.argv[1:]]\nfrom ktt_core import cli\ncli.main()\n'
    return run_python_blocking(blocked, code, *args, **kwargs)


def docs_python_block(doc: str, heading: str) -> str:
    """The first ```python block after ``heading`` in ``docs/DOC`` (the docs' examples run as tests)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
