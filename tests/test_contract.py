"""The model contract as a plugin author meets it: the complete non-torch model of
docs/plugins.md, installed as a real plugin (entry point), through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import docs_python_block

from ktt_core.testing import install_plugin


def docs_example() -> str:
    return docs_python_block("plugins.md", "### A complete non-torch model")


def test_the_documented_non_torch_model_works_as_a_plugin(tmp_path, synthetic_csv):
    # Installed as pip would: a module and a dist-info with its entry point, on sys.path.
    env = {**install_plugin(tmp_path, "ktt_centroid", docs_example(), entry_point="centroid"),
           "PATH": "/usr/bin:/bin", "KTT_LOAD_PLUGINS": "centroid"}
    workspace = tmp_path / "ws"

    def ktt(*args):
        done = subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(workspace), *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        return done.stdout

    listed = json.loads(ktt("list-models", "--json"))
    row = next(r for r in listed if r["name"] == "centroid")
    assert row["plugin"] == "ktt-centroid" and "export_onnx" not in row["capabilities"]
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    out = ktt("train", "centroid", "shop", "--set", "temperature=0.1")
    assert "fitted:" in out
    metrics = json.loads(ktt("test", "centroid", "shop", "--json"))
    assert metrics["exact_path_accuracy"] > 0.8 and metrics["consistency_rate"] == 1.0
    prediction = json.loads(ktt("predict", "centroid", "shop", "household pan", "--json", "--top-k", "2"))
    assert prediction["path"] == ["Home", "Kitchen"] and len(prediction["top_k"]) == 2
    ktt("train", "centroid", "shop", "--reference")
    run = max((workspace / "runs" / "centroid" / "shop").iterdir())
    assert (run / "reference.parquet").is_file()
    # An ensemble takes it like any other model.
    ktt("train", "centroid", "shop", "--set", "temperature=0.5")
    runs = sorted((workspace / "runs" / "centroid" / "shop").iterdir())
    ktt("train", "ensemble", "shop", "--set", f"members={runs[0]},{runs[-1]}")
    assert json.loads(ktt("test", "ensemble", "shop", "--json"))["exact_path_accuracy"] > 0.8
