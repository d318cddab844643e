"""The report's charts: matplotlib figures rendered to small inline SVG.

SVG rather than PNG keeps charts sharp at any zoom and small (text stays text: ``svg.fonttype
none``, and the page's font draws it). Every chart goes through :func:`to_svg`, which strips
what an inline SVG does not need (XML prolog, DOCTYPE, metadata, unreferenced ids, the long
font list), rounds coordinates to 0.1 pt and gives the ids it keeps a per-chart prefix, since
all charts share one HTML document and ids must not collide.

Labels that come from users (model and peer names) go through :func:`plain`, because
matplotlib reads ``$...$`` as math and fails on an unbalanced ``$``.
"""
from __future__ import annotations

import functools
import io
import itertools
import re

import numpy as np

from ktt_core.calibration_metrics import reliability_bins

#: Colours of the page (matplotlib's tab10, which the CSS repeats for the "this model" mark).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"

STYLE = {
    "svg.fonttype": "none",        # text as <text>, not one path per glyph
    "svg.hashsalt": "ktt-report",  # the same data gives the same file
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.transparent": True,
}

_ids = itertools.count(1)


def styled(draw):
    """Run a chart function under :data:`STYLE`: legends, ticks and grids read the rc
    parameters when they are made, not when the figure is."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def plain(text) -> str:
    """A user's text as a matplotlib label: shown literally, never parsed as math."""
    return str(text).replace("$", r"\$")


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs):
    """A figure (without pyplot, so no global state or GUI backend) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def to_svg(fig) -> str:
    """The figure as a compact SVG element to inline in HTML."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return compact_svg(buffer.getvalue(), prefix=f"c{next(_ids)}-")


def compact_svg(svg: str, prefix: str) -> str:
    """Strip, round and re-id matplotlib's SVG text (see the module docstring)."""
    svg = svg[svg.index("<svg"):]  # no prolog, no DOCTYPE
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    svg = re.sub(r'\s*xmlns(:xlink)?="[^"]*"', "", svg)  # HTML parsers know the SVG namespaces
    svg = re.sub(r"font-family:[^;\"]*;?\s*", "", svg)  # text inherits the page's font
    referenced = set(re.findall(r"#([\w.-]+)\)", svg)) | set(re.findall(r'href="#([\w.-]+)"', svg))

    def keep_or_drop_id(match: re.Match) -> str:
        name = match.group(1)
        return f' id="{prefix}{name}"' if name in referenced else ""

    svg = re.sub(r' id="([^"]*)"', keep_or_drop_id, svg)
    svg = re.sub(r"#([\w.-]+)(?=[)\"])", lambda m: f"#{prefix}{m.group(1)}" if m.group(1) in referenced
                 else m.group(0), svg)
    svg = re.sub(r'\b(d|x|y|transform|points|width|height|viewBox)="([^"]*)"',
                 lambda m: f'{m.group(1)}="{_round_numbers(m.group(2))}"', svg)
    svg = re.sub(r"\s*\n\s*", " ", svg)
    svg = re.sub(r">\s+<", "><", svg)
    svg = re.sub(r"<g>(<use [^>]*/>)</g>", r"\1", svg)  # a group around one marker is noise
    # Scale with the page: the CSS sets the width, the viewBox keeps the proportions.
    return re.sub(r'<svg width="[^"]*" height="[^"]*"', '<svg class="chart" role="img"', svg, count=1)


def _round_numbers(value: str) -> str:
    """Coordinates to 0.1 pt: invisible on screen, about a third of the file."""
    return re.sub(r"(-?\d+\.\d)\d+", r"\1", value)


def _number(value) -> float:
    """A value to plot: NaN (a gap) for None and anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


# -- the charts ----------------------------------------------------------------------------
@styled
def peers_chart(rows: list[dict], highlight: int) -> str:
    """Horizontal bars of exact-path accuracy and hierarchical F1 per model; row
    ``highlight`` (this report's model) is drawn in full colour, the peers paler."""
    names = [plain(r["name"]) for r in rows]
    fig, axes = new_figure(7.5, 0.9 + 0.42 * len(rows), ncols=2, sharey=True)
    y = np.arange(len(rows))
    for ax, key, title, colour in ((axes[0, 0], "exact_path_accuracy", "exact-path accuracy", BLUE),
                                   (axes[0, 1], "hierarchical_f1", "hierarchical F1", ORANGE)):
        values = [_number(r.get(key)) for r in rows]
        alphas = [1.0 if i == highlight else 0.45 for i in range(len(rows))]
        bars = ax.barh(y, np.nan_to_num(values), color=colour)
        for bar, alpha in zip(bars, alphas):
            bar.set_alpha(alpha)
        ax.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.3f}" for v in values], padding=3, fontsize=8)
        ax.set(title=title, xlim=(0, 1.12))
        ax.grid(axis="y", visible=False)
    axes[0, 0].set_yticks(y, names)
    axes[0, 0].invert_yaxis()
    axes[0, 0].get_yticklabels()[highlight].set_fontweight("bold")
    return to_svg(fig)


