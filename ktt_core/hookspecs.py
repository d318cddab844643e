"""The hook contract between the KTT core and model plugins (pluggy project ``ktt``).

A plugin is a module registered under the entry-point group ``ktt``. It usually implements
only :func:`ktt_register_models`, naming for each model a class that implements the model
contract (:class:`ktt_core.contract.Model`) or, for a transformer model, a classifier head.
The core's own plugin (:mod:`ktt_core.builtin`) answers every other hook for every model,
last (``trylast``), by calling the model's contract methods. A plugin implements another
hook only to change that step for some models: it receives the ``spec`` of the model
being served and returns ``None`` for models it leaves to the next implementation.
Every hook here has a section in docs/plugins.md, with the same signature.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ktt")


@hookspec
def ktt_register_models(register):
    """Declare the models this plugin provides.

    Call ``register(ModelSpec(...))`` once per model. A :class:`ktt_core.registry.ModelSpec`
    names the model, its display name, its model class (or classifier head), its default
    hyperparameters, their allowed choices and ranges, its ``ktt tune`` search space, its
    BentoML service and what it supports.
    """


@hookspec(firstresult=True)
def ktt_build_model(spec, hierarchy, config):
    """Construct an untrained model of ``spec`` for ``hierarchy`` with the resolved ``config``.

    Return a :class:`ktt_core.contract.Model`. The core's answer:
    ``spec.model_class.build(spec, hierarchy, config)``.
    """


@hookspec(firstresult=True)
def ktt_load_model(spec, checkpoint):
    """Rebuild the exact model saved in ``checkpoint``, a dict from
    :func:`ktt_core.checkpoint.load_checkpoint` (``path``, ``model``, ``config``,
    ``hierarchy``, ``state``, ``training``). The core's answer:
    ``spec.model_class.from_state(spec, checkpoint)``.
    """


@hookspec(firstresult=True)
def ktt_fit(spec, model, train, val, run):
    """Train ``model`` on ``train``, validating on ``val``; return the list of per-epoch
    metric records.

    ``train`` and ``val`` are :class:`ktt_core.contract.LabelledTexts` (texts and per-level
    class ids); ``run`` is a :class:`ktt_core.runs.RunContext` (run folder, device, seed,
    log, resume state). The run folder gets ``best.pt`` and ``metrics.jsonl`` (and ``last.pt``
    for models that resume). The core's answer: ``model.fit(train, val, run)``.
    """


@hookspec(firstresult=True)
def ktt_score(spec, model, texts, features):
    """Score ``texts`` (a list of strings) with ``model``: a
    :class:`ktt_core.contract.Scores` with the log-score of every path of the hierarchy,
    per-level log-scores when the model has them and, when ``features`` is true, the drift
    features. Every command that scores texts calls this hook (test, predict, streaming
    predict, serve, the ONNX parity check, reference sets). The core's answer:
    ``model.score(texts, features)``.
    """


@hookspec(firstresult=True)
def ktt_reference_set(spec, model, data, run):
    """Return the drift-monitoring reference set for ``data`` (``LabelledTexts``) as a pandas
    DataFrame: features (columns ``"0"``, ``"1"``, ...), one probability column per leaf
    named by its path, ``target`` and ``prediction``. The core's answer builds it from
    :func:`ktt_score` with features.
    """


@hookspec(firstresult=True)
def ktt_export(spec, model, fmt, directory):
    """Export ``model`` in format ``fmt`` into ``directory`` and return the path written, or
    ``None`` when ``model`` has no such export. Formats: ``"onnx"`` (a folder that
    :class:`ktt_core.onnx_runtime.OnnxModel` runs: ``ktt.json``, ``hierarchy.json``, the
    graph(s)) and ``"bento"`` (the safe files stored in the BentoML model store:
    ``checkpoint.pt``, ``hierarchy.json``, ``ktt.json``). The core's answer:
    ``model.export(fmt, directory)`` for ``"onnx"``, its own files for ``"bento"``.
    """
