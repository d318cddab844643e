"""Hyperparameter layering and validation."""
from __future__ import annotations

import re

import pytest

from ktt_core.config import parse_set_options, resolve_config
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
    assert config["classifier_lr"] == spec.defaults["classifier_lr"]


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
