"""Hyperparameter search with Optuna: ``ktt tune``.

Trials train with the core loop and report the validation metric after every epoch, so
the pruner stops poor trials early. The study lives in a storage URL (a SQLite file in the
workspace by default); any URL Optuna accepts lets several ``ktt tune`` processes, on
several machines, share one study and together finish the requested number of trials.
"""
from __future__ import annotations

import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna

from ktt_core.config import defaults_for, read_config_file, resolve_config
from ktt_core.contract import LabelledTexts
from ktt_core.data.datasets import Dataset
from ktt_core.devices import resolve_device, seed_everything
from ktt_core.environment import check_url
from ktt_core.errors import KttError
from ktt_core.files import atomic_path, atomic_write_json
from ktt_core.registry import ModelSpec
from ktt_core.runs import RunContext
from ktt_core.secrets import mask_url
from ktt_core.workspace import Workspace

DISTRIBUTIONS = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}
#: Fields each type may have besides ``type`` and the required ones.
OPTIONAL_FIELDS = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}


def validate_space(space, spec: ModelSpec, origin: str) -> dict:
    """Check a search space against the model's hyperparameters, before any trial.

    KttError names the key and the field: an unknown type or field, a bound that is not a
    number of the key's type or outside the key's range, low >= high, ``log`` with
    low <= 0, a step that is not positive, choices that are not a list of values of the
    key. Returns the space with bounds as numbers (YAML reads ``1e-5`` as a string).
    """
    from ktt_core.config import coerce

    if not isinstance(space, dict) or not space:
        raise KttError(f"{origin}: a search space must be a non-empty mapping of key: distribution")
    known = defaults_for(spec)
    checked = {}
    for key, dist in space.items():
        if key not in known:
            raise KttError(f"{origin}: '{key}' is not a hyperparameter of {spec.name}")
        kind = dist.get("type") if isinstance(dist, dict) else None
        if not isinstance(kind, str) or kind not in DISTRIBUTIONS:
            got = f" (got {kind!r})" if isinstance(dist, dict) and "type" in dist else ""
            raise KttError(f"{origin}: '{key}' needs a type: float, int or categorical{got}")
        missing = [f for f in DISTRIBUTIONS[kind] if f not in dist]
        if missing:
            raise KttError(f"{origin}: '{key}' ({kind}) needs {', '.join(missing)}")
        allowed = ("type", *DISTRIBUTIONS[kind], *OPTIONAL_FIELDS[kind])
        unknown = [f for f in dist if f not in allowed]
        if unknown:
            raise KttError(f"{origin}: '{key}' ({kind}) has unknown field {unknown[0]!r}; "
                           f"fields: {', '.join(allowed)}")
        where = f"{origin}: '{key}'"
        if kind == "categorical":
            choices = dist["choices"]
            if not isinstance(choices, list) or not choices:
                raise KttError(f"{where} choices must be a non-empty list, got {choices!r}")
            checked[key] = {"type": kind, "choices": [coerce(key, c, known[key], f"{where} choices", spec)
                                                      for c in choices]}
            continue
        # Each bound must be a value the key accepts: its type (an int distribution gives
        # integers) and its range (dropout below 1, a positive batch size, ...).
        default = known[key]
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if not numeric:
            raise KttError(f"{where} takes {type(default).__name__} values, not a range: use type categorical")
        if kind == "float" and isinstance(default, int):
            raise KttError(f"{where} takes integers: use type int")
        bound_type = 0 if kind == "int" else default
        low = coerce(key, dist["low"], bound_type, f"{where} low", spec)
        high = coerce(key, dist["high"], bound_type, f"{where} high", spec)
        if not low < high:
            raise KttError(f"{where} needs low < high, got low {low!r} and high {high!r}")
        out = {"type": kind, "low": low, "high": high}
        log = dist.get("log", False)
        if not isinstance(log, bool):
            raise KttError(f"{where} log must be true or false, got {log!r}")
        if log and low <= 0:
            raise KttError(f"{where} log needs low > 0, got low {low!r}")
        if "step" in dist:
            step = dist["step"]
            valid = (isinstance(step, int) if kind == "int" else isinstance(step, (int, float))) \
                and not isinstance(step, bool) and 0 < step <= high - low
            if not valid:
                raise KttError(f"{where} step must be a positive {'integer' if kind == 'int' else 'number'} "
                               f"up to high - low, got {step!r}")
            if log:
                raise KttError(f"{where} cannot have both log and step")
            out["step"] = step
        out["log"] = log
        checked[key] = out
    return checked


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for key, dist in space.items():
        if dist["type"] == "float":
            params[key] = trial.suggest_float(key, dist["low"], dist["high"], log=dist.get("log", False),
                                              step=dist.get("step"))
        elif dist["type"] == "int":
            params[key] = trial.suggest_int(key, dist["low"], dist["high"], step=dist.get("step", 1),
                                            log=dist.get("log", False))
        else:
            params[key] = trial.suggest_categorical(key, dist["choices"])
    return params


RACES = ("IntegrityError", "already exists", "UNIQUE constraint", "database is locked")


