#!/usr/bin/env python
"""Training and prediction throughput of every installed KTT model, in one table.

Every model the plugin manager knows (``ktt list-models``) is built, trained and asked
for predictions through the same calls ``ktt train`` and ``ktt predict`` make, with its
default config (as ``ktt train MODEL DATASET`` resolves it) and one override: ``epochs: 1``
for models that have epochs. A model with the key ``freeze_encoder`` gets a second row,
``freeze_encoder: true`` (the head trained on encoder features computed once).

* build: ``seed_everything`` + the ``ktt_build_model`` hook + ``model.to(device)``
  (encoder loading included); timed on its own, never inside the figures below.
* train: the ``ktt_fit`` hook (the model contract's ``fit``: tokenization, the training
  loop or a TF-IDF fit, and the end-of-fit validation on ``--val-rows`` rows) on a
  ``RunContext`` with no run folder and no cache, as ``ktt train`` runs it on a fresh
  dataset. samples/s = ``--rows`` x epochs (1) / seconds. Warmed up first on a copy of the
  freshly built model (the first 64 training rows), so imports and kernel set-up are not timed.
* predict: the scoring call every command uses (``ktt_core.scoring.predict``: the
  ``ktt_score`` hook, tokenization, batching and decoding) on ``--rows`` texts the model
  did not train on, after a warm-up on the first 64 of them.
* ensemble (the core's model of trained models): prediction only, over the trained rows
  of ``--ensemble`` (default tfidf_lsgd,db_linear, as in ``nox -s demo``), equal weights;
  its ``fit`` opens trained runs in a workspace, which an in-memory benchmark has not.

Run ``--help`` for the options; see README.md.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# throughput.py puts the repository first on sys.path; its data loading, timing, memory
# and machine record serve here as they are.
from throughput import (  # noqa: E402
    BUNDLED,
    DATA,
    QUICK_VAL_ROWS,
    PeakMemory,
    add_run_options,
    describe_load,
    describe_machine,
    load_rows,
    machine,
    publish,
    run_record,
    run_started,
    timed,
)

import numpy as np  # noqa: E402

from ktt_core.config import defaults_for, parse_set_options, resolve_config  # noqa: E402
from ktt_core.contract import LabelledTexts  # noqa: E402
from ktt_core.cpu import check_threads  # noqa: E402
from ktt_core.devices import describe_precision, resolve_device, seed_everything, use_threads  # noqa: E402
from ktt_core.ensemble import EnsembleModel  # noqa: E402
from ktt_core.plugins import get_plugins  # noqa: E402
from ktt_core.runs import RunContext  # noqa: E402
from ktt_core.scoring import predict  # noqa: E402

QUICK_ROWS = 128
WARMUP_ROWS = 64
ENSEMBLE_MEMBERS = "tfidf_lsgd,db_linear"
FINE_TUNED, FROZEN = "fine-tuned", "frozen encoder"


def quiet(*args, **kwargs) -> None:
    """The run's log: the benchmark prints its own lines."""


# --------------------------------------------------------------------------- the calls ktt makes
def build(plugins, spec, hierarchy, config: dict, device):
    """As ``ktt train`` builds a model (ktt_core.jobs.train)."""
    seed_everything(config["seed"])
    model = plugins.hook.ktt_build_model(spec=spec, hierarchy=hierarchy, config=config)
    return model.to(device)


def fit(plugins, spec, model, train: LabelledTexts, val: LabelledTexts, device) -> list[dict]:
    """As ``ktt train`` trains it (ktt_core.jobs.train), with no run folder and no cache."""
    config = model.config
    seed_everything(config["seed"])
    run = RunContext(None, device, config.get("epochs", 1), config["seed"], quiet, plugins=plugins)
    return plugins.hook.ktt_fit(spec=spec, model=model, train=train, val=val, run=run)


