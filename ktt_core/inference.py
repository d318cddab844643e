"""Running a model over texts: path scores, decoded predictions, features, reference sets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ktt_core.data.batches import EncodedSplit, eval_loader
from ktt_core.decoding import Predictions, decode
from ktt_core.devices import autocast
from ktt_core.distributed import SINGLE, Cluster
from ktt_core.hierarchy import format_path


def _batches(model, split: EncodedSplit, batch_size: int, desc: str, cluster: Cluster = SINGLE):
    device = model.device
    loader = eval_loader(split, batch_size, cluster.rank, cluster.world, pin_memory=device.type == "cuda")
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if cluster.is_main else True):
        yield (batch, batch["input_ids"].to(device, non_blocking=True),
               batch["attention_mask"].to(device, non_blocking=True))


@torch.inference_mode()
def predict(model, split: EncodedSplit, batch_size: int | None = None, desc: str = "predict",
            cluster: Cluster = SINGLE, forward=None) -> Predictions:
    """Decode ``split``; with known targets the mean loss is computed too.

    Across processes each rank scores its share of the rows and all ranks receive the
    whole result. ``forward`` may replace ``model.forward`` (a compiled version).
    """
    model.eval()
    forward = model if forward is None else forward  # a compiled module has no truth value
    batch_size = batch_size or model.config["eval_batch_size"]
    precision = model.config.get("precision", "fp32")
    has_targets = len(split) > 0 and bool((split.targets >= 0).all())
    loss_sum = torch.zeros((), device=model.device)
    h = model.hierarchy
    rows, chunks, level_chunks = [], [], []
    for batch, ids, mask in _batches(model, split, batch_size, desc, cluster):
        with autocast(model.device, precision):
            outputs = forward(ids, mask)
            if has_targets:
                loss_sum += model.head.loss(outputs, batch["targets"].to(model.device)).float() * len(ids)
        rows.append(batch["rows"])
        chunks.append(model.head.path_log_scores(outputs).float().cpu())
        levels = model.head.level_log_scores(outputs)
        if levels is not None:
            level_chunks.append(torch.cat([x.float() for x in levels], dim=1).cpu())
    local = (torch.cat(rows).numpy() if rows else np.empty(0, np.int64),
             torch.cat(chunks).numpy() if chunks else np.empty((0, h.n_leaves), np.float32),
             torch.cat(level_chunks).numpy() if level_chunks else None,
             float(loss_sum))
    scores = np.empty((len(split), h.n_leaves), dtype=np.float32)
    level_scores = np.empty((len(split), h.n_classes), dtype=np.float32) if local[2] is not None else None
    total_loss = 0.0
    for part_rows, part_scores, part_levels, part_loss in cluster.gather(local):
        scores[part_rows] = part_scores
        if level_scores is not None:
            level_scores[part_rows] = part_levels
        total_loss += part_loss
    loss = total_loss / len(split) if has_targets else None
    per_level = None if level_scores is None else h.split_levels(level_scores)
    return decode(h, scores, loss, per_level)


@torch.inference_mode()
def encoder_features(model, split: EncodedSplit, batch_size: int | None = None) -> torch.Tensor:
    """(N, hidden) pooled encoder features of every row, in row order (for a frozen encoder)."""
    model.eval()
    batch_size = batch_size or model.config["eval_batch_size"]
    out = torch.empty((len(split), model.hidden_size), dtype=torch.float32)
    for batch, ids, mask in _batches(model, split, batch_size, "encode (frozen encoder)"):
        with autocast(model.device, model.config.get("precision", "fp32")):
            out[batch["rows"]] = model.encode(ids, mask).float().cpu()
    return out


@torch.inference_mode()
def predict_with_features(model, split: EncodedSplit, batch_size: int | None = None,
                          desc: str = "predict") -> tuple[Predictions, np.ndarray]:
    """Decoded predictions and the pooled features the drift monitor compares, in row order."""
    model.eval()
    batch_size = batch_size or model.config["eval_batch_size"]
    h = model.hierarchy
    features = np.empty((len(split), model.feature_pool.output_size), dtype=np.float32)
    scores = np.empty((len(split), h.n_leaves), dtype=np.float32)
    level_scores = None
    for batch, ids, mask in _batches(model, split, batch_size, desc):
        with autocast(model.device, model.config.get("precision", "fp32")):
            outputs, pooled = model.forward_with_features(ids, mask)
        rows = batch["rows"].numpy()
        features[rows] = pooled.float().cpu().numpy()
        scores[rows] = model.head.path_log_scores(outputs).float().cpu().numpy()
        levels = model.head.level_log_scores(outputs)
        if levels is not None:
            if level_scores is None:
                level_scores = np.empty((len(split), h.n_classes), dtype=np.float32)
            level_scores[rows] = torch.cat([x.float() for x in levels], dim=1).cpu().numpy()
    per_level = None if level_scores is None else h.split_levels(level_scores)
    return decode(h, scores, None, per_level), features


def reference_set(model, split: EncodedSplit, batch_size: int | None = None) -> pd.DataFrame:
    """Pooled features and path scores per row, plus target and prediction (drift reference)."""
    predictions, features = predict_with_features(model, split, batch_size, desc="reference set")
    h = model.hierarchy
    leaf_names = [format_path(h.leaf_path(i)) for i in range(h.n_leaves)]
    columns = {str(i): features[:, i] for i in range(features.shape[1])}
    columns.update({name: predictions.path_probs[:, i] for i, name in enumerate(leaf_names)})
    known = split.targets[:, -1] >= 0
    columns["target"] = [leaf_names[t] if ok else None for t, ok in zip(split.targets[:, -1], known)]
    columns["prediction"] = [leaf_names[p] for p in predictions.leaf_ids]
    return pd.DataFrame(columns)
