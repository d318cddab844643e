"""The core's own plugin: the default answer to every hook, for every model.

Registered first and marked ``trylast``, so any model plugin that implements a hook for
its own model is asked before these.
"""
from __future__ import annotations

from ktt_core import hookimpl
from ktt_core.encoders import encoder_from_config, load_pretrained, tokenizer_from_files
from ktt_core.config import resolve_config
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.model import KttModel


@hookimpl(trylast=True)
def ktt_build_model(spec, hierarchy, config):
    encoder, tokenizer = load_pretrained(config["encoder"], config["allow_download"])
    head = spec.head(hierarchy, config, encoder.config.hidden_size)
    return KttModel(spec.name, hierarchy, config, encoder, tokenizer, head)


@hookimpl(trylast=True)
def ktt_model_from_checkpoint(spec, checkpoint):
    hierarchy = Hierarchy.from_dict(checkpoint["hierarchy"], source=checkpoint["path"])
    # A checkpoint's config is checked like a config file: it may come from elsewhere.
    config = resolve_config(spec, [(checkpoint["path"], checkpoint["config"])])
    try:
        encoder = encoder_from_config(checkpoint["encoder_config_json"])
    except (KeyError, ValueError, TypeError) as exc:
        raise KttError(f"{checkpoint['path']}: the encoder config it holds is invalid ({exc!r:.120})") from None
    tokenizer = tokenizer_from_files(checkpoint["tokenizer_files"])
    head = spec.head(hierarchy, config, encoder.config.hidden_size)
    model = KttModel(spec.name, hierarchy, config, encoder, tokenizer, head)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise KttError(f"{checkpoint['path']}: weights do not fit model {spec.name} ({first})") from None
    model._tokenizer_files = checkpoint["tokenizer_files"]
    return model


@hookimpl(trylast=True)
def ktt_fit(model, train, val, run):
    from ktt_core.training import fit

    return fit(model, train, val, run)


@hookimpl(trylast=True)
def ktt_test(model, data, run):
    from ktt_core.inference import predict

    model.to(run.device)
    return predict(model, data, desc="test")


@hookimpl(trylast=True)
def ktt_reference_set(model, data, run):
    from ktt_core.inference import reference_set

    model.to(run.device)
    return reference_set(model, data)


#: Search space for models that declare none: the learning rates and dropout every model has.
DEFAULT_SEARCH_SPACE = {
    "encoder_lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
    "classifier_lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


@hookimpl(trylast=True)
def ktt_search_space(spec):
    from ktt_core.config import defaults_for

    keys = defaults_for(spec)
    return {k: v for k, v in DEFAULT_SEARCH_SPACE.items() if k in keys}


@hookimpl(trylast=True)
def ktt_export(model, fmt, directory):
    if fmt == "onnx":
        from ktt_core.export.onnx import export_onnx

        return export_onnx(model, directory)
    if fmt == "bento":
        from ktt_core.export.bento import write_model_files

        return write_model_files(model, directory)
    return None
