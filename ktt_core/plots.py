"""Pictures of results: training curves of a run."""
from __future__ import annotations

import json
from pathlib import Path

from ktt_core.files import atomic_path


def plot_training(metrics_jsonl: Path, target: Path) -> Path | None:
    """Loss and validation scores per epoch, from a run's metrics.jsonl, as a PNG."""
    if not metrics_jsonl.is_file():
        return None
    records = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train")
    left.plot(epochs, [r["val_loss"] for r in records], marker="o", label="validation")
    left.set(title="loss", xlabel="epoch")
    left.legend()
    for key in ("exact_path_accuracy", "hierarchical_f1", "level_1_accuracy"):
        if f"val_{key}" in records[0]:
            right.plot(epochs, [r[f"val_{key}"] for r in records], marker="o", label=key)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target
