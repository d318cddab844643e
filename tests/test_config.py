"""Hyperparameter layering and validation."""
from __future__ import annotations

import json
import re

import pytest

from ktt_core.config import defaults_for, parse_set_options, resolve_config
from ktt_core.errors import KttError
from ktt_core.plugins import Plugins


@pytest.fixture(scope="module")
def plugins():
    return Plugins()


def test_layers_override_in_order(plugins):
    spec = plugins.model("db_linear")
    config = resolve_config(spec, [("file", {"dropout": 0.1, "epochs": 5}),
                                   ("--set", parse_set_options(["dropout=0.2", "encoder_lr=1e-4"]))])
    assert config["dropout"] == 0.2 and config["epochs"] == 5 and config["encoder_lr"] == 1e-4
    assert config["classifier_lr"] == defaults_for(spec)["classifier_lr"] == 2e-3  # the core's encoder default


def test_signed_keys_accept_negative_values(plugins):
    config = resolve_config(plugins.model("db_bhcn"), [("--set", parse_set_options(["gamma_L=-0.2"]))])
    assert config["gamma_L"] == -0.2


@pytest.mark.parametrize("item, message", [
    ("weight_decay=-1", "non-negative"), ("epochs=0", "positive"), ("dropout=1.5", "in [0, 1)"),
    ("pooling=max", "mean or cls"), ("epochs=2.5", "an integer"), ("compile=maybe", "true or false"),
    ("encoder_lr=.nan", "a finite number"), ("classifier_lr=.inf", "a finite number"),
    ("seed=-1", "in [0, 4294967295]"), ("train_batch_size=-4", "positive"),
])
def test_invalid_values_are_refused_by_name(plugins, item, message):
    with pytest.raises(KttError, match=re.escape(message)):
        resolve_config(plugins.model("db_linear"), [("--set", parse_set_options([item]))])


def test_config_file_keys_must_be_names(tmp_path):
    from ktt_core.config import read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("1: 2\n")
    with pytest.raises(KttError, match=re.escape("c.yaml: key 1: keys must be names")):
        read_config_file(path)


def test_every_key_of_every_installed_model_is_described():
    """``ktt config MODEL`` explains every key: a plugin adding an undocumented key fails here."""
    from ktt_core.config import describe_keys
    from ktt_core.plugins import Plugins

    plugins = Plugins()
    assert {"db_linear", "tfidf_lsgd", "ensemble"} <= set(plugins.models)
    for spec in plugins.models.values():
        rows = describe_keys(spec)
        assert [r["key"] for r in rows][:2] == ["seed", "monitor"]
        missing = [r["key"] for r in rows if not r["description"]]
        assert not missing, f"{spec.name}: keys without a description (ModelSpec.key_help): {missing}"
        assert all(r["allowed"] for r in rows)


def test_ktt_config_shows_defaults_and_allowed_values(ktt):
    rows = json.loads(ktt("config", "db_bhcn", "--json").output)
    by_key = {r["key"]: r for r in rows}
    assert by_key["nonlinear"]["allowed"] == "relu | tanh"
    assert by_key["dropout"]["allowed"] == "[0, 1)" and by_key["encoder_lr"]["allowed"] == "> 0"
    assert by_key["lambda_H"]["tuned"] is True
    assert "unknown model 'nope'" in ktt("config", "nope", expect=1).output