def variants(spec, settings: dict, encoder: str | None, seed: int) -> list[tuple[str | None, list]]:
    """(variant, config layers) of each row of one model: its defaults with ``epochs: 1``,
    and, for a model with ``freeze_encoder``, the same frozen. Options it has no key for
    (``--encoder``, a ``--set`` key) are not given to it, as benchmarks/quality.py does.
    The variant of a model without ``freeze_encoder`` is named after its build (None)."""
    keys = defaults_for(spec)
    base = {"seed": seed, **({"epochs": 1} if "epochs" in keys else {}),
            **({"encoder": encoder} if encoder and "encoder" in keys else {})}
    layers = [("benchmark", base), ("--set", {k: v for k, v in settings.items() if k in keys})]
    if "freeze_encoder" not in keys:
        return [(None, layers)]
    return [(FINE_TUNED, layers + [("benchmark", {"freeze_encoder": False})]),
            (FROZEN, layers + [("benchmark", {"freeze_encoder": True})])]


def short_precision(device, config: dict) -> tuple[str, str]:
    """("bf16", "bf16 (CPU has AVX512-BF16)"), or n/a for a model without the key (TF-IDF)."""
    if "precision" not in config:
        return "n/a", "n/a (no precision key: computes in numpy / scikit-learn)"
    detail = describe_precision(device, config["precision"])
    return detail.split()[0], detail


# --------------------------------------------------------------------------- one row
def measure(plugins, spec, variant, layers, data: dict, device, memory: PeakMemory, log) -> tuple[dict, object]:
    """Build, train (one epoch) and predict with one model; (row, trained model)."""
    config = resolve_config(spec, layers)
    model, build_s, _, _ = timed(device, memory, lambda: build(plugins, spec, data["hierarchy"], config, device))
    variant = variant or model.summary() or "default"
    log(f"{spec.name} ({variant}): built in {build_s:.1f}s; {model.summary()}")

    warm = copy.deepcopy(model)
    fit(plugins, spec, warm, data["warmup"], data["val"], device)
    del warm
    gc.collect()
    history, train_s, train_peak, train_busy = timed(
        device, memory, lambda: fit(plugins, spec, model, data["train"], data["val"], device))
    epochs = config.get("epochs", 1)
    rows = len(data["train"])
    log(f"{spec.name} ({variant}): train {rows * epochs / train_s:.1f} samples/s ({train_s:.1f}s)")

    texts = data["predict"]
    predict(plugins, spec, model, texts[:WARMUP_ROWS])
    _, predict_s, predict_peak, predict_busy = timed(device, memory, lambda: predict(plugins, spec, model, texts))
    log(f"{spec.name} ({variant}): predict {len(texts) / predict_s:.1f} texts/s ({predict_s:.1f}s)")

    precision, detail = short_precision(device, config)  # after the runs: a bf16 failure shows
    last = history[-1] if history else {}
    row = {"model": spec.name, "variant": variant, "plugin": spec.plugin, "plugin_version": spec.plugin_version,
           "precision": precision, "precision_detail": detail, "summary": model.summary(),
           "build_seconds": build_s,
           "train_rows": rows, "epochs": epochs, "default_epochs": defaults_for(spec).get("epochs"),
           "val_rows": len(data["val"]), "train_seconds": train_s, "train_samples_per_s": rows * epochs / train_s,
           "train_peak_memory_bytes": train_peak, "train_cpu_cores_busy": train_busy,
           "train_loss": last.get("train_loss"), "val_exact_path_accuracy": last.get("val_exact_path_accuracy"),
           "predict_rows": len(texts), "predict_seconds": predict_s,
           "predict_texts_per_s": len(texts) / predict_s, "predict_peak_memory_bytes": predict_peak,
           "predict_cpu_cores_busy": predict_busy, "config": config}
    return row, model


