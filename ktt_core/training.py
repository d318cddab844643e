"""The one training loop every model shares.

Per epoch: train with the head's loss, validate, append the epoch's metrics to
``metrics.jsonl``, save ``last.pt`` (with optimizer state, to resume) and, when the
monitored validation metric improves, ``best.pt``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ktt_core.checkpoint import save_checkpoint
from ktt_core.data.batches import EncodedSplit, train_loader
from ktt_core.files import append_jsonl
from ktt_core.inference import predict
from ktt_core.metrics import compute_metrics


@dataclass
class RunContext:
    """Where and how a training run happens."""

    directory: Path | None          # None: keep nothing on disk (dry runs, tests)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epochs: int = 1
    seed: int = 0
    log: callable = print


def make_scheduler(optimizer, config: dict, total_steps: int):
    if config["scheduler"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(config["warmup_ratio"] * total_steps)

    def linear(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear)


def fit(model, train: EncodedSplit, val: EncodedSplit, run: RunContext) -> list[dict]:
    config = model.config
    model.to(run.device)
    optimizer = torch.optim.AdamW(model.parameter_groups(), weight_decay=config["weight_decay"])
    loader = train_loader(train, config["train_batch_size"], run.seed)
    scheduler = make_scheduler(optimizer, config, run.epochs * len(loader))
    monitor = config["monitor"]
    best = -math.inf
    history = []
    for epoch in range(1, run.epochs + 1):
        started = time.perf_counter()
        model.train()
        # Losses stay on the device; reading them every step would stall the GPU.
        loss_sum = torch.zeros((), device=run.device)
        bar = tqdm(loader, desc=f"epoch {epoch}/{run.epochs}", leave=False, disable=None)
        for step, batch in enumerate(bar, 1):
            targets = batch["targets"].to(run.device)
            outputs = model(batch["input_ids"].to(run.device), batch["attention_mask"].to(run.device))
            loss = model.head.loss(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / step:.4f}")
        train_loss = float(loss_sum) / max(1, len(loader))
        predictions = predict(model, val, desc="validate")
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": predictions.loss,
                  **{f"val_{k}": v for k, v in compute_metrics(
                      model.hierarchy, val.targets, predictions.level_ids, predictions.path_probs).items()},
                  "seconds": round(time.perf_counter() - started, 2)}
        score = -record["val_loss"] if monitor == "loss" else record[f"val_{monitor}"]
        improved = score > best
        best = max(best, score)
        record["best"] = improved
        history.append(record)
        run.log(f"epoch {epoch}: train_loss {train_loss:.4f}  val_loss {predictions.loss:.4f}  "
                f"val_{monitor} {score:.4f}{'  (best)' if improved else ''}  {record['seconds']:.0f}s")
        if run.directory is not None:
            state = {"epoch": epoch, "best_score": best, "monitor": monitor}
            append_jsonl(run.directory / "metrics.jsonl", record)
            save_checkpoint(run.directory / "last.pt", model, optimizer.state_dict(), state)
            if improved:
                save_checkpoint(run.directory / "best.pt", model, optimizer.state_dict(), state)
    return history
