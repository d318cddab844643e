"""A training run as a model sees it: where it writes, how it logs, what it resumes from.

:class:`RunContext` is framework-neutral. Models trained in one go (scikit-learn, the
ensemble) end their ``fit`` with :meth:`RunContext.finish_fit`, which validates, logs and
saves exactly as an epoch of the core's torch loop does; the torch loop
(:mod:`ktt_core.training`) uses :meth:`RunContext.validation_record` for its epochs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ktt_core.decoding import Predictions
from ktt_core.files import append_jsonl
from ktt_core.metrics import compute_metrics


class _SingleProcess:
    """The cluster of a run without torchrun (the torch loop passes a real one)."""

    rank, world, local_rank, is_main, active = 0, 1, 0, True, False

    def gather(self, obj):
        return [obj]

    def broadcast(self, obj):
        return obj

    def barrier(self):
        return None


@dataclass
class RunContext:
    """Where and how a training run happens."""

    directory: Path | None          # None: keep nothing on disk (dry runs, tuning trials, tests)
    device: Any = "cpu"             # a torch.device for torch models; others ignore it
    epochs: int = 1
    seed: int = 0
    log: Callable = print
    cluster: Any = field(default_factory=_SingleProcess)
    cache_dir: Path | None = None   # where a model may cache derived data (tokens, features)
    on_epoch: Callable[[dict], None] | None = None  # sees each epoch's record; may raise to stop
    checkpoint_every: int = 0       # also write last.pt every N training steps (0: at epoch ends only)
    resume: dict | None = None      # load_checkpoint() of the run's last.pt, to continue from
    plugins: Any = None             # the plugin manager (models made of other models load them with it)
    workspace: Any = None           # the Workspace, and the dataset's name, of ``ktt train``
    dataset: str | None = None

    @property
    def writes(self) -> bool:
        return self.directory is not None and self.cluster.is_main

    def validation_record(self, model, epoch: int, val_targets, predictions: Predictions,
                          train_loss: float | None, seconds: float, **extra) -> dict:
        """One epoch's line of ``metrics.jsonl``: losses and every validation metric."""
        metrics = compute_metrics(model.hierarchy, val_targets, predictions.level_ids, predictions.path_probs)
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": predictions.loss,
                **extra, **{f"val_{k}": v for k, v in metrics.items()},
                "seconds": round(seconds, 2), "processes": self.cluster.world}

    @staticmethod
    def monitored(model, record: dict) -> float:
        """The value ``best.pt`` is chosen by (higher is better): the config's ``monitor``."""
        monitor = model.config.get("monitor", "exact_path_accuracy")
        if monitor == "loss":
            return -record["val_loss"] if record["val_loss"] is not None else -math.inf
        return record[f"val_{monitor}"]

    def finish_fit(self, model, val, predictions: Predictions, started: float,
                   train_loss: float | None = None, **extra) -> list[dict]:
        """For models trained in one go: the validation record of the fitted ``model``,
        logged and appended to ``metrics.jsonl``, and ``best.pt`` written. Returns the history."""
        from ktt_core.checkpoint import save_checkpoint

        record = self.validation_record(model, 1, val.targets, predictions, train_loss,
                                        time.perf_counter() - started, **extra)
        record["best"] = True
        score = self.monitored(model, record)
        self.log(f"fitted: val_loss {_fmt(record['val_loss'])}  "
                 f"val_{model.config.get('monitor', 'exact_path_accuracy')} {score:.4f}  {record['seconds']:.0f}s")
        if self.on_epoch is not None:
            self.on_epoch(record)
        if self.writes:
            save_checkpoint(self.directory / "best.pt", model, training_state={
                "epoch": 1, "step": 0, "epoch_done": True, "best_score": score,
                "monitor": model.config.get("monitor", "exact_path_accuracy"), "seconds": record["seconds"]})
            append_jsonl(self.directory / "metrics.jsonl", record)
        return [record]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
