"""The core's own plugin: the default answer to every hook, for every model, and the core's
own model, ``ensemble``.

Registered first and marked ``trylast``, so a plugin that implements a hook for its own
models is asked before these. Each answer calls the model contract
(:class:`ktt_core.contract.Model`); nothing here depends on a framework.
"""
from __future__ import annotations

from ktt_core import hookimpl


@hookimpl
def ktt_register_models(register):
    from ktt_core.ensemble import ENSEMBLE_SPEC

    register(ENSEMBLE_SPEC)


@hookimpl(trylast=True)
def ktt_build_model(spec, hierarchy, config):
    return spec.model_class.build(spec, hierarchy, config)


@hookimpl(trylast=True)
def ktt_load_model(spec, checkpoint):
    return spec.model_class.from_state(spec, checkpoint)


@hookimpl(trylast=True)
def ktt_fit(spec, model, train, val, run):
    return model.fit(train, val, run)


@hookimpl(trylast=True)
def ktt_score(spec, model, texts, features):
    return model.score(texts, features=features)


@hookimpl(trylast=True)
def ktt_reference_set(spec, model, data, run):
    from ktt_core.scoring import reference_set

    return reference_set(run.plugins, spec, model, data)


@hookimpl(trylast=True)
def ktt_export(spec, model, fmt, directory):
    if fmt == "bento":
        from ktt_core.export.bento import write_model_files

        return write_model_files(model, directory)
    return model.export(fmt, directory)
