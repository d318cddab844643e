"""What a model is, as a plugin declares it: a :class:`ModelSpec`."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

#: What every model gets from the core: every command works through the model contract.
CORE_CAPABILITIES = ("train", "test", "predict", "top_k", "reference_set", "export_onnx", "export_bento")


@dataclass(frozen=True)
class ModelSpec:
    """A model provided by a plugin.

    ``model`` is the class that implements the model contract
    (:class:`ktt_core.contract.Model`): how the model fits, scores texts, saves and exports.
    For the core's transformer models leave it out and give ``head``, a
    :class:`ktt_core.model.ClassifierHead` subclass (the layers on top of the encoder, their
    loss and their decoding): the model is then :class:`ktt_core.model.EncoderModel`.

    ``defaults`` holds the model's hyperparameters; they override the model class's own
    (``model.base_defaults()``) and may add keys. ``choices`` (key -> allowed values) and
    ``ranges`` (key -> inclusive ``(low, high)``, ``None`` for an open end) are checked on
    every config, whatever its source. ``search_space`` is what ``ktt tune`` searches.

    ``head`` and ``model`` may be given as ``"module:Class"`` strings: the class is imported
    only when a model is built or loaded, so ``ktt list-models``, ``ktt --help`` and input
    checks never wait for torch or scikit-learn.
    """

    name: str
    display_name: str
    head: type | str | None = None
    model: type | str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    ranges: Mapping[str, tuple] = field(default_factory=dict)
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    # What the model's own keys mean (key -> one line), shown by ``ktt config MODEL``.
    key_help: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = CORE_CAPABILITIES
    # The plugin's BentoML service, "module:Class" (its bentoml/ folder); "" if it has none.
    service: str = ""
    # Filled in by the plugin manager: the distribution that registered the model.
    plugin: str = ""
    plugin_version: str = ""

    def __post_init__(self):
        if self.model is None and self.head is None:
            raise TypeError(f"ModelSpec {self.name!r}: give model= (a ktt_core.contract.Model class) "
                            "or head= (a ClassifierHead, for an encoder model)")

    @property
    def supports(self) -> tuple[str, ...]:
        """``capabilities``, less ONNX export for a model class that has no ``export``."""
        from ktt_core.contract import Model

        if self.model is not None and self.model_class.export is Model.export:
            return tuple(c for c in self.capabilities if c != "export_onnx")
        return self.capabilities

    @property
    def head_class(self) -> type | None:
        """The head class (imported now if ``head`` was given as ``"module:Class"``)."""
        return _resolve(self.head, f"model {self.name!r}: head")

    @property
    def model_class(self) -> type:
        """The class implementing the model contract (imports torch for encoder models)."""
        if self.model is not None:
            return _resolve(self.model, f"model {self.name!r}: model")
        from ktt_core.model import EncoderModel

        return EncoderModel


def _resolve(target: type | str | None, what: str) -> type | None:
    """A class, or the class a ``"module:Class"`` string names."""
    if target is None or not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise TypeError(f"{what} {target!r}: expected 'module:Class'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        from ktt_core.errors import KttError

        raise KttError(f"{what} {target!r} cannot be imported: {exc}") from exc
