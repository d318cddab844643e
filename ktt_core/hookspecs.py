"""The hook contract between the KTT core and model plugins (pluggy project ``ktt``).

A plugin is a module registered under the entry-point group ``ktt``. It usually implements
only :func:`ktt_register_models`; the core's own plugin (:mod:`ktt_core.builtin`) answers
every other hook for every model, last (``trylast``). A plugin implements another hook only
where its model does something different, and returns ``None`` for models it does not own
so that the next implementation answers. Every hook here has a section in docs/plugins.md.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ktt")


@hookspec
def ktt_register_models(register):
    """Declare the models this plugin provides.

    Call ``register(ModelSpec(...))`` once per model. A :class:`ktt_core.registry.ModelSpec`
    names the model, its display name, its classifier head class, its default
    hyperparameters and what it supports.
    """


@hookspec(firstresult=True)
def ktt_build_model(spec, hierarchy, config):
    """Construct an untrained model of ``spec`` for ``hierarchy`` with the resolved ``config``.

    Return a :class:`ktt_core.model.KttModel`, or ``None`` to leave it to the core, which
    loads the configured encoder and puts ``spec.head`` on top of it.
    """


@hookspec(firstresult=True)
def ktt_model_from_checkpoint(spec, checkpoint):
    """Rebuild the exact model saved in ``checkpoint``, a dict from
    :func:`ktt_core.checkpoint.load_checkpoint` (config, hierarchy, encoder config,
    tokenizer files, weights). Return the model, or ``None`` to leave it to the core.
    """


@hookspec(firstresult=True)
def ktt_fit(model, train, val, run):
    """Train ``model`` on ``train``, validating on ``val`` after every epoch.

    ``train`` and ``val`` are :class:`ktt_core.data.batches.EncodedSplit`; ``run`` is a
    :class:`ktt_core.training.RunContext` (run directory, device, epochs, seed). Write
    ``last.pt``, ``best.pt`` and ``metrics.jsonl`` to ``run.directory`` and return the
    list of per-epoch metric dicts, or ``None`` to leave it to the core's training loop.
    When ``run.resume`` is set (``ktt train --resume``) continue from that state.
    """


@hookspec(firstresult=True)
def ktt_test(model, data, run):
    """Score ``model`` on ``data`` (an ``EncodedSplit``) and return a
    :class:`ktt_core.decoding.Predictions` (per-path scores and decoded paths) that the
    core turns into metrics, or ``None`` to leave it to the core.
    """


@hookspec(firstresult=True)
def ktt_reference_set(model, data, run):
    """Return the drift-monitoring reference set for ``data`` as a pandas DataFrame:
    pooled encoder features (columns ``"0"``, ``"1"``, ...), one score column per leaf
    named by its path, ``target`` and ``prediction``; or ``None`` to leave it to the core.
    """


@hookspec(firstresult=True)
def ktt_search_space(spec):
    """Return the hyperparameter search space of model ``spec`` for ``ktt tune``, or ``None``
    for models that are not yours: a dict mapping config keys to distributions,
    ``{"type": "float", "low": 1e-6, "high": 1e-4, "log": true}``,
    ``{"type": "int", "low": 1, "high": 4}`` or ``{"type": "categorical", "choices": [...]}``.
    """


@hookspec(firstresult=True)
def ktt_export(model, fmt, directory):
    """Export ``model`` in format ``fmt`` into ``directory`` and return the path written,
    or ``None`` when this plugin does not export ``model`` in ``fmt``. Formats: ``"onnx"``
    (``model.onnx`` + tokenizer + ``hierarchy.json`` + ``ktt.json``) and ``"bento"`` (the
    safe files stored in the BentoML model store: ``checkpoint.pt``, ``hierarchy.json``,
    ``ktt.json``).
    """