def open_study(storage: str, name: str, direction: str, seed: int | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
    for attempt in range(8):
        try:
            store = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
            return optuna.create_study(
                storage=store, study_name=name, direction=direction, load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=seed),
                pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
        except Exception as exc:  # bad URL, unreachable database, missing driver
            message = f"{type(exc).__name__}: {exc}"
            # Workers starting together race to create the schema and the study; retry.
            if any(race in message for race in RACES) and attempt < 7:
                time.sleep(0.3 + random.random())
                continue
            # The URL and the driver's message may hold the password: both are masked.
            raise KttError(f"--storage {mask_url(storage)}: cannot open it "
                           f"({mask_url(' '.join(str(exc).split()))[:200]})") from None


def tune(ws: Workspace, plugins, spec: ModelSpec, dataset_name: str, layers: list, *, trials: int,
         device: str = "auto", timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, space_file: str | None = None, metric: str = "exact_path_accuracy",
         seed: int | None = None, pruner=None, echo: Callable = print) -> dict:
    """Run trials until the study holds ``trials`` of them (across all its processes)."""
    study_name = study_name or f"{spec.name}-{dataset_name}"
    # The study names a folder under runs/: check it (and the dataset) before any work or file.
    out_dir = ws.resolve("runs", ("model", spec.name), ("dataset", dataset_name),
                         ("study", study_name, "tune-"))
    layers = [*layers, ("--metric", {"monitor": metric})]  # validates the metric's name
    base = resolve_config(spec, layers)
    if space_file:
        space = validate_space(read_config_file(space_file, "search space file"), spec, space_file)
    else:
        space = validate_space({k: dict(v) for k, v in spec.search_space.items()}, spec,
                               f"search space of {spec.name}")
    dataset = Dataset(ws.dataset_dir(dataset_name))
    device = resolve_device(device)
    if storage:
        check_url(storage, "--storage")
    storage = storage or f"sqlite:///{ws.root / 'tuning.db'}"
    study = open_study(storage, study_name, "minimize" if metric == "loss" else "maximize", seed, pruner)
    cache_dir = dataset.directory / "cache"
    # Models cache what they derive from texts (tokens, encoder features) under cache_dir,
    # so trials after the first reuse it.
    train, val = (LabelledTexts.from_paths(df["text"], df["path"], dataset.hierarchy)
                  for df in (dataset.split("train"), dataset.split("val")))
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("worker", worker)
        config = resolve_config(spec, [*layers, ("search space", params)])
        seed_everything(config["seed"])
        model = plugins.hook.ktt_build_model(spec=spec, hierarchy=dataset.hierarchy, config=config).to(device)

        def report(record: dict) -> None:
            value = record["val_loss"] if metric == "loss" else record[f"val_{metric}"]
            trial.report(value, record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        run = RunContext(None, device, config.get("epochs", 1), config["seed"], lambda *_: None,
                         cache_dir=cache_dir, on_epoch=report, plugins=plugins, workspace=ws,
                         dataset=dataset_name)
        history = plugins.hook.ktt_fit(spec=spec, model=model, train=train, val=val, run=run)
        values = [r["val_loss"] if metric == "loss" else r[f"val_{metric}"] for r in history]
        echo(f"trial {trial.number}: {metric} {values[-1]:.4f}  {params}")
        return min(values) if metric == "loss" else max(values)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = optuna.study.MaxTrialsCallback(trials, states=None)  # counts every process's trials
    if len(study.trials) < trials:
        study.optimize(objective, timeout=timeout, callbacks=[stop], gc_after_trial=True)
    return report_study(study, base, out_dir, echo)


def report_study(study: optuna.Study, base_config: dict, out_dir: Path, echo: Callable) -> dict:
    """Trials table, best_config.json and plots of the study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    with atomic_path(out_dir / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    result = {"study": study.study_name, "trials": len(study.trials), "complete": len(complete),
              "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
              "folder": str(out_dir)}
    _print_trials(study, echo)
    if not complete:
        echo("no trial completed; no best config")
        return result
    best = study.best_trial
    best_config = {**base_config, **best.params}
    atomic_write_json(out_dir / "best_config.json", best_config)
    result.update(best_value=best.value, best_params=best.params, best_config=str(out_dir / "best_config.json"))
    echo(f"best trial {best.number}: {best.value:.4f} {best.params}")
    echo(f"best config: {out_dir / 'best_config.json'} (use: ktt train ... --config that file)")
    result["plots"] = _plots(study, out_dir, echo)
    return result


def _print_trials(study: optuna.Study, echo: Callable) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("trial", "state", "value", "params", title=f"study {study.study_name}")
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        table.add_row(str(t.number), t.state.name, value, params)
    Console().print(table)


def _plots(study: optuna.Study, out_dir: Path, echo: Callable) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, plot in (("optimization_history", ovm.plot_optimization_history),
                           ("param_importances", ovm.plot_param_importances)):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # importances need >= 2 complete trials
                echo(f"no {name} plot: {' '.join(str(exc).split())[:120]}")
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
            figure.tight_layout()
            with atomic_path(out_dir / f"{name}.png") as tmp:
                figure.savefig(tmp, format="png", dpi=100)
            plt.close(figure)
            written.append(str(out_dir / f"{name}.png"))
    return written
