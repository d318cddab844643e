"""What a model is, as a plugin declares it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: What every model gets from the core's default hook implementations.
CORE_CAPABILITIES = ("train", "test", "predict", "top_k", "reference_set", "export_onnx", "export_bento")


@dataclass(frozen=True)
class ModelSpec:
    """A model provided by a plugin.

    ``head`` is a :class:`ktt_core.model.ClassifierHead` subclass: the layers on top of the
    encoder, their loss and their decoding. ``defaults`` holds the model's hyperparameters;
    they override the core's (``ktt_core.config.CORE_DEFAULTS``) and may add new keys.
    """

    name: str
    display_name: str
    head: type
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    capabilities: tuple[str, ...] = CORE_CAPABILITIES
    # The plugin's BentoML service, "module:Class" (its bentoml/ folder); "" if it has none.
    service: str = ""
    # Filled in by the plugin manager: the distribution that registered the model.
    plugin: str = ""
    plugin_version: str = ""
