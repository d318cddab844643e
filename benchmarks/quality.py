"""Quality side by side: every installed KTT model and the peer baselines on one split.

    python benchmarks/quality.py DATA --text COL --labels COL [--sep " > "] [--epochs N]
        [--freeze-encoder] [--models a,b] [--ensemble a,b] [--rows N] [--out docs/quality]

The data is imported with ``--split random --keep-duplicates --seed 0`` (rows shuffled with
numpy default_rng(0), first 80% train, next 10% validation, last 10% test), the split of
``../shared/tools/peer_baselines.py``. Each KTT model is trained with ``ktt train`` and
scored with ``ktt test`` (both decoding modes); the peers are that tool's two baselines
(TF-IDF 1-2 grams + LogisticRegression over full paths; hiclass
LocalClassifierPerParentNode(LogisticRegression)), trained on the same train rows and
scored on the same test rows with KTT's metrics. Options that a model does not have
(``--epochs`` and ``--freeze-encoder`` for a TF-IDF model, a ``--set`` key) are not passed
to it. ``--ensemble a,b`` (repeatable) then trains an ``ensemble`` of those models' runs.
Every row has its train time, its prediction throughput (texts/s through the scoring
call, test split, after a warm-up) and the size of its checkpoint on disk. Writes
``OUT.md`` (a Markdown table), ``OUT.json`` and ``OUT.png`` (a bar chart).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from ktt_core.cli import cli
from ktt_core.data.datasets import Dataset
from ktt_core.devices import resolve_device
from ktt_core.files import atomic_path, atomic_write_json, atomic_write_text
from ktt_core.metrics import compute_metrics
from ktt_core.plugins import Plugins

COLUMNS = ("exact_path_accuracy", "level_1_accuracy", "level_2_accuracy", "level_1_macro_f1",
           "level_2_macro_f1", "hierarchical_f1", "consistency_rate_consistent", "consistency_rate_per_level")


def ktt(workspace: Path, *args) -> str:
    result = CliRunner().invoke(cli, ["--workspace", str(workspace), *map(str, args)])
    if result.exit_code != 0:
        raise SystemExit(f"ktt {' '.join(map(str, args))} failed: {result.output.strip()}")
    return result.output


def args_for(model: str, options: dict) -> list[str]:
    """``ktt train`` options for ``model``: only those its config has (see the docstring)."""
    from ktt_core.config import defaults_for

    keys = defaults_for(Plugins().model(model))
    args = ["--device", options["device"]]
    if "epochs" in keys:
        args += ["--epochs", str(options["epochs"])]
    if options["freeze_encoder"] and "freeze_encoder" in keys:
        args.append("--freeze-encoder")
    for item in options["set"]:
        if item.partition("=")[0] in keys:
            args += ["--set", item]
    return args


def prediction_speed(workspace: Path, model: str, texts: list[str]) -> float:
    """Texts per second through the scoring call, after a warm-up batch."""
    from ktt_core.jobs import load_model
    from ktt_core.scoring import predict

    plugins = Plugins()
    loaded = load_model(plugins, model, latest_run(workspace, model) / "best.pt")
    loaded.to(resolve_device("auto"))
    spec = plugins.model(model)
    predict(plugins, spec, loaded, texts[:64])
    started = time.perf_counter()
    predict(plugins, spec, loaded, texts)
    return len(texts) / (time.perf_counter() - started)


def latest_run(workspace: Path, model: str) -> Path:
    return max((workspace / "runs" / model / "data").iterdir(), key=lambda p: p.stat().st_mtime)


def run_model(workspace: Path, model: str, train_args: list[str], name: str | None = None) -> dict:
    started = time.perf_counter()
    ktt(workspace, "train", model, "data", *train_args)
    seconds = time.perf_counter() - started
    metrics = json.loads(ktt(workspace, "test", model, "data", "--json"))
    per_level = json.loads(ktt(workspace, "test", model, "data", "--json", "--decoding", "per-level"))
    metrics["per_level_exact_path_accuracy"] = per_level["exact_path_accuracy"]
    texts = list(Dataset(workspace / "datasets" / "data").split("test")["text"])
    row = {"name": name or model, "kind": "KTT", "train_seconds": round(seconds, 1), **metrics,
           "texts_per_second": round(prediction_speed(workspace, model, texts), 1),
           "size_mb": round((latest_run(workspace, model) / "best.pt").stat().st_size / 2**20, 1),
           "train_args": train_args}
    print(row["name"], {k: round(metrics[k], 4) for k in COLUMNS if k in metrics},
          f"train {row['train_seconds']} s, {row['texts_per_second']} texts/s, {row['size_mb']} MB", flush=True)
    return row


def run_peers(dataset: Dataset) -> list[dict]:
    """The baselines of ../shared/tools/peer_baselines.py, scored with KTT's metrics."""
    from hiclass import LocalClassifierPerParentNode
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    h = dataset.hierarchy
    train, test = dataset.split("train"), dataset.split("test")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_test = vectorizer.fit_transform(train["text"]), vectorizer.transform(test["text"])
    true = h.encode_many(test["path"])
    rows = []

    started = time.perf_counter()
    flat = LogisticRegression(max_iter=2000, C=10).fit(x_train, ["\x1f".join(p) for p in train["path"]])
    predicted = [tuple(s.split("\x1f")) for s in flat.predict(x_test)]
    rows.append(peer_row("TF-IDF + LogisticRegression (flat over paths)", h, true, predicted, started))

    started = time.perf_counter()
    depth = h.depth
    pad = lambda p: list(p) + [""] * (depth - len(p))  # noqa: E731 - hiclass wants rectangular labels
    local = LocalClassifierPerParentNode(local_classifier=LogisticRegression(max_iter=2000, C=10), n_jobs=2)
    local.fit(x_train, np.array([pad(p) for p in train["path"]], dtype=object))
    predicted = [tuple(str(x) for x in row if isinstance(x, str) and x) for row in local.predict(x_test)]
    rows.append(peer_row("hiclass LCPPN(LogisticRegression)", h, true, predicted, started))
    return rows


