"""The plugin system: discovery, KTT_LOAD_PLUGINS, broken plugins, documented hooks."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ktt_core import hookspecs
from ktt_core.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]
KTT = [sys.executable, "-m", "ktt_core"]


def hook_functions():
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("ktt_")}


def test_every_hook_has_a_docstring_and_a_documented_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    hooks = hook_functions()
    assert len(hooks) >= 7
    for name, fn in hooks.items():
        assert (fn.__doc__ or "").strip(), f"hookspec {name} has no docstring"
        signature = f"### {name}({', '.join(inspect.signature(fn).parameters)})"
        assert signature in docs, f"docs/plugins.md has no section '{signature}'"
    documented = set(re.findall(r"^### (ktt_\w+)\(", docs, flags=re.M))
    assert documented == set(hooks), "docs/plugins.md documents hooks that do not exist"


def test_db_linear_is_discovered_through_its_entry_point():
    plugins = Plugins()
    spec = plugins.model("db_linear")
    assert spec.plugin == "ktt-db-linear"
    assert spec.display_name == "Linear head"
    assert spec.defaults["dropout"] == 0.1


def test_ktt_load_plugins_restricts_what_loads():
    assert "db_linear" not in Plugins(load="").models
    assert "db_linear" in Plugins(load="ktt-db-linear").models
    assert "db_linear" in Plugins(load="db_linear,other").models


def run_cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([*KTT, *args], capture_output=True, text=True, env=env, timeout=120)


def test_list_models_json():
    out = run_cli("list-models", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    row = next(r for r in rows if r["name"] == "db_linear")
    assert row["plugin"] == "ktt-db-linear" and row["version"] == "0.1.0"
    assert {"train", "test", "predict", "top_k"} <= set(row["capabilities"])


def test_list_models_with_no_plugins_says_how_to_install_one():
    out = run_cli("list-models", env_extra={"KTT_LOAD_PLUGINS": ""})
    assert out.returncode == 0
    assert "pip install ./plugins/ktt-db-linear" in out.stdout


def test_broken_plugin_is_reported_by_name_and_does_not_break_the_cli(tmp_path):
    # A real installed distribution (dist-info on sys.path) whose entry point cannot import.
    dist = tmp_path / "ktt_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ktt-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ktt]\nbroken = ktt_module_that_does_not_exist\n")
    env = {"PYTHONPATH": str(tmp_path)}
    out = run_cli("list-models", "--json", env_extra=env)
    assert out.returncode == 0
    assert "plugin 'broken' (ktt-broken) failed to load" in out.stderr
    assert any(r["name"] == "db_linear" for r in json.loads(out.stdout))
    listed = json.loads(run_cli("plugins", "--json", env_extra=env).stdout)
    broken = next(r for r in listed if r["name"] == "broken")
    assert "ModuleNotFoundError" in broken["error"]