def measure_ensemble(plugins, spec, members: list[str], trained: dict, data: dict, device,
                     memory: PeakMemory, log) -> dict:
    """Prediction throughput of an ensemble of this run's trained models, equal weights."""
    missing = [m for m in members if m not in trained]
    if len(members) < 2 or missing:
        return skipped(spec.name, f"prediction only, of --ensemble {','.join(members)}: "
                       + (f"{', '.join(missing)} not trained in this run" if missing else "needs two members"))
    weights = ",".join(["1"] * len(members))
    config = resolve_config(spec, [("benchmark", {"members": ",".join(members), "combine": "probability",
                                                  "weights": weights})])
    model, build_s, _, _ = timed(device, memory, lambda: build(plugins, spec, data["hierarchy"], config, device))
    # What EnsembleModel.fit sets once it has opened the members' runs in a workspace.
    model.members = [{"spec": plugins.model(m), "model": trained[m], "source": "this benchmark", "source_sha256": ""}
                     for m in members]
    model.weights = np.full(len(members), 1 / len(members))
    model.combine = config["combine"]
    texts = data["predict"]
    predict(plugins, spec, model, texts[:WARMUP_ROWS])
    _, predict_s, predict_peak, predict_busy = timed(device, memory, lambda: predict(plugins, spec, model, texts))
    precisions = sorted({r for r in (trained[m].config.get("precision") for m in members) if r})
    log(f"{spec.name} ({' + '.join(members)}): predict {len(texts) / predict_s:.1f} texts/s ({predict_s:.1f}s)")
    return {"model": spec.name, "variant": f"{' + '.join(members)} (predict only)", "plugin": spec.plugin,
            "plugin_version": spec.plugin_version,
            "precision": "members'", "precision_detail": "each member's own" + (
                f" ({', '.join(describe_precision(device, p) for p in precisions)})" if precisions else ""),
            "summary": model.summary(), "build_seconds": build_s, "members": members,
            "train_samples_per_s": None, "train_seconds": None,
            "train_note": "not measured: an ensemble's fit opens trained runs in a workspace (ktt train ensemble)",
            "predict_rows": len(texts), "predict_seconds": predict_s, "predict_texts_per_s": len(texts) / predict_s,
            "predict_peak_memory_bytes": predict_peak, "predict_cpu_cores_busy": predict_busy, "config": config}


def skipped(model: str, reason: str, variant: str = "-") -> dict:
    return {"model": model, "variant": variant, "skipped": reason}