def peer_row(name, h, true, predicted, started) -> dict:
    ids = []
    for path in predicted:
        try:
            ids.append(h.encode(path))
        except Exception:  # a path outside the hierarchy: keep its valid prefix only
            ids.append(np.full(h.depth, -1))
    metrics = compute_metrics(h, true, np.stack(ids))
    row = {"name": name, "kind": "peer", "train_seconds": round(time.perf_counter() - started, 1), **metrics,
           "texts_per_second": None, "size_mb": None,
           "consistency_rate_consistent": metrics["consistency_rate"]}
    print(name, {k: round(row[k], 4) for k in COLUMNS if k in row}, flush=True)
    return row


def write_report(rows: list[dict], out: Path, command: str, device: str) -> None:
    header = ["model", "exact path acc", "L1 acc", "L2 acc", "L1 macro-F1", "L2 macro-F1", "hier. F1",
              "consistency", "per-level consistency", "ECE L1 raw→calibrated", "ECE leaf raw→calibrated",
              "train s", "predict texts/s", "size MB", "device"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda r, k: f"{r[k]:.3f}" if isinstance(r.get(k), float) else "–"  # noqa: E731
    depth = max((int(k.split("_")[1]) for r in rows for k in r if k.startswith("level_") and k.endswith("_ece")),
                default=1)

    def ece(r, level):  # raw -> calibrated expected calibration error of one level
        raw, calibrated = r.get(f"raw_level_{level}_ece"), r.get(f"level_{level}_ece")
        if calibrated is None:
            return "–"
        return f"{raw if raw is not None else calibrated:.3f} → {calibrated:.3f}"

    for r in sorted(rows, key=lambda r: -r["exact_path_accuracy"]):
        lines.append("| " + " | ".join([r["name"], *(fmt(r, k) for k in COLUMNS), ece(r, 1), ece(r, depth),
                                        str(r["train_seconds"]),
                                        str(r.get("texts_per_second") or "–"), str(r.get("size_mb") or "–"),
                                        device if r["kind"] == "KTT" else "cpu"]) + " |")
    table = "\n".join(lines)
    atomic_write_text(out.with_suffix(".md"), f"Command: `{command}`\n\n{table}\n")
    atomic_write_json(out.with_suffix(".json"), rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for i, (key, label) in enumerate((("exact_path_accuracy", "exact path accuracy"),
                                      ("hierarchical_f1", "hierarchical F1"))):
        ax.barh(y + i * 0.4, [r[key] for r in rows], height=0.4, label=label)
    ax.set_yticks(y + 0.2, names)
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("Quality on the test split")
    fig.tight_layout()
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--text", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--sep", default=None)
    parser.add_argument("--models", default=None, help="comma list (default: every installed model)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="key=value for every model that has the key")
    parser.add_argument("--ensemble", action="append", default=[],
                        help="comma list of models whose runs an ensemble combines (repeatable)")
    parser.add_argument("--rows", type=int, default=None, help="use the first N rows (quick runs)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workspace", default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--out", default="quality", help="output path without extension")
    args = parser.parse_args()

    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="ktt-quality-"))
    data = args.data
    if args.rows:
        sample = workspace / "sample.parquet"
        sample.parent.mkdir(parents=True, exist_ok=True)
        from ktt_core.data.importers import read_table

        read_table(data).head(args.rows).to_parquet(sample, index=False)
        data = sample
    import_args = ["--text", args.text, "--labels", args.labels, "--split", "random", "--keep-duplicates",
                   "--seed", "0", "--force"] + (["--sep", args.sep] if args.sep else [])
    ktt(workspace, "import", data, "data", *import_args)
    models = args.models.split(",") if args.models else sorted(set(Plugins().models) - {"ensemble"})
    options = {"device": args.device, "epochs": args.epochs, "freeze_encoder": args.freeze_encoder, "set": args.set}
    rows = [run_model(workspace, model, args_for(model, options)) for model in models]
    trained = {r["name"]: r for r in rows}
    for members in args.ensemble:
        row = run_model(workspace, "ensemble", ["--set", f"members={members}"], name=f"ensemble({members})")
        row["train_seconds_with_members"] = round(
            row["train_seconds"] + sum(trained[m]["train_seconds"] for m in members.split(",")), 1)
        rows.append(row)
    if not args.no_peers:
        rows += run_peers(Dataset(workspace / "datasets" / "data"))
    command = "python benchmarks/quality.py " + " ".join(
        str(a) for a in [args.data, "--text", args.text, "--labels", args.labels, "--epochs", args.epochs]
        + (["--freeze-encoder"] if args.freeze_encoder else []) + (["--rows", args.rows] if args.rows else [])
        + (["--models", args.models] if args.models else [])
        + sum((["--set", s] for s in args.set), []) + sum((["--ensemble", e] for e in args.ensemble), []))
    write_report(rows, Path(args.out), command, str(resolve_device(args.device)))


if __name__ == "__main__":
    main()
