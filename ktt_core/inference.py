"""Running a model over texts: path scores, decoded predictions, reference sets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ktt_core.data.batches import EncodedSplit, eval_loader
from ktt_core.decoding import Predictions, decode
from ktt_core.hierarchy import format_path


def _batches(model, split: EncodedSplit, batch_size: int, desc: str):
    device = model.device
    for batch in tqdm(eval_loader(split, batch_size), desc=desc, leave=False, disable=None):
        yield batch, batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.inference_mode()
def predict(model, split: EncodedSplit, batch_size: int | None = None, desc: str = "predict") -> Predictions:
    """Decode ``split``; with known targets the mean loss is computed too."""
    model.eval()
    batch_size = batch_size or model.config["eval_batch_size"]
    scores = torch.empty((len(split), model.hierarchy.n_leaves), dtype=torch.float32)
    has_targets = len(split) > 0 and bool((split.targets >= 0).all())
    loss_sum = torch.zeros((), device=model.device)
    for batch, ids, mask in _batches(model, split, batch_size, desc):
        outputs = model(ids, mask)
        scores[batch["rows"]] = model.head.path_log_scores(outputs).float().cpu()
        if has_targets:
            loss_sum += model.head.loss(outputs, batch["targets"].to(model.device)) * len(ids)
    loss = float(loss_sum) / len(split) if has_targets else None
    return decode(model.hierarchy, scores.numpy(), loss)


@torch.inference_mode()
def reference_set(model, split: EncodedSplit, batch_size: int | None = None) -> pd.DataFrame:
    """Pooled features and path scores per row, plus target and prediction (drift reference)."""
    model.eval()
    batch_size = batch_size or model.config["eval_batch_size"]
    width = model.feature_pool.output_size
    features = np.empty((len(split), width), dtype=np.float32)
    scores = np.empty((len(split), model.hierarchy.n_leaves), dtype=np.float32)
    for batch, ids, mask in _batches(model, split, batch_size, "reference set"):
        outputs, pooled = model.forward_with_features(ids, mask)
        rows = batch["rows"].numpy()
        features[rows] = pooled.float().cpu().numpy()
        scores[rows] = model.head.path_log_scores(outputs).float().cpu().numpy()
    predictions = decode(model.hierarchy, scores)
    h = model.hierarchy
    leaf_names = [format_path(h.leaf_path(i)) for i in range(h.n_leaves)]
    columns = {str(i): features[:, i] for i in range(width)}
    columns.update({name: predictions.path_probs[:, i] for i, name in enumerate(leaf_names)})
    known = split.targets[:, -1] >= 0
    columns["target"] = [leaf_names[t] if ok else None for t, ok in zip(split.targets[:, -1], known)]
    columns["prediction"] = [leaf_names[p] for p in predictions.leaf_ids]
    return pd.DataFrame(columns)
