"""The one training loop every model shares.

Per epoch: train with the head's loss, validate, append the epoch's metrics to
``metrics.jsonl``, save ``last.pt`` (with optimizer state, to resume) and, when the
monitored validation metric improves, ``best.pt``. With ``checkpoint_every`` N, ``last.pt``
is also written every N steps, with the position inside the epoch.

Resuming (``RunContext.resume``, from ``ktt train --resume``) restores the weights,
optimizer, scheduler, RNG states, best score and the position, and skips the batches of
the epoch already trained: the sampler is seeded per epoch, so the rest of the epoch sees
the same batches in the same order as an uninterrupted run would, with the same dropout
masks. On the same device and thread count, a resumed run ends bit-identical to one that
never stopped. See docs/reliability.md.

Speed: batches of similar length (little padding), no host syncs inside the loop, bf16
autocast on CUDA and on CPUs with native bf16 (:func:`ktt_core.devices.use_bf16`), fused
AdamW (CUDA and CPU) and pinned memory on CUDA, optional ``torch.compile``. With
``freeze_encoder`` the encoder's features are computed once (and cached on disk) and only
the head trains, at head speed. Under torchrun the rows are sharded across processes and
metrics are reduced; rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ktt_core.checkpoint import save_checkpoint
from ktt_core.data.batches import EncodedSplit, LengthGroupedBatches, train_loader
from ktt_core.data.cache import cache_key, load_or_compute
from ktt_core.contract import Scores
from ktt_core.decoding import decode_scores
from ktt_core.devices import autocast, retry_in_fp32, rng_state, set_rng_state, use_bf16
from ktt_core.errors import KttError
from ktt_core.files import append_jsonl, atomic_write_text
from ktt_core.inference import encoder_features, predict
from ktt_core.runs import RunContext


class ResumableBatches(Sampler):
    """An epoch-seeded batch sampler whose epoch may start part-way through.

    ``set_epoch(e, skip)`` makes the next pass yield epoch ``e``'s batches from number
    ``skip`` on: a resumed run must not train again on the batches its checkpoint holds.
    """

    def __init__(self, batches):
        self.batches, self.skip = batches, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batches.set_epoch(epoch)
        self.skip = skip

    def skipped(self) -> list[list[int]]:
        """The batches this epoch skips (their rows still count in the epoch's statistics)."""
        return list(itertools.islice(iter(self.batches), self.skip))

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return len(self.batches)  # the whole epoch: the scheduler's length must not change


@dataclass
class Position:
    """Where training (re)starts: ``step`` batches of ``epoch`` are already trained."""

    epoch: int = 1
    step: int = 0
    best: float = -math.inf
    seconds: float = 0.0                 # time already spent in this epoch
    loss_sum: torch.Tensor | None = None  # running loss sum of this epoch's trained batches
    rng: dict | None = None              # RNG state to restore just before the next step


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
        loader = train_loader(train, model.config["train_batch_size"], run.seed,
                              model.config["group_by_length"], run.cluster.rank, run.cluster.world,
                              pin_memory=cuda)
        # The same loader, around a sampler that can start an epoch part-way (resume).
        self.sampler = ResumableBatches(loader.batch_sampler)
        self.loader = DataLoader(train, batch_sampler=self.sampler, collate_fn=loader.collate_fn,
                                 pin_memory=loader.pin_memory)
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
        self.sampler = ResumableBatches(LengthGroupedBatches(
            np.zeros(len(train), dtype=np.int64), model.config["train_batch_size"], run.seed, False,
            run.cluster.rank, run.cluster.world))
        self.trained = model.head
        if run.cluster.active:
            self.trained = DistributedDataParallel(model.head)
        self.forward = self.trained
        self.parameter_groups = [g for g in model.parameter_groups() if g["name"] != "encoder"]

    def _features(self, split: EncodedSplit) -> torch.Tensor:
        model = self.model
        weights = sum(float(p.detach().double().sum()) for p in model.encoder.parameters())
        # The precision used, not the setting: "auto" gives bf16 features on one machine, fp32 on another.
        precision = "bf16" if use_bf16(self.run.device, model.config.get("precision", "fp32")) else "fp32"
        key = cache_key(model.config["encoder"], model.config["pooling"], precision,
                        weights, [len(x) for x in split.input_ids], split.input_ids[:50], len(split))
        # Computing draws from the global RNG (each DataLoader pass seeds itself) and a cache
        # hit does not: fork it, so a seed gives the same run whether the cache is warm or not.
        with torch.random.fork_rng(devices=[]):
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
        paths, levels, loss_sum = [], [], torch.zeros((), device=self.run.device)
        targets = torch.from_numpy(self.val_targets)
        for start in range(0, len(self.val_x), 4096):
            x = self.val_x[start:start + 4096].to(self.run.device)
            outputs = head(x)
            loss_sum += head.loss(outputs, targets[start:start + 4096].to(self.run.device)) * len(x)
            path_scores, level_scores = self.model.head_scores(outputs)
            paths.append(path_scores.cpu())
            levels.append(level_scores.cpu() if level_scores is not None else None)
        h = self.model.hierarchy
        per_level = None if levels[0] is None else h.split_levels(torch.cat(levels).numpy())
        return decode_scores(h, Scores(torch.cat(paths).numpy(), per_level, None,
                                       float(loss_sum) / len(self.val_x)))


#: Devices where AdamW runs as one fused kernel per step (CPU since torch 2.4): fewer passes
#: over the parameters than the per-tensor loop.
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def fit(model, train: EncodedSplit, val: EncodedSplit, run: RunContext) -> list[dict]:
    """Train for ``run.epochs`` epochs (from ``run.resume``'s position when given); returns
    every epoch's record, those of a resumed run's earlier epochs included."""
    config, cluster = model.config, run.cluster
    if run.resume is not None:
        model.load_weights(run.resume)  # before the steps: frozen-encoder features come from them
    model.to(run.device)
    steps = (FrozenEncoderSteps if config["freeze_encoder"] else FullModelSteps)(model, train, val, run)
    optimizer = torch.optim.AdamW(steps.parameter_groups, weight_decay=config["weight_decay"],
                                  fused=run.device.type in FUSED_ADAMW_DEVICES)
    n_batches = len(steps.sampler)
    scheduler = make_scheduler(optimizer, config, run.epochs * n_batches)
    monitor = config["monitor"]
    writes = run.directory is not None and cluster.is_main
    mid_epoch = run.checkpoint_every if run.directory is not None else 0
    if mid_epoch and cluster.active:
        raise KttError("--checkpoint-every is not supported under torchrun (checkpoints are written at epoch ends)")
    fingerprint = data_fingerprint(train, val) if run.directory is not None else None
    position, history = Position(), []
    if run.resume is not None:
        position = restore(run.resume, optimizer, scheduler, run, fingerprint, n_batches)
        if writes:
            history = trim_metrics(run.directory / "metrics.jsonl", position.epoch - 1)
        if position.step == 0 and position.rng is not None:
            # At an epoch boundary the state was saved before the next epoch's DataLoader
            # drew its seed, so it is restored before that happens again.
            set_rng_state(position.rng)
            position.rng = None
    best = position.best

    def state(epoch: int, step: int, done: bool, seconds: float) -> dict:
        return {"epoch": epoch, "step": step, "epoch_done": done, "best_score": best, "monitor": monitor,
                "seconds": seconds, "processes": cluster.world, "batches_per_epoch": n_batches,
                "data_sha256": fingerprint}

    def forward_backward(inputs, targets) -> torch.Tensor:
        """One batch's loss, and its gradients (zeroed first, so that it may be repeated)."""
        with autocast(run.device, config["precision"]):
            loss = model.head.loss(steps.forward(*inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    for epoch in range(position.epoch, run.epochs + 1):
        resumed = position if epoch == position.epoch and position.step > 0 else None
        started = time.perf_counter() - (resumed.seconds if resumed else 0.0)
        steps.sampler.set_epoch(epoch, resumed.step if resumed else 0)
        model.train()
        if config["freeze_encoder"]:
            model.encoder.eval()
        # Losses stay on the device: reading them every step would stall a GPU.
        loss_sum = torch.zeros((), device=run.device)
        if resumed is not None and resumed.loss_sum is not None:
            loss_sum = resumed.loss_sum.to(run.device)
        seen = [torch.as_tensor(rows, dtype=torch.int64) for rows in steps.sampler.skipped()]
        pending_rng = resumed.rng if resumed else None
        step = steps.sampler.skip
        join = steps.trained.join() if cluster.active else contextlib.nullcontext()
        bar = tqdm(steps, total=n_batches, initial=step, desc=f"epoch {epoch}/{run.epochs}", leave=False,
                   disable=None if cluster.is_main else True)
        progress = ProgressLines(run.log if cluster.is_main and bar.disable else None,
                                 f"epoch {epoch}/{run.epochs}", n_batches, step)
        with join:
            for rows, targets, inputs in bar:
                if pending_rng is not None:
                    # Mid-epoch: the state was saved after this epoch's DataLoader drew its
                    # seed, which it has just done again; restore it now, before any dropout.
                    set_rng_state(pending_rng)
                    pending_rng = None
                # Not under torchrun: a step repeated on one process would desynchronise DDP.
                loss = (forward_backward(inputs, targets) if cluster.active
                        else retry_in_fp32(run.device, config["precision"], forward_backward, inputs, targets))
                if config["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(steps.parameter_groups[-1]["params"] if config["freeze_encoder"]
                                                   else model.parameters(), config["grad_clip"])
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().float() * len(rows)
                seen.append(rows)
                step += 1
                progress.step(step, loss_sum, sum(len(r) for r in seen))
                # Not after the last batch: the epoch-end checkpoint follows at once.
                if writes and mid_epoch and step % mid_epoch == 0 and step < n_batches:
                    save_checkpoint(run.directory / "last.pt", model, optimizer.state_dict(),
                                    state(epoch, step, False, time.perf_counter() - started),
                                    {"scheduler": scheduler.state_dict(), "rng": [rng_state()],
                                     "loss_sum": loss_sum.detach().clone()})
        if pending_rng is not None:  # nothing was left to train in this epoch
            set_rng_state(pending_rng)
        local_rows = torch.cat(seen).numpy() if seen else np.empty(0, np.int64)
        parts = cluster.gather((local_rows, float(loss_sum)))
        all_rows = np.concatenate([p[0] for p in parts])
        train_loss = sum(p[1] for p in parts) / max(1, len(all_rows))
        predictions = steps.validate()
        record = run.validation_record(model, epoch, val.targets, predictions, train_loss,
                                       time.perf_counter() - started, train_rows=int(len(all_rows)),
                                       train_rows_unique=int(len(np.unique(all_rows))))
        score = run.monitored(model, record)
        improved = score > best
        best = max(best, score)
        record["best"] = improved
        history.append(record)
        if cluster.is_main:
            run.log(f"epoch {epoch}: train_loss {train_loss:.4f}  val_loss {predictions.loss:.4f}  "
                    f"val_{monitor} {score:.4f}{'  (best)' if improved else ''}  {record['seconds']:.0f}s")
        if run.on_epoch is not None:
            run.on_epoch(record)
        rngs = cluster.gather(rng_state()) if run.directory is not None else None  # every rank's, for resume
        if writes:
            # last.pt is the commit point, written last: a crash before it re-runs this epoch
            # (deterministically), which rewrites best.pt and drops the metrics line again.
            done = state(epoch, n_batches, True, record["seconds"])
            if improved:
                save_checkpoint(run.directory / "best.pt", model, None, done)  # weights only: never resumed
            append_jsonl(run.directory / "metrics.jsonl", record)
            save_checkpoint(run.directory / "last.pt", model, optimizer.state_dict(), done,
                            {"scheduler": scheduler.state_dict(), "rng": rngs, "loss_sum": None})
        cluster.barrier()
    return history


class ProgressLines:
    """Without a terminal (a log file, CI) tqdm draws nothing: print a line every
    ``KTT_PROGRESS_SECONDS`` (default 60) instead, so a long epoch shows it is alive."""

    def __init__(self, log, what: str, total: int, start: int):
        self.log, self.what, self.total = log, what, total
        self.every = float(os.environ.get("KTT_PROGRESS_SECONDS", "60") or 60)
        self.started = self.last = time.perf_counter()
        self.first = start

    def step(self, step: int, loss_sum, rows: int) -> None:
        now = time.perf_counter()
        if self.log is None or now - self.last < self.every or step >= self.total:
            return
        self.last = now
        rate = (step - self.first) / max(now - self.started, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("nan")
        self.log(f"{self.what}: step {step}/{self.total} ({100 * step / self.total:.0f}%), "
                 f"train_loss {float(loss_sum) / max(rows, 1):.4f}, {rate:.2f} steps/s, ~{left / 60:.1f} min left")


def data_fingerprint(train: EncodedSplit, val: EncodedSplit) -> str:
    """SHA-256 of both splits' texts and targets: a run resumes only on the data it started on."""
    h = hashlib.sha256()
    for split in (train, val):
        h.update(len(split).to_bytes(8, "little"))
        h.update("\0".join(split.texts).encode("utf-8", "surrogatepass"))
        h.update(np.ascontiguousarray(split.targets, dtype=np.int64).tobytes())
    return h.hexdigest()


def restore(checkpoint: dict, optimizer, scheduler, run: RunContext, fingerprint: str,
            n_batches: int) -> Position:
    """Optimizer, scheduler, best score and position from a ``last.pt``; where to go on."""
    path, training, saved = checkpoint["path"], checkpoint["training"], checkpoint.get("resume")
    if not saved or checkpoint.get("optimizer") is None or "epoch_done" not in training:
        raise KttError(f"{path}: checkpoint has no resume state (written by an older KTT); cannot resume from it")
    if training.get("data_sha256") != fingerprint:
        raise KttError(f"{path}: the dataset's train/val rows changed since this run started; cannot resume")
    done = bool(training["epoch_done"])
    if not done and (training.get("processes") != run.cluster.world or training.get("batches_per_epoch") != n_batches):
        raise KttError(f"{path}: a mid-epoch checkpoint resumes only with the batches it was cut from "
                       f"({training.get('processes')} process(es), {training.get('batches_per_epoch')} "
                       "batches per epoch)")
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rngs = saved.get("rng") or [None]
    rng = rngs[run.cluster.rank] if len(rngs) == run.cluster.world else rngs[0]
    if done:
        return Position(epoch=int(training["epoch"]) + 1, best=float(training["best_score"]), rng=rng)
    return Position(epoch=int(training["epoch"]), step=int(training["step"]), best=float(training["best_score"]),
                    seconds=float(training.get("seconds", 0.0)), loss_sum=saved.get("loss_sum"), rng=rng)


def trim_metrics(path: Path, last_epoch: int) -> list[dict]:
    """Keep the records of epochs up to ``last_epoch`` (those the checkpoint holds), so a
    resumed run does not log an epoch twice; a line cut short by a crash is dropped."""
    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= last_epoch:
                kept.append(record)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return kept
