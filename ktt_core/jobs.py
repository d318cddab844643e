"""What the commands do, apart from parsing and printing: train, test, predict.

Each job talks to the model through the plugin hooks and the model contract
(:mod:`ktt_core.contract`): texts and label paths in, path scores out. Nothing here knows
the model's framework.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ktt_core import versioning
from ktt_core.calibration import Calibration, fit_calibration
from ktt_core.calibration_metrics import calibration_report
from ktt_core.config import resolve_config
from ktt_core.contract import LabelledTexts
from ktt_core.data.datasets import Dataset
from ktt_core.decoding import MODES, Predictions, decode_levels, decode_scores, describe_all
from ktt_core.environment import require_writable
from ktt_core.errors import KttError
from ktt_core.files import atomic_path, atomic_write_json
from ktt_core.locks import lock_run
from ktt_core.metrics import compute_metrics
from ktt_core.plots import plot_training
from ktt_core.registry import ModelSpec
from ktt_core.runs import RunContext
from ktt_core.thresholds import sweep as threshold_sweep
from ktt_core.scoring import predict as score_and_decode
from ktt_core.scoring import score as score_only
from ktt_core.workspace import Workspace


def train(ws: Workspace, plugins, spec: ModelSpec, dataset_name: str, layers: list, device: str,
          dry_run: bool = False, reference: bool = False, echo: Callable = print,
          dvc: bool = False, resume: str | Path | None = None,
          checkpoint_every: int | None = None, keep_last: bool | None = None,
          threads: int | None = None) -> Path | None:
    """See :func:`_train`; the run folder's write lock (:func:`ktt_core.locks.lock_run`) is
    held from when the folder is known until training ends, and released however it ends."""
    with contextlib.ExitStack() as held:
        return _train(ws, plugins, spec, dataset_name, layers, device, dry_run, reference, echo, dvc, resume,
                      checkpoint_every, keep_last, held, threads)


def _train(ws: Workspace, plugins, spec: ModelSpec, dataset_name: str, layers: list, device: str,
           dry_run: bool, reference: bool, echo: Callable, dvc: bool, resume: str | Path | None,
           checkpoint_every: int | None, keep_last: bool | None,
           held: contextlib.ExitStack, threads: int | None = None) -> Path | None:
    """Train ``spec`` on a dataset; returns the run folder (None for a dry run).

    Under torchrun every process runs this; rank 0 alone prints and writes files.
    With ``dvc``, rank 0 tracks ``best.pt`` and ``last.pt`` with DVC at the end (see versioning).
    With ``resume`` (a run folder), the run continues from its ``last.pt`` with the config of
    its ``config.json``; ``layers`` may only raise ``epochs`` (see docs/reliability.md).
    ``checkpoint_every`` N also writes ``last.pt`` every N steps (None: the run's setting, or 0).
    A finished run keeps ``last.pt`` only with ``keep_last`` (None: the run's setting, or False).
    ``threads`` sets torch's CPU threads (None: leaves them as they are); the header line says
    how many, and which precision the run computes in.
    """
    if dvc:
        versioning.require_repo(ws.root)  # before any work
    # A read-only workspace fails now, not after loading the data and the model.
    if not dry_run and resume is None:
        require_writable(ws.runs, f"runs folder {ws.runs}")
    saved = None
    if resume is not None:
        saved = open_run(ws, resume, spec.name, dataset_name)
        if not dry_run:
            require_writable(saved["directory"], f"--resume {resume}")
        if int(os.environ.get("RANK", "0")) == 0 and not dry_run:  # torchrun: rank 0 writes
            # One resume of a run at a time: a second would train the same epochs again
            # and interleave metrics.jsonl. Locked after the checks, then checked unchanged.
            held.enter_context(lock_run(saved["directory"], ws))
            if _stamp(saved["directory"] / "last.pt") != saved["stamp"]:
                raise KttError(f"--resume {resume}: another ktt process trained this run meanwhile; "
                               "run the command again to resume from where it stopped")
        config = resume_config(spec, saved, layers)
        if checkpoint_every is None:
            checkpoint_every = saved["settings"].get("checkpoint_every", 0)
        if keep_last is None:
            keep_last = saved["settings"].get("keep_last", False)
    else:
        config = resolve_config(spec, layers)
    checkpoint_every = checkpoint_every or 0
    dataset = Dataset(ws.dataset_dir(dataset_name))
    # torch is imported only now, after every check of the input: errors come at once.
    import torch

    from ktt_core.devices import describe_precision, seed_everything
    from ktt_core.distributed import cluster_from_env

    device = _device(device, threads)
    cluster = cluster_from_env(device)
    if device.type == "cuda" and cluster.active:
        device = torch.device("cuda", cluster.local_rank)
    if checkpoint_every and cluster.active:
        raise KttError("--checkpoint-every is not supported under torchrun (checkpoints are written at epoch ends)")
    say = echo if cluster.is_main else (lambda *a, **k: None)
    if saved is not None:
        done = saved["checkpoint"]["training"]
        if done.get("epoch_done") and done.get("epoch", 0) >= config.get("epochs", 1):
            say(f"run {saved['directory']} already finished ({done['epoch']} of {config['epochs']} epochs); "
                "nothing to do (raise --epochs to train longer)")
            return saved["directory"]
    seed_everything(config["seed"])
    model = plugins.hook.ktt_build_model(spec=spec, hierarchy=dataset.hierarchy, config=config)
    model.to(device)
    if saved is not None and saved["checkpoint"]["hierarchy"] != dataset.hierarchy.to_dict():
        raise KttError(f"--resume {saved['directory']}: dataset '{dataset_name}' has another label hierarchy "
                       "than when this run started; cannot resume")
    train_df, val_df = dataset.split("train"), dataset.split("val")
    if len(train_df) == 0 or len(val_df) == 0:
        raise KttError(f"dataset '{dataset_name}' needs rows in train and val; re-import with other --split-ratios")
    cache_dir = dataset.directory / "cache"
    labelled = lambda df: LabelledTexts.from_paths(df["text"], df["path"], dataset.hierarchy)  # noqa: E731
    train_split, val_split = labelled(train_df), labelled(val_df)
    summary = model.summary()
    say(f"{spec.name} on {dataset_name}: {len(train_split)} train / {len(val_split)} val rows, "
        f"{dataset.hierarchy.summary()}" + (f", {summary}" if summary else "") + f", device {device}"
        + (f", precision {describe_precision(device, config['precision'])}" if "precision" in config else "")
        + f", {_describe_threads()}" + (f", {cluster.world} processes" if cluster.active else ""))
    if saved is not None:
        say(f"resuming {saved['directory']} from {describe_position(saved['checkpoint']['training'])} "
            f"of {config['epochs']}")
    if dry_run:
        sample = LabelledTexts(train_split.texts[:8], train_split.targets[:8])
        checked = model.dry_run(sample)
        if checked:
            score_only(plugins, spec, model, sample.texts)  # the scoring call's shape checks
            say(f"dry run: {checked}; scores have the expected shapes")
        say("dry run: config " + json.dumps(config))
        return None
    if saved is not None:
        run_dir = saved["directory"]
    else:
        run_dir = cluster.broadcast(ws.new_run_dir(spec.name, dataset_name) if cluster.is_main else None)
        if cluster.is_main:
            held.enter_context(lock_run(run_dir, ws))
    if cluster.is_main:
        atomic_write_json(run_dir / "config.json", {"model": spec.name, "dataset": dataset_name,
                                                    "plugin": spec.plugin, "plugin_version": spec.plugin_version,
                                                    "processes": cluster.world,
                                                    "checkpoint_every": checkpoint_every,
                                                    "keep_last": bool(keep_last), "config": config})
    started = time.perf_counter()
    run = RunContext(run_dir, device, config.get("epochs", 1), config["seed"], say, cluster, cache_dir,
                     checkpoint_every=checkpoint_every,
                     resume=saved["checkpoint"] if saved is not None else None,
                     plugins=plugins, workspace=ws, dataset=dataset_name)
    try:
        history = plugins.hook.ktt_fit(spec=spec, model=model, train=train_split, val=val_split, run=run)
    except KeyboardInterrupt:
        say(interrupted_note(spec.name, dataset_name, run_dir))
        raise
    if not cluster.is_main:
        return run_dir
    minutes = (time.perf_counter() - started) / 60
    best_epoch = max((r["epoch"] for r in history if r["best"]), default="-")
    # After --resume the history holds the earlier epochs too, each with its own time.
    total = max(minutes, sum(r.get("seconds", 0.0) for r in history) / 60)
    session = f" ({_duration(minutes)} of it in this session)" if saved is not None else ""
    say(f"trained in {_duration(total)}{session}; best epoch {best_epoch}; run folder {run_dir}")
    calibrate_checkpoint(plugins, spec, run_dir / "best.pt", val_split, device,
                         config.get("calibration", "per-level"), say)
    title = f"{spec.name} on {dataset_name}: run {run_dir.name}"
    if plot_training(run_dir / "metrics.jsonl", run_dir / "training.png", title):
        say(f"training curves: {run_dir / 'training.png'}")
    if reference:
        best_model = load_model(plugins, spec.name, run_dir / "best.pt").to(device)
        frame = plugins.hook.ktt_reference_set(spec=spec, model=best_model, data=val_split, run=run)
        with atomic_path(run_dir / "reference.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        say(f"reference set ({len(frame)} rows) written to {run_dir / 'reference.parquet'}")
    removed = not keep_last and history and history[-1]["epoch"] >= run.epochs and (run_dir / "last.pt").is_file()
    if removed:  # last.pt (weights + optimizer state) only serves --resume of an unfinished run
        (run_dir / "last.pt").unlink()
    if dvc:
        say(versioning.track(ws.root, [run_dir / name for name in ("best.pt", "last.pt")
                                       if (run_dir / name).is_file()]))
    say(f"run folder size: {_size_mb(run_dir):.1f} MB"
        + (" (last.pt removed; --keep-last keeps it for --resume --epochs N)" if removed else ""))
    return run_dir


def _duration(minutes: float) -> str:
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def open_run(ws: Workspace, run_dir: str | Path, model: str, dataset: str) -> dict:
    """The run folder to resume: its settings (config.json) and its verified ``last.pt``.

    KttError when the folder is missing, has nothing to resume from, or holds a run of
    another model or dataset.
    """
    directory = Path(run_dir).resolve()
    if not directory.is_dir():
        raise KttError(f"--resume {run_dir}: no such run folder")
    last = directory / "last.pt"
    if not last.is_file() and versioning.is_tracked(last):
        versioning.ensure_local(last, ws.root, what="checkpoint")
    stamp = _stamp(last)  # before reading it: train() checks that it is the same under the lock
    if not last.is_file():
        finished = (" (the run finished and keeps only best.pt; train with --keep-last to resume a finished "
                    "run with more --epochs)") if (directory / "best.pt").is_file() else ""
        raise KttError(f"--resume {run_dir}: no last.pt in that folder, nothing to resume from{finished}")
    try:
        settings = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        holds = (settings["model"], settings["dataset"])
        if not isinstance(settings["config"], dict):
            raise TypeError("config is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KttError(f"--resume {run_dir}: no readable config.json in that folder ({exc})") from None
    if holds != (model, dataset):
        raise KttError(f"--resume {run_dir}: that folder holds a run of {holds[0]} on {holds[1]}, "
                       f"not {model} on {dataset}")
    from ktt_core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(last)
    if checkpoint["model"] != model:
        raise KttError(f"{last}: checkpoint holds a {checkpoint['model']} model, not {model}")
    if not checkpoint.get("resume") or "epoch_done" not in checkpoint["training"]:
        raise KttError(f"{last}: checkpoint has no resume state (written by an older KTT); cannot resume from it")
    return {"directory": directory, "settings": settings, "checkpoint": checkpoint, "stamp": stamp}


def interrupted_note(model: str, dataset: str, run_dir: Path) -> str:
    """What a Ctrl-C during training leaves: the last checkpoint written, and how to go on."""
    if (run_dir / "last.pt").is_file():
        return (f"interrupted: {run_dir} keeps its last checkpoint (last.pt); continue with: "
                f"ktt train {model} {dataset} --resume {run_dir}")
    return f"interrupted before the first checkpoint: {run_dir} holds nothing to resume from"


def _stamp(path: Path) -> tuple:
    """Identity of a file's current version (an atomic replace changes the inode)."""
    try:
        info = path.stat()
    except OSError:
        return ()
    return info.st_ino, info.st_size, info.st_mtime_ns


def resume_config(spec: ModelSpec, saved: dict, layers: list) -> dict:
    """The run's own config; ``layers`` (--config, --set, options) may repeat its values
    and raise ``epochs`` (to train longer), nothing else: a resumed run must go on as it began."""
    origin = f"{saved['directory'] / 'config.json'}"
    base = resolve_config(spec, [(origin, saved["settings"]["config"])])
    config = resolve_config(spec, [(origin, saved["settings"]["config"]), *layers])
    for key in config:
        if key == "epochs" and config[key] < base[key]:
            raise KttError(f"--resume: epochs {config[key]} is below the run's {base[key]}; "
                           "a resumed run can only train longer")
        if key != "epochs" and config[key] != base[key]:
            raise KttError(f"--resume: {key} is {base[key]!r} in {origin}, not {config[key]!r}; "
                           "a resumed run keeps its config (only --epochs may be raised)")
    return config


def describe_position(training: dict) -> str:
    """``"the end of epoch 2"`` or ``"epoch 3, step 40"``, from a checkpoint's training state."""
    if training.get("epoch_done", True):
        return f"the end of epoch {training.get('epoch')}"
    return f"epoch {training.get('epoch')}, step {training.get('step')}"


def calibrate(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
              method: str | None = None, echo: Callable = print) -> Calibration:
    """``ktt calibrate``: fit (again) the calibration of a trained run on DATASET's
    validation split, e.g. for a run trained before calibration existed. ``method``
    defaults to the run's config key ``calibration``."""
    spec = plugins.model(model_name)
    dataset = Dataset(ws.dataset_dir(dataset_name))
    path = resolve_checkpoint(ws, model_name, dataset_name, run_dir, checkpoint)
    require_writable(path.parent, f"run folder {path.parent}")
    model = load_model(plugins, model_name, path)
    df = dataset.split("val")
    check_trained_on(model, dataset_name, df["path"], "val split")
    val = LabelledTexts.from_paths(df["text"], df["path"], model.hierarchy)
    with lock_run(path.parent, ws):
        return calibrate_checkpoint(plugins, spec, path, val, _device(device),
                                    method or model.config.get("calibration", "per-level"), echo, model)


def calibrate_checkpoint(plugins, spec: ModelSpec, path: Path, val: LabelledTexts, device,
                         method: str, say: Callable = print, model=None) -> Calibration:
    """Fit the calibration of the model in ``path`` (``model``, when already loaded) on
    ``val`` (:mod:`ktt_core.calibration`), store it in the checkpoint and say what it
    changed (validation ECE per level)."""
    from ktt_core.checkpoint import set_calibration

    model = (model or load_model(plugins, spec.name, path)).to(device)
    scores = score_only(plugins, spec, model, val.texts)
    calibration = fit_calibration(model.hierarchy, scores.path_log_scores, val.targets, method)
    set_calibration(path, calibration)
    line = f"calibration: {calibration.describe()}"
    if not calibration.is_identity:
        raw = calibration_report(model.hierarchy, decode_scores(model.hierarchy, scores), val.targets)
        fitted = calibration_report(model.hierarchy, decode_scores(model.hierarchy, scores, calibration=calibration),
                                    val.targets)
        line += "; validation ECE " + ", ".join(
            f"L{d + 1} {raw[f'level_{d + 1}_ece']:.3f} -> {fitted[f'level_{d + 1}_ece']:.3f}"
            for d in range(model.hierarchy.depth))
    say(line)
    return calibration


def resolve_checkpoint(ws: Workspace, model: str, dataset: str, run_dir: str | None,
                       checkpoint: str | None) -> Path:
    if checkpoint and run_dir:
        raise KttError("give --run or --checkpoint, not both")
    if checkpoint:
        path = Path(checkpoint)
    elif run_dir:
        path = Path(run_dir) / "best.pt"
        if not path.is_file() and not versioning.is_tracked(path):
            raise KttError(f"--run {run_dir}: no best.pt in that folder")
    else:
        path = ws.latest_run(model, dataset) / "best.pt"
    return versioning.ensure_local(path, ws.root, what="checkpoint")  # fetches it if DVC tracks it


def load_model(plugins, model_name: str, path: Path):
    """Rebuild a model from its checkpoint, refusing one that holds another model."""
    spec = plugins.model(model_name)
    from ktt_core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint["model"] != model_name:
        raise KttError(f"{path}: checkpoint holds a {checkpoint['model']} model, not {model_name}")
    model = plugins.hook.ktt_load_model(spec=spec, checkpoint=checkpoint)
    model.calibration = Calibration.from_dict(checkpoint.get("calibration"), model.hierarchy.depth, str(path))
    return model


def check_trained_on(model, dataset_name: str, paths, where: str) -> None:
    """Refuse a model that does not know every label path in ``paths`` (``where`` in dataset
    ``dataset_name``): a checkpoint trained on another dataset, or before a re-import."""
    known = {model.hierarchy.leaf_path(i) for i in range(model.hierarchy.n_leaves)}
    unknown = sorted({tuple(p) for p in paths} - known)
    if unknown:
        raise KttError(f"dataset '{dataset_name}' {where} has {len(unknown)} label paths the model "
                       f"was not trained on, e.g. {' > '.join(unknown[0])!r}")


def check_named_checkpoint(ws: Workspace, model, dataset_name: str, run_dir, checkpoint) -> None:
    """For ``--checkpoint`` / ``--run`` (which may hold a run of any dataset): the model must know
    every label path of DATASET, as ``ktt test`` requires of its split. The latest run of
    MODEL on DATASET is that dataset's by construction and is not checked."""
    if not (run_dir or checkpoint):
        return
    h = Dataset(ws.dataset_dir(dataset_name)).hierarchy
    check_trained_on(model, dataset_name, (h.leaf_path(i) for i in range(h.n_leaves)), "hierarchy")


def test(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
         split_name: str = "test", decoding: str = "consistent", threshold: float | None = None,
         show: Callable[[dict], None] | None = None, calibrated: bool = True, sweep: bool = False,
         target_precision: float | None = None, threads: int | None = None) -> tuple[dict, Path]:
    """Metrics of a trained model on a dataset split; saved beside the checkpoint.

    ``sweep`` adds ``threshold_sweep`` (:func:`ktt_core.thresholds.sweep` of the split);
    ``target_precision`` P sets the threshold to the lowest one whose hierarchical precision
    reaches P on the validation split (:func:`threshold_on_validation`).

    Calibration error (ECE, Brier) is given per level for the scores used (calibrated
    unless ``calibrated`` is False) and, as ``raw_level_D_*``, for the raw scores.
    ``show`` sees the metrics before they are saved: a read-only run folder or a full disk
    then fails the save without losing what was computed."""
    evaluation = evaluate(ws, plugins, model_name, dataset_name, run_dir, checkpoint, device, split_name,
                          calibrated, threads)
    h, data, predictions = evaluation.hierarchy, evaluation.data, evaluation.predictions
    if target_precision is not None:
        threshold = threshold_on_validation(ws, plugins, model_name, dataset_name, evaluation, device,
                                            calibrated, target_precision)
    level_ids = decode_levels(h, predictions, decoding, threshold)
    metrics = {"model": model_name, "dataset": dataset_name, "split": split_name,
               "checkpoint": str(evaluation.path), "decoding": decoding, "threshold": threshold,
               "calibration": evaluation.calibration_line,
               **compute_metrics(h, data.targets, level_ids, predictions.path_probs),
               "loss": predictions.loss,
               **calibration_report(h, predictions, data.targets)}
    # Always there, so that scripts can compare: equal to the calibrated figures when the
    # calibration kept the raw scores (or --no-calibration).
    metrics.update({f"raw_{k}": v for k, v in calibration_report(h, evaluation.raw, data.targets).items()})
    if target_precision is not None:
        metrics["target_precision"] = target_precision
    if sweep:
        metrics["threshold_sweep"] = threshold_sweep(h, data.targets, predictions.level_ids,
                                                     predictions.confidences(h))
    # How often each decoding mode gives a path that exists in the hierarchy.
    for mode in MODES:
        ids = level_ids if mode == decoding else decode_levels(h, predictions, mode, threshold)
        metrics[f"consistency_rate_{mode.replace('-', '_')}"] = float(h.is_consistent(ids).mean())
    saved = evaluation.path.parent / f"{split_name}_metrics.json"
    if show is not None:
        show(metrics)
    with lock_run(evaluation.path.parent, ws):  # not while a training writes that run
        atomic_write_json(saved, metrics)
    return metrics, saved


def report(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
           split_name: str = "test", output=None, peers_file=None) -> Path:
    """``ktt report``: the self-contained HTML evaluation report of a trained run on a split
    (:mod:`ktt_core.report`), written into the run folder (or ``output``); returns its path.

    Peers are the rows of a ``benchmarks/quality.py`` result (``peers_file``, default
    ``WORKSPACE/reports/quality-DATASET.json`` when it exists)."""
    from ktt_core.report import ReportData, write_report

    evaluation = evaluate(ws, plugins, model_name, dataset_name, run_dir, checkpoint, device, split_name)
    h, data, p = evaluation.hierarchy, evaluation.data, evaluation.predictions
    run = evaluation.path.parent
    target = Path(output) if output else run / f"report-{split_name}.html"
    require_writable(target.parent, f"--output {output}" if output else f"run folder {run}")
    metrics = {**compute_metrics(h, data.targets, p.level_ids, p.path_probs),
               **calibration_report(h, p, data.targets)}
    calibration = evaluation.model.calibration
    raw_confidences = None
    if evaluation.raw is not p:
        metrics.update({f"raw_{k}": v for k, v in calibration_report(h, evaluation.raw, data.targets).items()})
        raw_confidences = evaluation.raw.confidences(h)
    records = run / "metrics.jsonl"
    training = ([json.loads(line) for line in records.read_text().splitlines() if line.strip()]
                if records.is_file() else [])
    peers_path = Path(peers_file) if peers_file else ws.root / "reports" / f"quality-{dataset_name}.json"
    peers = []
    if peers_file or peers_path.is_file():
        try:
            peers = json.loads(peers_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KttError(f"--peers {peers_path}: cannot read it as benchmarks/quality.py JSON ({exc})") from None
        if not isinstance(peers, list) or not all(isinstance(r, dict) for r in peers):
            raise KttError(f"--peers {peers_path}: expected a list of result rows (benchmarks/quality.py JSON)")
    report_data = ReportData(
        model=model_name, dataset=dataset_name, run=run.name, hierarchy=h, texts=data.texts,
        true_ids=data.targets, pred_ids=p.level_ids, confidences=p.confidences(h),
        raw_confidences=raw_confidences, metrics=metrics,
        calibration=None if calibration is None else calibration.to_dict(),
        sweep=threshold_sweep(h, data.targets, p.level_ids, p.confidences(h)), training=training,
        peers=peers, created=time.strftime("%Y-%m-%d %H:%M"))
    with contextlib.ExitStack() as held:
        if target.resolve().parent == run.resolve():
            held.enter_context(lock_run(run, ws))  # not while a training writes that run
        return write_report(target, report_data)


def threshold_on_validation(ws: Workspace, plugins, model_name: str, dataset_name: str, evaluation, device,
                            calibrated: bool, target: float) -> float:
    """The lowest threshold whose hierarchical precision on the validation split reaches
    ``target`` (:func:`ktt_core.thresholds.threshold_for_precision`); KttError when none does."""
    from ktt_core.thresholds import threshold_for_precision

    if not 0 < target <= 1:
        raise KttError(f"--target-precision {target}: must be in (0, 1]")
    val = evaluation if evaluation.split == "val" else evaluate(
        ws, plugins, model_name, dataset_name, None, evaluation.path, device, "val", calibrated)
    h, p = val.hierarchy, val.predictions
    threshold, row = threshold_for_precision(h, val.data.targets, p.level_ids, p.confidences(h), target)
    if threshold is None:
        best = max(r["hierarchical_precision"] for r in threshold_sweep(h, val.data.targets, p.level_ids,
                                                                        p.confidences(h)))
        raise KttError(f"--target-precision {target}: no threshold reaches it on the validation split "
                       f"(the best is {best:.3f}); ask for less")
    return float(threshold)


@dataclass
class Evaluation:
    """A trained model's decoded predictions on one split, calibrated and raw."""

    path: Path                      # the checkpoint
    split: str
    model: object
    hierarchy: object
    data: LabelledTexts
    predictions: Predictions        # calibrated unless asked otherwise
    raw: Predictions                # the raw scores (the same object when uncalibrated)
    calibration_line: str


def evaluate(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
             split_name: str = "test", calibrated: bool = True, threads: int | None = None) -> Evaluation:
    """Score a split of a dataset with a trained model once; decode it calibrated and raw
    (on ``threads`` CPU threads; None: as they are)."""
    plugins.model(model_name)  # an unknown model is named as such, not as a missing run
    dataset = Dataset(ws.dataset_dir(dataset_name))
    path = resolve_checkpoint(ws, model_name, dataset_name, run_dir, checkpoint)
    model = load_model(plugins, model_name, path)
    df = dataset.split(split_name)
    check_trained_on(model, dataset_name, df["path"], f"{split_name} split")
    data = LabelledTexts.from_paths(df["text"], df["path"], model.hierarchy)
    spec = plugins.model(model_name)
    scores = score_only(plugins, spec, model.to(_device(device, threads)), data.texts)
    h = model.hierarchy
    raw = decode_scores(h, scores, data.targets)
    calibration = model.calibration if calibrated else None
    if calibration is None or calibration.is_identity:
        predictions = raw
        line = ("off (--no-calibration)" if not calibrated and model.calibration is not None
                else calibration.describe() if calibration is not None
                else "none (the checkpoint has none; ktt calibrate fits one)")
    else:
        predictions = decode_scores(h, scores, data.targets, calibration)
        line = calibration.describe()
    return Evaluation(path, split_name, model, h, data, predictions, raw, line)


def predict(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
            texts: list[str], top_k: int = 1, decoding: str = "consistent",
            threshold: float | None = None, calibrated: bool = True, threads: int | None = None) -> list[dict]:
    """Predicted path, per-level scores and the ``top_k`` best paths of each text (scores
    calibrated unless ``calibrated`` is False), on ``threads`` CPU threads (None: as they are)."""
    plugins.model(model_name)
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise KttError(f"text {i} is empty")
    path = resolve_checkpoint(ws, model_name, dataset_name, run_dir, checkpoint)
    model = load_model(plugins, model_name, path)
    check_named_checkpoint(ws, model, dataset_name, run_dir, checkpoint)
    model = model.to(_device(device, threads))
    if not calibrated:
        model.calibration = None
    predictions = score_and_decode(plugins, plugins.model(model_name), model, texts)
    return describe_all(model.hierarchy, predictions, top_k, decoding, threshold)


def predict_file(ws: Workspace, plugins, model_name: str, dataset_name: str, run_dir, checkpoint, device,
                 input_path, output_path, text_column: str = "text", top_k: int = 1,
                 chunk_size: int = 2048, decoding: str = "consistent", threshold: float | None = None,
                 keep=(), calibrated: bool = True, threads: int | None = None) -> int:
    """Predict every text of a file into another, chunk by chunk; returns the rows written."""
    from ktt_core.streaming import TextSource, check_output, write_predictions

    # Check the model and both files before loading the model, so a typo fails at once.
    plugins.model(model_name)
    source = TextSource(input_path, text_column, chunk_size, keep)
    check_output(output_path, source)
    path = resolve_checkpoint(ws, model_name, dataset_name, run_dir, checkpoint)
    model = load_model(plugins, model_name, path)
    check_named_checkpoint(ws, model, dataset_name, run_dir, checkpoint)
    model = model.to(_device(device, threads))
    if not calibrated:
        model.calibration = None
    spec = plugins.model(model_name)

    def predict_chunk(texts: list[str]) -> list[dict]:
        predictions = score_and_decode(plugins, spec, model, texts)
        return describe_all(model.hierarchy, predictions, top_k, decoding, threshold)

    return write_predictions(source, output_path, predict_chunk, model.hierarchy.depth, top_k)


def _device(name: str, threads: int | None = None):
    """The torch device for ``--device NAME`` (imports torch: only once a model is used);
    ``threads`` sets torch's CPU threads at the same moment (None: leaves them as they are)."""
    from ktt_core.devices import resolve_device, use_threads

    if threads is not None:
        use_threads(threads)
    return resolve_device(name)


def _describe_threads() -> str:
    """``"threads 2 (2 CPUs available, 1.9 idle)"``: torch's CPU threads now, and why."""
    import torch

    from ktt_core.cpu import describe_threads

    return describe_threads(torch.get_num_threads())
