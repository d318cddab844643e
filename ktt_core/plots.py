"""Pictures of results: training curves of a run."""
from __future__ import annotations

import json
from pathlib import Path

from ktt_core.files import atomic_path


def plot_training(metrics_jsonl: Path, target: Path, title: str = "") -> Path | None:
    """Loss and validation scores per epoch, from a run's metrics.jsonl, as a PNG titled
    ``title`` (model, dataset, run), with the epoch kept as best.pt marked."""
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
    for key in ("exact_path_accuracy", "hierarchical_f1", "level_1_accuracy"):
        if f"val_{key}" in records[0]:
            right.plot(epochs, [r[f"val_{key}"] for r in records], marker="o", label=key)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    best = [r["epoch"] for r in records if r.get("best")]
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
        if best:  # the last improvement is the epoch best.pt holds
            ax.axvline(best[-1], color="tab:green", linestyle="--", alpha=0.7, label=f"best.pt (epoch {best[-1]})")
    left.legend()
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target


def plot_comparison(rows: list[dict], target: Path, title: str,
                    metrics=("exact_path_accuracy", "level_1_accuracy", "hierarchical_f1")) -> Path:
    """Grouped bars: each model's headline metrics on one split, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [m for m in metrics if all(m in r for r in rows)]
    x = np.arange(len(metrics))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(metrics) + len(rows)), 4))
    for i, row in enumerate(rows):
        values = [row[m] for m in metrics]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row["model"])
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, [m.replace("_", " ") for m in metrics])
    ax.set(ylim=(0, 1.18), title=title)
    ax.legend(loc="upper left", ncol=len(rows), frameon=False)  # above the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target
