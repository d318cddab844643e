"""The one training loop every model shares.

Per epoch: train with the head's loss, validate, append the epoch's metrics to
``metrics.jsonl``, save ``last.pt`` (with optimizer state, to resume) and, when the
monitored validation metric improves, ``best.pt``.

Speed: batches of similar length (little padding), no host syncs inside the loop, bf16
autocast, fused AdamW and pinned memory on CUDA, optional ``torch.compile``. With
``freeze_encoder`` the encoder's features are computed once (and cached on disk) and only
the head trains, at head speed. Under torchrun the rows are sharded across processes and
metrics are reduced; rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ktt_core.checkpoint import save_checkpoint
from ktt_core.data.batches import EncodedSplit, LengthGroupedBatches, train_loader
from ktt_core.data.cache import cache_key, load_or_compute
from ktt_core.decoding import decode
from ktt_core.devices import autocast
from ktt_core.distributed import SINGLE, Cluster
from ktt_core.files import append_jsonl
from ktt_core.inference import encoder_features, predict
from ktt_core.metrics import compute_metrics


@dataclass
class RunContext:
    """Where and how a training run happens."""

    directory: Path | None          # None: keep nothing on disk (dry runs, tests)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epochs: int = 1
    seed: int = 0
    log: Callable = print
    cluster: Cluster = SINGLE
    cache_dir: Path | None = None   # where frozen-encoder features may be cached
    on_epoch: Callable[[dict], None] | None = None  # sees each epoch's record; may raise to stop


def make_scheduler(optimizer, config: dict, total_steps: int):
    if config["scheduler"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(config["warmup_ratio"] * total_steps)

    def linear(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear)


class FullModelSteps:
    """Batches of token ids through encoder and head; everything learns."""

    def __init__(self, model, train: EncodedSplit, val: EncodedSplit, run: RunContext):
        self.model, self.val, self.run = model, val, run
        cuda = run.device.type == "cuda"
        self.loader = train_loader(train, model.config["train_batch_size"], run.seed,
                                   model.config["group_by_length"], run.cluster.rank, run.cluster.world,
                                   pin_memory=cuda)
        self.sampler = self.loader.batch_sampler
        self.trained = model
        if run.cluster.active:
            # find_unused_parameters: encoders such as BERT carry a pooler the heads never use.
            self.trained = DistributedDataParallel(model, find_unused_parameters=True)
        self.forward = torch.compile(self.trained, dynamic=True) if model.config["compile"] else self.trained
        self.parameter_groups = model.parameter_groups()

    def __iter__(self):
        device = self.run.device
        for batch in self.loader:
            yield (batch["rows"], batch["targets"].to(device, non_blocking=True),
                   (batch["input_ids"].to(device, non_blocking=True),
                    batch["attention_mask"].to(device, non_blocking=True)))

    def validate(self):
        return predict(self.model, self.val, desc="validate", cluster=self.run.cluster,
                       forward=self.forward if not self.run.cluster.active else self.model)


class FrozenEncoderSteps:
    """Batches of cached encoder features through the head; only the head learns."""

    def __init__(self, model, train: EncodedSplit, val: EncodedSplit, run: RunContext):
        self.model, self.run = model, run
        model.encoder.requires_grad_(False)
        self.train_x = self._features(train)
        self.train_y = torch.from_numpy(train.targets)
        self.val_x, self.val_targets = self._features(val), val.targets
        self.sampler = LengthGroupedBatches(np.zeros(len(train), dtype=np.int64), model.config["train_batch_size"],
                                            run.seed, False, run.cluster.rank, run.cluster.world)
        self.trained = model.head
        if run.cluster.active:
            self.trained = DistributedDataParallel(model.head)
        self.forward = self.trained
        self.parameter_groups = [g for g in model.parameter_groups() if g["name"] != "encoder"]

    def _features(self, split: EncodedSplit) -> torch.Tensor:
        model = self.model
        weights = sum(float(p.detach().double().sum()) for p in model.encoder.parameters())
        key = cache_key(model.config["encoder"], model.config["pooling"], model.config.get("precision"),
                        weights, [len(x) for x in split.input_ids], split.input_ids[:50], len(split))
        stored = load_or_compute(self.run.cache_dir, "features", key,
                                 lambda: {"x": encoder_features(model, split)})
        return stored["x"]

    def __iter__(self):
        device = self.run.device
        for rows in self.sampler:
            rows = torch.as_tensor(rows)
            yield rows, self.train_y[rows].to(device), (self.train_x[rows].to(device),)

    @torch.inference_mode()
    def validate(self):
        head = self.model.head
        head.eval()
        scores, loss_sum = [], torch.zeros((), device=self.run.device)
        targets = torch.from_numpy(self.val_targets)
        for start in range(0, len(self.val_x), 4096):
            x = self.val_x[start:start + 4096].to(self.run.device)
            outputs = head(x)
            loss_sum += head.loss(outputs, targets[start:start + 4096].to(self.run.device)) * len(x)
            scores.append(head.path_log_scores(outputs).float().cpu())
        return decode(self.model.hierarchy, torch.cat(scores).numpy(), float(loss_sum) / len(self.val_x))


def fit(model, train: EncodedSplit, val: EncodedSplit, run: RunContext) -> list[dict]:
    config, cluster = model.config, run.cluster
    model.to(run.device)
    steps = (FrozenEncoderSteps if config["freeze_encoder"] else FullModelSteps)(model, train, val, run)
    optimizer = torch.optim.AdamW(steps.parameter_groups, weight_decay=config["weight_decay"],
                                  fused=run.device.type == "cuda")
    scheduler = make_scheduler(optimizer, config, run.epochs * len(steps.sampler))
    monitor = config["monitor"]
    best = -math.inf
    history = []
    for epoch in range(1, run.epochs + 1):
        started = time.perf_counter()
        steps.sampler.set_epoch(epoch)
        model.train()
        if config["freeze_encoder"]:
            model.encoder.eval()
        # Losses stay on the device: reading them every step would stall a GPU.
        loss_sum = torch.zeros((), device=run.device)
        seen = []
        join = steps.trained.join() if cluster.active else contextlib.nullcontext()
        bar = tqdm(steps, total=len(steps.sampler), desc=f"epoch {epoch}/{run.epochs}", leave=False,
                   disable=None if cluster.is_main else True)
        with join:
            for rows, targets, inputs in bar:
                with autocast(run.device, config["precision"]):
                    loss = model.head.loss(steps.forward(*inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(steps.parameter_groups[-1]["params"] if config["freeze_encoder"]
                                                   else model.parameters(), config["grad_clip"])
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().float() * len(rows)
                seen.append(rows)
        local_rows = torch.cat(seen).numpy() if seen else np.empty(0, np.int64)
        parts = cluster.gather((local_rows, float(loss_sum)))
        all_rows = np.concatenate([p[0] for p in parts])
        train_loss = sum(p[1] for p in parts) / max(1, len(all_rows))
        predictions = steps.validate()
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": predictions.loss,
                  "train_rows": int(len(all_rows)), "train_rows_unique": int(len(np.unique(all_rows))),
                  **{f"val_{k}": v for k, v in compute_metrics(
                      model.hierarchy, val.targets, predictions.level_ids, predictions.path_probs).items()},
                  "seconds": round(time.perf_counter() - started, 2), "processes": cluster.world}
        score = -record["val_loss"] if monitor == "loss" else record[f"val_{monitor}"]
        improved = score > best
        best = max(best, score)
        record["best"] = improved
        history.append(record)
        if cluster.is_main:
            run.log(f"epoch {epoch}: train_loss {train_loss:.4f}  val_loss {predictions.loss:.4f}  "
                    f"val_{monitor} {score:.4f}{'  (best)' if improved else ''}  {record['seconds']:.0f}s")
        if run.on_epoch is not None:
            run.on_epoch(record)
        if run.directory is not None and cluster.is_main:
            state = {"epoch": epoch, "best_score": best, "monitor": monitor}
            append_jsonl(run.directory / "metrics.jsonl", record)
            save_checkpoint(run.directory / "last.pt", model, optimizer.state_dict(), state)
            if improved:
                save_checkpoint(run.directory / "best.pt", model, optimizer.state_dict(), state)
        cluster.barrier()
    return history