@styled
def reliability_chart(level: int, confidence: np.ndarray, correct: np.ndarray,
                      raw_confidence: np.ndarray | None, ece: float, raw_ece: float | None,
                      n_bins: int = 10) -> str:
    """Reliability diagram of one level (accuracy against confidence of the predicted
    class, per equal-width bin; the diagonal is perfect calibration) over a histogram of the
    confidences. Raw (before calibration) is drawn too when given."""
    fig, axes = new_figure(3.6, 4.4, nrows=2, height_ratios=(3, 1.1), sharex=True)
    top, bottom = axes[0, 0], axes[1, 0]
    top.plot([0, 1], [0, 1], color=GREY, linestyle=":", linewidth=1, label="perfect")
    edges = np.linspace(0, 1, n_bins + 1)
    series = [(confidence, ece, "calibrated" if raw_confidence is not None else "model", BLUE)]
    if raw_confidence is not None:
        series.insert(0, (raw_confidence, raw_ece, "raw", ORANGE))
    for values, score, name, colour in series:
        count, mean_confidence, accuracy = reliability_bins(values, correct, n_bins)
        filled = count > 0
        top.plot(mean_confidence[filled], accuracy[filled], marker="o", markersize=4, color=colour,
                 label=f"{name} (ECE {score:.3f})")
        bottom.stairs(count / max(len(values), 1), edges, color=colour, fill=len(series) == 1,
                      alpha=0.5 if len(series) == 1 else 1, linewidth=1.2)
    top.set_title(f"level {level}", loc="right", fontweight="bold")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(-0.02, 1.05))  # room for points at 0 and 1
    top.legend(loc="lower left", bbox_to_anchor=(0, 1.0), borderaxespad=0.2)  # above the plot, off the points
    bottom.set(xlabel="confidence of the predicted class", ylabel="share")
    return to_svg(fig)


@styled
def sweep_chart(sweep: list[dict], depth: int) -> str:
    """Quality (hierarchical P/R/F1, kept accuracy, full-path share) and where predictions
    stop, against the confidence threshold."""
    x = [_number(r.get("threshold")) for r in sweep]
    fig, axes = new_figure(9.5, 3.9, ncols=2)
    left, right = axes[0, 0], axes[0, 1]
    lines = (("hierarchical_precision", "hierarchical precision", BLUE, "-"),
             ("hierarchical_recall", "hierarchical recall", ORANGE, "-"),
             ("hierarchical_f1", "hierarchical F1", GREEN, "-"),
             ("kept_accuracy", "kept accuracy", RED, "--"),
             ("full_path_share", "full-path share", PURPLE, "--"))
    for key, label, colour, style in lines:
        if any(key in r for r in sweep):
            left.plot(x, [_number(r.get(key)) for r in sweep], label=label, color=colour, linestyle=style,
                      marker="o", markersize=3)
    left.set(title="quality against threshold", xlabel="threshold", ylim=(0, 1.02))
    if left.get_legend_handles_labels()[0]:
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)  # under the axes, off the lines
    stops = [f"stop_level_{d}" for d in range(1, depth + 1) if any(f"stop_level_{d}" in r for r in sweep)]
    if stops:
        shares = [np.nan_to_num([_number(r.get(key)) for r in sweep]) for key in stops]
        right.stackplot(x, shares, labels=[k.replace("stop_level_", "stop at level ") for k in stops], alpha=0.8)
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    right.set(title="where predictions stop", xlabel="threshold", ylabel="share of rows", ylim=(0, 1.0))
    return to_svg(fig)


#: Validation metrics worth a curve: scores in [0, 1] where higher is better.
TRAINING_CURVES = ("exact_path_accuracy", "hierarchical_f1", "leaf_accuracy", "level_1_accuracy")


@styled
def training_chart(records: list[dict]) -> str:
    """Loss (train and validation) and validation metrics per epoch; the best epoch (the
    last one marked ``best``, the one best.pt holds) as a dashed line."""
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    fig, axes = new_figure(9.5, 3.6, ncols=2)
    left, right = axes[0, 0], axes[0, 1]
    for key, label, colour in (("train_loss", "train", BLUE), ("val_loss", "validation", ORANGE)):
        values = [_number(r.get(key)) for r in records]
        if not all(np.isnan(values)):
            left.plot(epochs, values, marker="o", markersize=3, label=label, color=colour)
    left.set(title="loss", xlabel="epoch")
    for key in [f"val_{name}" for name in TRAINING_CURVES if any(f"val_{name}" in r for r in records)]:
        values = [_number(r.get(key)) for r in records]
        right.plot(epochs, values, marker="o", markersize=3, label=key[4:].replace("_", " "))
    right.set(title="validation", xlabel="epoch", ylim=(0, 1.02))
    best = [e for e, r in zip(epochs, records) if r.get("best")]
    for ax in (left, right):
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        if best:
            ax.axvline(best[-1], color=GREEN, linestyle="--", alpha=0.8, label=f"best (epoch {best[-1]})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return to_svg(fig)
