"""Running the core's torch model over tokenized texts: scores, features, encoder features.

:meth:`ktt_core.model.EncoderModel.score` (the model contract's scoring call) and the
training loop's validation both come here, and both turn head outputs into scores with
:meth:`~ktt_core.model.EncoderModel.head_scores`, so a head scores the same everywhere.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ktt_core.contract import Scores
from ktt_core.data.batches import CPU_SPLIT_TOKENS, EncodedSplit, eval_loader
from ktt_core.decoding import Predictions, decode_scores
from ktt_core.devices import autocast, retry_in_fp32
from ktt_core.distributed import SINGLE, Cluster


def _batches(model, split: EncodedSplit, batch_size: int, desc: str, cluster: Cluster = SINGLE):
    device = model.device
    loader = eval_loader(split, batch_size, cluster.rank, cluster.world, pin_memory=device.type == "cuda",
                         split_tokens=CPU_SPLIT_TOKENS if device.type == "cpu" else None)
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if cluster.is_main else True):
        yield (batch, batch["input_ids"].to(device, non_blocking=True),
               batch["attention_mask"].to(device, non_blocking=True))


@torch.inference_mode()
def score_split(model, split: EncodedSplit, batch_size: int | None = None, desc: str = "score",
                cluster: Cluster = SINGLE, forward=None, features: bool = False) -> Scores:
    """Path (and level) log-scores of every row of ``split``, in row order; the head's mean
    loss when every row has a target; with ``features``, the pooled drift features.

    Across processes each rank scores its share of the rows and all ranks receive the
    whole result. ``forward`` may replace ``model.forward`` (a compiled version).
    """
    model.eval()
    forward = model if forward is None else forward  # a compiled module has no truth value
    batch_size = batch_size or model.config["eval_batch_size"]
    has_targets = len(split) > 0 and bool((split.targets >= 0).all())
    loss_sum = torch.zeros((), device=model.device)
    h = model.hierarchy
    parts = {"rows": [], "paths": [], "levels": [], "features": []}
    precision = model.config.get("precision", "fp32")

    def run_batch(ids, mask):
        with autocast(model.device, precision):
            if features:
                return model.forward_with_features(ids, mask)
            return forward(ids, mask), None

    # One autocast region around all batches: under bf16, autocast casts each weight once
    # per region and caches it, instead of once per batch (the inner regions nest in it).
    with autocast(model.device, precision):
        for batch, ids, mask in _batches(model, split, batch_size, desc, cluster):
            outputs, pooled = retry_in_fp32(model.device, precision, run_batch, ids, mask)
            # Loss and scores from float32 outputs, with autocast off: under bf16 only the
            # encoder and head ran in bf16, and every figure reported is computed in float32.
            with torch.autocast(model.device.type, enabled=False):
                outputs = as_float32(outputs)
                if pooled is not None:
                    parts["features"].append(pooled.float().cpu())
                if has_targets:
                    loss_sum += model.head.loss(outputs, batch["targets"].to(model.device)).float() * len(ids)
                paths, levels = model.head_scores(outputs)
            parts["rows"].append(batch["rows"])
            parts["paths"].append(paths.cpu())
            if levels is not None:
                parts["levels"].append(levels.cpu())
    local = {k: torch.cat(v).numpy() if v else None for k, v in parts.items()}
    local["loss"] = float(loss_sum)
    out = {"paths": np.empty((len(split), h.n_leaves), dtype=np.float32), "levels": None, "features": None}
    total_loss = 0.0
    for part in cluster.gather(local):
        if part["rows"] is None:
            continue
        for key in ("paths", "levels", "features"):
            if part[key] is not None:
                if out[key] is None:
                    out[key] = np.empty((len(split), part[key].shape[1]), dtype=np.float32)
                out[key][part["rows"]] = part[key]
        total_loss += part["loss"]
    if features and out["features"] is None:
        out["features"] = np.empty((0, model.feature_pool.output_size), dtype=np.float32)
    return Scores(out["paths"], None if out["levels"] is None else h.split_levels(out["levels"]),
                  out["features"], total_loss / len(split) if has_targets else None)


def predict(model, split: EncodedSplit, batch_size: int | None = None, desc: str = "predict",
            cluster: Cluster = SINGLE, forward=None) -> Predictions:
    """:func:`score_split`, decoded (the training loop's validation)."""
    return decode_scores(model.hierarchy, score_split(model, split, batch_size, desc, cluster, forward))


@torch.inference_mode()
def encoder_features(model, split: EncodedSplit, batch_size: int | None = None) -> torch.Tensor:
    """(N, hidden) pooled encoder features of every row, in row order (for a frozen encoder)."""
    model.eval()
    batch_size = batch_size or model.config["eval_batch_size"]
    out = torch.empty((len(split), model.hidden_size), dtype=torch.float32)
    precision = model.config.get("precision", "fp32")

    def encode(ids, mask):
        with autocast(model.device, precision):
            return model.encode(ids, mask)

    with autocast(model.device, precision):  # weights cast once, as in score_split
        for batch, ids, mask in _batches(model, split, batch_size, "encode (frozen encoder)"):
            out[batch["rows"]] = retry_in_fp32(model.device, precision, encode, ids, mask).float().cpu()
    return out


def as_float32(outputs):
    """Head outputs in float32 (a bf16 forward gives bf16); other dtypes and non-tensors as they are."""
    if isinstance(outputs, torch.Tensor) and outputs.dtype in (torch.bfloat16, torch.float16):
        return outputs.float()
    return outputs