# --------------------------------------------------------------------------- setup
def load_data(path: Path | None, rows: int, val_rows: int, seed: int) -> dict:
    """Train, validation and prediction rows (disjoint, a seeded shuffle) as the contract takes them."""
    try:
        texts, paths, rest_texts, rest_paths, hierarchy, source = load_rows(path, rows, val_rows + rows, seed)
    except SystemExit:
        raise SystemExit(f"--rows {rows} --val-rows {val_rows}: needs {2 * rows + val_rows} rows (train, "
                         f"validation, prediction); {path or (DATA if DATA.is_file() else BUNDLED)} has fewer") from None
    train = LabelledTexts.from_paths(texts, paths, hierarchy)
    warmup = min(rows, WARMUP_ROWS)
    return {"train": train, "warmup": LabelledTexts(train.texts[:warmup], train.targets[:warmup]),
            "val": LabelledTexts.from_paths(rest_texts[:val_rows], rest_paths[:val_rows], hierarchy),
            "predict": rest_texts[val_rows:], "hierarchy": hierarchy, "source": str(source)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000,
                   help="rows trained on (one epoch), and as many other rows predicted")
    p.add_argument("--val-rows", type=int, default=64, help="rows of the validation every fit ends with")
    p.add_argument("--quick", action="store_true", help=f"--rows {QUICK_ROWS} --val-rows {QUICK_VAL_ROWS}: a check")
    p.add_argument("--models", default=None,
                   help="comma list of models (default: every installed model, ktt list-models)")
    p.add_argument("--ensemble", default=ENSEMBLE_MEMBERS,
                   help=f"members of the ensemble row, trained in this run (default {ENSEMBLE_MEMBERS})")
    p.add_argument("--data", type=Path, default=None,
                   help=f"parquet with title and category (default {DATA}, else {BUNDLED})")
    p.add_argument("--encoder", default=None,
                   help="encoder name or folder for the models that have one (default: each model's default)")
    add_run_options(p, "config override, as `ktt train --set` (repeatable); given to the models that have KEY")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.val_rows = QUICK_ROWS, QUICK_VAL_ROWS
    if args.rows < 1 or args.val_rows < 1:
        p.error("--rows and --val-rows must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = run_started()
    wall0 = started["clock"]
    device = resolve_device(args.device)
    use_threads(check_threads(args.threads))  # as ktt train does
    plugins = get_plugins()
    names = sorted(plugins.models) if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        plugins.model(name)  # an unknown name fails now, as ktt train fails
    settings = parse_set_options(args.settings)
    data = load_data(args.data, args.rows, args.val_rows, args.seed)
    memory = PeakMemory(device)

    def log(msg):
        print(f"[{time.perf_counter() - wall0:6.1f}s] {msg}", flush=True)

    log(f"{len(names)} models ({', '.join(names)}), {args.rows} train rows (+{args.val_rows} validation), "
        f"{args.rows} predict rows from {data['source']}; {describe_machine(machine(device))}")
    members = [m.strip() for m in args.ensemble.split(",") if m.strip()]
    rows, trained, ensembles = [], {}, []
    for name in names:
        spec = plugins.model(name)
        if issubclass(spec.model_class, EnsembleModel):
            ensembles.append(spec)  # last: it predicts with the others
            continue
        for variant, layers in variants(spec, settings, args.encoder, args.seed):
            try:
                row, model = measure(plugins, spec, variant, layers, data, device, memory, log)
            except Exception as exc:  # one failing model must not lose the others' figures
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                log(f"{name} ({variant or 'default'}) FAILED: {reason}")
                traceback.print_exc(file=sys.stderr)
                rows.append(skipped(name, f"failed: {reason}", variant or "default"))
                continue
            rows.append(row)
            if name in members and variant in (None, FINE_TUNED):
                trained[name] = model
            del model
            gc.collect()
    for spec in ensembles:
        try:
            rows.append(measure_ensemble(plugins, spec, members, trained, data, device, memory, log))
        except Exception as exc:
            log(f"{spec.name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            rows.append(skipped(spec.name, f"failed: {type(exc).__name__}: {exc}"))

    import sklearn

    report = {
        "rows": rows,
        "train_rows": args.rows, "val_rows": args.val_rows, "predict_rows": args.rows,
        "warmup_rows": len(data["warmup"]), "epochs": 1, "data": data["source"], "models": names,
        "ensemble_members": members, "settings": settings, "encoder": args.encoder,
        "sklearn_version": sklearn.__version__,
        "memory_measure": memory.kind,
        **run_record(device, started, argv),
    }
    return publish(report, args.json, print_report)


def print_report(r: dict) -> None:
    figure = lambda v, f="{:,.1f}": "-" if v is None else f.format(v)  # noqa: E731
    print()
    print("| model | variant | precision | build s | train samples/s | train s | predict texts/s | predict s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        if "skipped" in row:
            print(f"| {row['model']} | {row['variant']} | | | | | | |")
            continue
        print(f"| {row['model']} | {row['variant']} | {row['precision']} | {figure(row['build_seconds'])} "
              f"| {figure(row['train_samples_per_s'])} | {figure(row['train_seconds'], '{:.2f}')} "
              f"| {figure(row['predict_texts_per_s'])} | {figure(row['predict_seconds'], '{:.2f}')} |")
    print()
    for row in r["rows"]:
        if "skipped" in row:
            print(f"- {row['model']} ({row['variant']}): skipped, {row['skipped']}")
        elif row.get("train_note"):
            print(f"- {row['model']}: train {row['train_note']}")
    print("train: ONE epoch (epochs=1; models' defaults: "
          + ", ".join(sorted({f"{x['model']} {x['default_epochs']}" for x in r["rows"] if x.get("default_epochs")}))
          + f") on {r['train_rows']} rows, samples/s = rows x 1 / seconds, including tokenization and the "
          f"validation of {r['val_rows']} rows that ends every fit; TF-IDF models: one fit (vectorizers, then "
          f"classifiers over max_iter passes). Frozen encoder: the encoder features of train and validation rows "
          f"are computed inside the timed fit, once per run, so runs of more epochs go faster per epoch. "
          f"Warm-up: a fit of {r['warmup_rows']} rows on a copy of the built model.")
    print(f"predict: the scoring call (ktt_core.scoring.predict) on {r['predict_rows']} other rows, after a warm-up "
          f"on {r['warmup_rows']}; build s (model construction, encoder loading) is in neither.")
    details = sorted({f"{x['model']}: {x['precision_detail']}" for x in r["rows"] if x.get("precision_detail")})
    print("precision: " + "; ".join(details))
    print(f"rows from {r['data']}; {describe_machine(r)}, scikit-learn {r['sklearn_version']}")
    print(f"date {r['date']}; total {r['total_seconds']:.0f}s; {describe_load(r['loadavg_before'], r['loadavg_after'])}")
    print(f"command: {r['command']}")


if __name__ == "__main__":
    main()
