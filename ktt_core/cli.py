"""The ``ktt`` command line: one small function per command, calling the core modules."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ktt_core.errors import KttError


class KttGroup(click.Group):
    """Turns :class:`KttError`, Ctrl-C and environment failures into one line, without a traceback.

    Every message goes through :func:`~ktt_core.secrets.mask_secrets`, so a password in a
    URL never reaches the terminal whatever raised it. ``KTT_DEBUG=1`` shows tracebacks.
    """

    def invoke(self, ctx):
        from ktt_core.errors import environment_error

        try:
            return super().invoke(ctx)
        except KttError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except KeyboardInterrupt:
            if os.environ.get("KTT_DEBUG"):
                raise
            click.echo("Error: interrupted (Ctrl-C); nothing of the unfinished step was kept", err=True)
            ctx.exit(130)
        except OSError as exc:
            message = environment_error(exc)
            if message is None or os.environ.get("KTT_DEBUG"):
                raise
            raise click.ClickException(_one_line(message)) from None


def _one_line(message: str) -> str:
    from ktt_core.secrets import mask_secrets

    return mask_secrets(" ".join(message.split()))


def _workspace(ctx):
    from ktt_core.workspace import Workspace

    return Workspace(ctx.obj["workspace"])


def _plugins():
    from ktt_core.plugins import get_plugins

    return get_plugins()


def _split_list(value: str, what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise KttError(f"{what}: expected a comma-separated list, got {value!r}")
    return items


@click.group(cls=KttGroup)
@click.option("--workspace", "-w", type=click.Path(file_okay=False), envvar="KTT_HOME", default=".",
              show_default=True, help="Folder holding datasets/ and runs/ (env KTT_HOME).")
@click.version_option(package_name="ktt-core")
@click.pass_context
def cli(ctx, workspace):
    """KTT: hierarchical text classification with transformer encoders."""
    ctx.ensure_object(dict)
    ctx.obj["workspace"] = workspace


def _require_dvc(ctx) -> None:
    """For --dvc: fail before any work unless the workspace is in a DVC repository."""
    from ktt_core import versioning

    versioning.require_repo(_workspace(ctx).root)


# -- workspace ------------------------------------------------------------------------------
@cli.command()
@click.option("--dvc", "use_dvc", is_flag=True,
              help="Make the workspace a git + DVC repository (git init when it is in none).")
@click.option("--remote", type=click.Path(file_okay=False), default=None,
              help="With --dvc: local folder to use as the default DVC remote.")
@click.pass_context
def init(ctx, use_dvc, remote):
    """Create the workspace folder (datasets/, runs/); with --dvc, version it with DVC."""
    if remote and not use_dvc:
        raise KttError("--remote goes with --dvc: ktt init --dvc --remote DIR")
    ws = _workspace(ctx)
    ws.datasets.mkdir(parents=True, exist_ok=True)
    ws.runs.mkdir(parents=True, exist_ok=True)
    click.echo(f"workspace {ws.root}: datasets/ and runs/ ready")
    if use_dvc:
        from ktt_core import versioning

        for line in versioning.init_workspace(ws.root, remote):
            click.echo(line)


# -- plugins and models -------------------------------------------------------------------
@cli.command("list-models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_models(as_json):
    """List the models that installed plugins provide."""
    from ktt_core.config import defaults_for

    plugins = _plugins()
    # A head model says which encoder it runs on by default (--set encoder=... changes it).
    shown = lambda s: s.display_name + (f" on {defaults_for(s)['encoder']}" if s.model is None else "")  # noqa: E731
    rows = [{"name": s.name, "display_name": shown(s), "plugin": s.plugin,
             "version": s.plugin_version, "capabilities": list(s.supports) + (["serve"] if s.service else []),
             "service": s.service, "description": s.description} for s in sorted(plugins.models.values(), key=lambda s: s.name)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if all(r["plugin"] == "ktt-core" for r in rows):
        click.echo("No model plugins installed (only the core's ensemble). Install one, e.g.: "
                   "pip install ./plugins/ktt-db-linear")
        if not rows:
            return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "display name", "plugin", "version", "capabilities")
    for r in rows:
        table.add_row(r["name"], r["display_name"], r["plugin"], r["version"], ", ".join(r["capabilities"]))
    Console().print(table)


@cli.command("config")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def show_config(model, as_json):
    """List MODEL's hyperparameters: default, allowed values, meaning (set with --set KEY=VALUE)."""
    from ktt_core.config import describe_keys

    rows = describe_keys(_plugins().model(model))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "default", "allowed", "meaning", title=f"{model}: ktt train {model} DATASET --set KEY=VALUE "
                  "(or --config FILE.yaml); * = searched by ktt tune")
    for r in rows:
        table.add_row(r["key"] + (" *" if r["tuned"] else ""), json.dumps(r["default"]), r["allowed"], r["description"])
    Console().print(table)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_plugins(as_json):
    """List loaded plugins, their models and the hooks they implement."""
    plugins = _plugins()
    rows = []
    for info in plugins.info:
        module = plugins.pm.get_plugin(info.name)
        hooks = sorted(h.name for h in plugins.pm.get_hookcallers(module)) if module else []
        models = sorted(s.name for s in plugins.models.values() if s.plugin == info.package)
        rows.append({"name": info.name, "package": info.package, "version": info.version,
                     "models": models, "hooks": hooks, "error": info.error})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"FAILED: {r['error']}" if r["error"] else f"models: {', '.join(r['models']) or '-'}"
        click.echo(f"{r['name']} ({r['package']} {r['version']})  {state}  hooks: {', '.join(r['hooks'])}")
    if not rows:
        click.echo("No plugins loaded.")


# -- import -------------------------------------------------------------------------------
@cli.command("import")
@click.argument("args", nargs=-1, required=True, metavar="[SOURCE] NAME")
@click.option("--text", "text_column", required=True, help="Column holding the text.")
@click.option("--labels", "label_columns", required=True,
              help="Column holding the label path, or comma list of one column per level.")
@click.option("--sep", default=None, help="Separator of levels inside a label string, e.g. ' > '.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "json", "jsonl", "parquet", "arrow"]),
              default=None, help="File format (default: from the extension).")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/TSV/JSON files.")
@click.option("--sql-url", default=None, help="SQLAlchemy database URL, e.g. sqlite:///shop.db.")
@click.option("--query", default=None, help="SQL query returning the text and label columns.")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Keep only the first N levels.")
@click.option("--split-ratios", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions.")
@click.option("--split", "split_method", type=click.Choice(["stratified", "random"]), default="stratified",
              show_default=True, help="Stratify by label path, or cut a seeded shuffle.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-duplicates", is_flag=True, help="Keep repeated and conflicting rows.")
@click.option("--drop-invalid", is_flag=True, help="Drop (and count) rows with empty text or labels instead of failing.")
@click.option("--force", is_flag=True, help="Replace an existing dataset of the same name.")
@click.option("--dvc", "use_dvc", is_flag=True,
              help="Track the dataset folder with DVC and push it (see ktt init --dvc).")
@click.pass_context
def import_(ctx, args, text_column, label_columns, sep, fmt, encoding, sql_url, query, depth,
            split_ratios, split_method, seed, keep_duplicates, drop_invalid, force, use_dvc):
    """Import a file (CSV, TSV, JSON, JSONL, Parquet, Arrow) or a SQL query as dataset NAME."""
    from ktt_core import versioning
    from ktt_core.data import importers
    from ktt_core.data.datasets import write_dataset
    from ktt_core.environment import check_url, require_writable
    from ktt_core.locks import lock_dataset

    if sql_url or query:
        if not (sql_url and query):
            raise KttError("SQL import needs both --sql-url and --query")
        if len(args) != 1:
            raise KttError("with --sql-url, give only the dataset NAME (no SOURCE file)")
        source, name = None, args[0]
    elif len(args) != 2:
        raise KttError("expected SOURCE NAME (a file and a dataset name), or NAME with --sql-url/--query")
    else:
        source, name = args
    target = _workspace(ctx).dataset_path(name)  # a plain name, kept inside the workspace
    ratios = _parse_ratios(split_ratios)
    if sql_url:
        check_url(sql_url, "--sql-url")
    require_writable(target.parent, f"datasets folder {target.parent}")  # before reading the source
    if use_dvc:
        _require_dvc(ctx)
    if target.exists() and not force:
        raise KttError(f"dataset '{name}' already exists in {target.parent}; pass --force to replace it")
    table = importers.read_table(source, fmt=fmt, encoding=encoding, sql_url=sql_url, query=query)
    result = importers.extract_records(
        table, text_column=text_column, label_columns=_split_list(label_columns, "--labels"),
        sep=sep, depth=depth, drop_invalid=drop_invalid,
        source=source if source else importers.sql_source_name(sql_url))
    options = {"text": text_column, "labels": label_columns, "sep": sep, "depth": depth,
               "split_ratios": ratios, "split": split_method, "seed": seed,
               "keep_duplicates": keep_duplicates, "drop_invalid": drop_invalid, "query": query}
    # The source is read without the lock (reading writes nothing); the folder is written (or
    # replaced) and tracked under it, and write_dataset checks again that it may write.
    with lock_dataset(_workspace(ctx), name):
        report = write_dataset(target, result, ratios=ratios, seed=seed, split=split_method,
                               keep_duplicates=keep_duplicates, force=force, options=options)
        tracked = versioning.track(_workspace(ctx).root, [target]) if use_dvc else None
    click.echo(f"Imported '{name}' from {result.source} into {target}")
    click.echo(f"  rows read: {report.rows_read}, kept: {report.kept}")
    for why, n in report.dropped.items():
        click.echo(f"  dropped {n} rows: {why}")
    if report.padded_short_paths:
        click.echo(f"  {report.padded_short_paths} rows have fewer levels than the deepest "
                   f"({len(report.classes_per_level)}); padded with placeholder nodes (kept)")
    if report.inner_node_paths:
        click.echo(f"  {report.inner_node_paths} of them end at a node that also has children "
                   f"(e.g. {report.inner_node_example!r}); each such node gets a leaf class of its own (kept)")
    if report.long_texts:
        row, chars = report.longest_text
        click.echo(f"  note: {report.long_texts} texts are longer than {importers.LONG_TEXT_CHARS:,} characters "
                   f"(longest: row {row}, {chars:,}); kept, models read only the first max_length tokens")
    click.echo("  classes per level: " + ", ".join(
        f"level {d + 1}: {n}" for d, n in enumerate(report.classes_per_level)))
    click.echo("  split ({}): {}".format("stratified by path" if report.stratified else "random",
                                         ", ".join(f"{k} {v}" for k, v in report.split_rows.items())))
    empty = [k for k in ("train", "val") if not report.split_rows.get(k)]
    if empty:
        click.echo(f"  note: no {' and no '.join(empty)} rows; training needs both "
                   "(import more rows or change --split-ratios)")
    if tracked:
        click.echo(tracked)


def _parse_ratios(text: str) -> tuple[float, float, float]:
    import math

    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise KttError(f"--split-ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if (len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values)
            or abs(sum(values) - 1) > 1e-6 or values[0] <= 0):
        raise KttError(f"--split-ratios {text!r}: expected three non-negative fractions summing to 1, "
                       "train > 0")
    return values


def _threads_option(f):
    """``--threads N``: the CPU threads of a command that runs a model."""
    return click.option("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: the CPUs this process may use, from its CPU affinity "
                             "and cgroup quota; OMP_NUM_THREADS when set). On cores other work keeps busy, fewer "
                             "threads run faster: the log line says so.")(f)


def _threads(threads: int | None) -> int:
    """``--threads`` checked (one-line error below 1), or its default; imports no torch."""
    from ktt_core.cpu import check_threads

    return check_threads(threads)


# -- train --------------------------------------------------------------------------------
@cli.command()
@click.argument("models")
@click.argument("datasets")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON or YAML file of hyperparameters.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one hyperparameter.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the training split (default: the model's; see ktt config MODEL).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0): same seed, same model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--dry-run", is_flag=True, help="Check data, config and model, print the plan, train nothing.")
@click.option("--reference", is_flag=True, help="Also write the drift reference set (reference.parquet).")
@click.option("--freeze-encoder", is_flag=True, default=None,
              help="Train the head only, on encoder features computed once and cached.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--dvc", "use_dvc", is_flag=True,
              help="Track each run's best.pt and last.pt with DVC and push it (see ktt init --dvc).")
@click.option("--resume", "resume", type=click.Path(file_okay=False), default=None, metavar="RUN_DIR",
              help="Continue the interrupted run in RUN_DIR from its last.pt, with its config "
                   "(--epochs may raise the epoch count).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None, metavar="N",
              help="Also write last.pt every N training steps, so a crash loses less "
                   "(default 0: at epoch ends only).")
@click.option("--keep-last", is_flag=True, default=None,
              help="Keep last.pt (weights and optimizer state) when the run ends, to --resume it later with "
                   "more --epochs; by default a finished run keeps only best.pt.")
@_threads_option
@click.pass_context
def train(ctx, models, datasets, config_file, sets, epochs, seed, device, dry_run, reference,
          freeze_encoder, compile_, use_dvc, resume, checkpoint_every, keep_last, threads):
    """Train MODELS (comma list) on DATASETS (comma list).

    Hyperparameters come from the model's defaults, then --config FILE, then --set KEY=VALUE,
    then the options below. `ktt config MODEL` lists every key with its default and allowed values.
    """
    from ktt_core import jobs

    threads = _threads(threads)
    layers = _config_layers(config_file, sets, {"epochs": epochs, "seed": seed, "freeze_encoder": freeze_encoder,
                                                "compile": compile_})
    ws = _workspace(ctx)
    if use_dvc:
        _require_dvc(ctx)
    plugins = _plugins()
    plan = [(plugins.model(m), d) for m in _split_list(models, "MODELS") for d in _split_list(datasets, "DATASETS")]
    if resume and len(plan) != 1:
        raise KttError("--resume continues one run: give one MODEL and one DATASET")
    for _, d in plan:
        ws.dataset_dir(d)  # fail on an unknown dataset before any training starts
    try:
        for spec, dataset in plan:
            jobs.train(ws, plugins, spec, dataset, layers, device, dry_run=dry_run,
                       reference=reference, echo=click.echo, dvc=use_dvc, resume=resume,
                       checkpoint_every=checkpoint_every, keep_last=keep_last, threads=threads)
    finally:
        if "ktt_core.distributed" in sys.modules:  # only a run that trained joined a process group
            sys.modules["ktt_core.distributed"].shutdown()


def _config_layers(config_file, sets, options: dict) -> list:
    """Hyperparameter layers, lowest priority first: --config file, --set, options."""
    from ktt_core.config import parse_set_options, read_config_file

    layers = []
    if config_file:
        layers.append((config_file, read_config_file(config_file)))
    if sets:
        layers.append(("--set", parse_set_options(sets)))
    options = {k: v for k, v in options.items() if v is not None}
    if options:
        layers.append(("options", options))
    return layers


@cli.command()
@click.argument("model")
@click.argument("dataset")
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="Trials the study should hold in all (shared by every process on the study).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per trial.")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Stop starting trials after S seconds.")
@click.option("--metric", default="exact_path_accuracy", show_default=True,
              help="Validation metric to maximise (or 'loss' to minimise).")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite file tuning.db in the workspace).")
@click.option("--study", "study_name", default=None, help="Study name (default: MODEL-DATASET).")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="JSON/YAML search space replacing the model's.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@click.option("--freeze-encoder", is_flag=True, default=None, help="Trials train the head only (fast).")
@click.option("--seed", type=int, default=None, help="Seed of the sampler.")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def tune(ctx, model, dataset, trials, epochs, timeout, metric, storage, study_name, space_file, config_file,
         sets, freeze_encoder, seed, device):
    """Search MODEL's hyperparameters on DATASET with Optuna (pruning, shared studies)."""
    from ktt_core.tuning import tune as run_tune

    layers = _config_layers(config_file, sets, {"epochs": epochs, "freeze_encoder": freeze_encoder})
    plugins = _plugins()
    run_tune(_workspace(ctx), plugins, plugins.model(model), dataset, layers, trials=trials, device=device,
             timeout=timeout, storage=storage, study_name=study_name, space_file=space_file, metric=metric,
             seed=seed, echo=click.echo)


# -- test / predict ------------------------------------------------------------------------
def _run_options(f):
    f = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="Checkpoint file to use.")(f)
    f = click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
                     help="Run folder (its best.pt) to use; default: the latest run.")(f)
    return f


def _checkpoint_options(f):
    f = _run_options(f)
    f = click.option("--device", default="auto", show_default=True)(f)
    f = click.option("--decoding", type=click.Choice(["consistent", "per-level"]), default="consistent",
                     show_default=True,
                     help="Best path of the hierarchy, or each level's argmax on its own.")(f)
    f = click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="Stop at the deepest level whose confidence reaches T (non-leaf predictions).")(f)
    f = click.option("--no-calibration", "raw_scores", is_flag=True,
                     help="Use the raw scores, not the calibrated ones the run stores (ktt calibrate).")(f)
    return f


@cli.command()
@click.argument("model")
@click.argument("dataset")
@_checkpoint_options
@click.option("--split", "split_name", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--threshold-sweep", "sweep", is_flag=True,
              help="Also show, for thresholds 0 to 0.99, where predictions stop and how right they are.")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="P",
              help="Use the lowest threshold whose hierarchical precision reaches P on the validation split.")
@_threads_option
@click.pass_context
def test(ctx, model, dataset, checkpoint, run_dir, device, decoding, threshold, raw_scores, split_name, as_json,
         sweep, target_precision, threads):
    """Evaluate a trained MODEL on DATASET's test split; prints and saves the metrics."""
    from ktt_core import jobs

    threads = _threads(threads)
    if threshold is not None and target_precision is not None:
        raise KttError("give --threshold or --target-precision, not both")

    def show(metrics: dict) -> None:  # before saving: a failed save must not lose them
        if as_json:
            click.echo(json.dumps(metrics, indent=2))
            return
        _print_metrics(metrics, f"{model} on {dataset} ({split_name})")
        if target_precision is not None:
            click.echo(f"threshold {metrics['threshold']!r} reaches hierarchical precision {target_precision} "
                       f"on the validation split; on {split_name}: "
                       f"{metrics['hierarchical_precision']:.4f}")
        if sweep:
            from ktt_core.thresholds import format_sweep

            click.echo(f"threshold sweep on the {split_name} split (calibration: {metrics['calibration']}):")
            depth = sum(1 for key in metrics if key.startswith("level_") and key.endswith("_accuracy"))
            click.echo(format_sweep(metrics["threshold_sweep"], depth))

    _, saved = jobs.test(_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint,
                         device, split_name, decoding, threshold, show=show, calibrated=not raw_scores,
                         sweep=sweep, target_precision=target_precision, threads=threads)
    if not as_json:
        click.echo(f"Saved to {saved}")


@cli.command()
@click.argument("model")
@click.argument("dataset")
@_run_options
@click.option("--device", default="auto", show_default=True)
@click.option("--method", type=click.Choice(["per-level", "temperature", "none"]), default=None,
              help="Temperature per level, one for all levels, or none (raw scores); default: the run's "
                   "config key calibration.")
@click.pass_context
def calibrate(ctx, model, dataset, checkpoint, run_dir, device, method):
    """Fit the confidence calibration of a trained MODEL on DATASET's validation split.

    Training does this already; run it for a run trained before calibration existed, or to
    change the method. The calibration is stored in the checkpoint and every later export."""
    from ktt_core import jobs

    jobs.calibrate(_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint, device, method, click.echo)


@cli.command()
@click.argument("model")
@click.argument("dataset")
@_run_options
@click.option("--device", default="auto", show_default=True)
@click.option("--split", "split_name", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the HTML file (default: RUN/report-SPLIT.html).")
@click.option("--peers", "peers_file", type=click.Path(dir_okay=False), default=None,
              help="benchmarks/quality.py results (JSON) to compare with "
                   "(default: WORKSPACE/reports/quality-DATASET.json when it exists).")
@click.pass_context
def report(ctx, model, dataset, checkpoint, run_dir, device, split_name, output, peers_file):
    """Write a self-contained HTML evaluation report of a trained MODEL on DATASET.

    Headline metrics, per-level and per-class tables, the most confused classes, the worst
    errors, reliability diagrams before and after calibration, the threshold sweep and the
    training curves, in one file that opens offline."""
    from ktt_core import jobs

    path = jobs.report(_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint, device, split_name,
                       output, peers_file)
    click.echo(f"report: {path} ({path.stat().st_size / 1024:.0f} KB; open it in a browser)")


@cli.command()
@click.argument("models")
@click.argument("dataset")
@click.option("--split", "split_name", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the chart (default: WORKSPACE/reports/compare-DATASET.png).")
@click.pass_context
def compare(ctx, models, dataset, split_name, device, output):
    """Test the latest run of each of MODELS (comma list) on DATASET: a table and a chart."""
    from rich.console import Console
    from rich.table import Table

    from ktt_core import jobs
    from ktt_core.plots import plot_comparison

    ws, plugins = _workspace(ctx), _plugins()
    names = _split_list(models, "MODELS")
    for name in names:  # every name and run checked before any model is loaded
        plugins.model(name)
        ws.latest_run(name, dataset)
    rows = []
    for name in names:
        metrics, _ = jobs.test(ws, plugins, name, dataset, None, None, device, split_name)
        rows.append(metrics)
    columns = ["exact_path_accuracy", "level_1_accuracy", "hierarchical_f1", "level_1_macro_f1"]
    columns = [c for c in columns if all(c in r for r in rows)]
    table = Table("model", *(c.replace("_", " ") for c in columns), title=f"{dataset} ({split_name} split)")
    best = {c: max(r[c] for r in rows) for c in columns}
    for r in rows:
        table.add_row(r["model"], *(f"[bold]{r[c]:.4f}[/bold]" if r[c] == best[c] else f"{r[c]:.4f}"
                                    for c in columns))
    Console().print(table)
    target = Path(output) if output else ws.root / "reports" / f"compare-{dataset}.png"
    plot_comparison(rows, target, f"{', '.join(names)} on {dataset} ({split_name} split)")
    click.echo(f"chart: {target}")


def _print_metrics(metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, (int, str)):
            table.add_row(key, str(value))
    Console().print(table)


@cli.command()
@click.argument("model")
@click.argument("dataset")
@click.argument("texts", nargs=-1, required=False)
@_checkpoint_options
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Show the N best paths.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per text.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="Predict every text of this file (CSV, TSV, JSONL, Parquet, Arrow) instead of TEXTS.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="With --input: write the predictions here (.csv, .tsv, .jsonl, .parquet).")
@click.option("--text", "text_column", default="text", show_default=True, help="With --input: the text column.")
@click.option("--keep", "keep", multiple=True, metavar="COLS",
              help="With --input: copy these input columns (comma list, e.g. id) into the output, to join back on.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="With --input: rows read and predicted at a time.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Predict with the ONNX export in DIR (ktt export --onnx) on onnxruntime, without torch.")
@_threads_option
@click.pass_context
def predict(ctx, model, dataset, texts, checkpoint, run_dir, device, decoding, threshold, raw_scores, top_k,
            as_json, input_path, output_path, text_column, keep, chunk_size, onnx_dir, threads):
    """Predict the label path of TEXTS, or of every text of an --input file, with a trained MODEL."""
    threads = _threads(threads)  # torch's threads, or onnxruntime's with --onnx
    if bool(texts) == bool(input_path):
        raise KttError("give either TEXTS or --input FILE, not both" if texts else "give TEXTS or --input FILE")
    if input_path and not output_path:
        raise KttError("--input needs --output FILE (.csv, .tsv, .jsonl or .parquet)")
    if output_path and not input_path:
        raise KttError("--output goes with --input FILE; TEXTS are printed")
    if keep and not input_path:
        raise KttError("--keep goes with --input FILE: it copies input columns into the output")
    keep = [c for item in keep for c in _split_list(item, "--keep")]
    if onnx_dir:
        # Not ktt_core.jobs, which imports torch: an ONNX export runs where torch is not installed.
        from ktt_core import onnx_runtime as runner

        if checkpoint or run_dir:
            raise KttError("--onnx DIR runs an exported model; --run and --checkpoint choose a torch checkpoint")
        if device not in ("auto", "cpu"):
            raise KttError(f"--device {device}: --onnx runs on the CPU with onnxruntime")
        source = (model, onnx_dir)
    else:
        from ktt_core import jobs as runner

        source = (_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint, device)
    if input_path:
        n = runner.predict_file(*source, input_path, output_path, text_column, top_k, chunk_size, decoding,
                                threshold, keep, calibrated=not raw_scores, threads=threads)
        click.echo(f"wrote {n} predictions to {output_path}")
        return
    results = runner.predict(*source, list(texts), top_k, decoding, threshold, calibrated=not raw_scores,
                             threads=threads)
    for text, result in zip(texts, results):
        if as_json:
            click.echo(json.dumps({"text": text, **result}, ensure_ascii=False))
            continue
        click.echo(text)
        click.echo("  " + " > ".join(f"{lv['label']} ({lv['score']:.3f})" for lv in result["levels"]))
        for rank, alt in enumerate(result["top_k"] or [], 1):
            click.echo(f"  {rank}. {' > '.join(alt['path'])}  {alt['score']:.3f}")


# -- export / serve / monitor -----------------------------------------------------------------
@cli.command()
@click.argument("model")
@click.argument("dataset")
@_run_options
@click.option("--onnx", "to_onnx", is_flag=True, help="Write an ONNX model (encoder + head) with its tokenizer.")
@click.option("--bento", "to_bento", is_flag=True, help="Save the model into the BentoML model store.")
@click.option("--build", is_flag=True, help="With --bento: also build a Bento (offline) from the plugin's service.")
@click.option("--monitoring", is_flag=True,
              help="With --bento: also write docker-compose.yaml with the monitor, Prometheus and Grafana.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Folder for the files written (default: RUN/export).")
@click.option("--force", is_flag=True,
              help="Replace an earlier export that was changed since; files KTT did not write are never deleted.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="With --onnx: also write an int8 copy (onnx-int8/) and compare its accuracy on the test split.")
@click.pass_context
def export(ctx, model, dataset, checkpoint, run_dir, to_onnx, to_bento, build, monitoring, output, force, quantize):
    """Export a trained MODEL: --onnx, --bento (BentoML model store), --build (a Bento)."""
    from ktt_core import export as exporting

    if quantize and not to_onnx:
        raise KttError(f"--quantize {quantize} goes with --onnx: it quantizes the ONNX export")
    if not (to_onnx or to_bento):
        raise KttError("say what to export: --onnx and/or --bento")
    if (build or monitoring) and not to_bento:
        raise KttError("--build and --monitoring go with --bento")
    for line in exporting.export_run(_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint,
                                     onnx=to_onnx, bento=to_bento, build=build, monitoring=monitoring,
                                     output=output, force=force, quantize=quantize):
        click.echo(line)


@cli.command()
@click.argument("model")
@click.argument("dataset")
@_run_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run the model with PyTorch or with onnxruntime.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="With --runtime onnx: serve the int8 export (its accuracy is compared on the test split first).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Adaptive batching: most texts per model call.")
@click.option("--max-latency-ms", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Adaptive batching: most time a request may wait for the model (503 after it).")
@click.option("--layout", type=click.Choice(["single", "split"]), default="single", show_default=True,
              help="single: the model in the HTTP process (fastest on one machine); split: BentoML's "
                   "API + runner services.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Serving processes sharing the port, each with its own model copy (single layout) and "
                   "CPUs/N threads unless --threads says otherwise (default: one per CPU, at most 4; "
                   "split layout: API processes, default 1).")
@click.option("--access-log", is_flag=True, help="Log a line per request (off by default: it costs throughput; "
                                                   "/metrics counts requests and latency).")
@click.option("--monitoring", is_flag=True, help="Also run the drift monitor and send it every prediction.")
@click.option("--monitor-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the drift monitor (default: --port + 1).")
@click.option("--max-request-mb", type=click.FloatRange(min=0.001, max=4096), default=None,
              help="Largest request body in MB; larger ones get 413 (default 10, or KTT_MAX_REQUEST_BYTES).")
@click.option("--decoding", type=click.Choice(["consistent", "per-level"]), default="consistent",
              show_default=True, help="Best path of the hierarchy, or each level's argmax on its own.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Stop at the deepest level whose (calibrated) confidence reaches T.")
@_threads_option
@click.pass_context
def serve(ctx, model, dataset, checkpoint, run_dir, host, port, runtime, quantize, max_batch_size, max_latency_ms,
          layout, workers, access_log, monitoring, monitor_port, max_request_mb, decoding, threshold, threads):
    """Serve a trained MODEL over HTTP with BentoML (POST /predict, /metrics, /readyz)."""
    from ktt_core.serving import serve as serving

    # Checked when given; else serve shares the CPUs out among its workers.
    threads = _threads(threads) if threads is not None else None
    code = serving.serve(_workspace(ctx), _plugins(), model, dataset, run_dir, checkpoint, host=host, port=port,
                         runtime=runtime, quantize=quantize, max_batch_size=max_batch_size,
                         max_latency_ms=max_latency_ms, layout=layout, workers=workers, access_log=access_log,
                         monitoring=monitoring, monitor_port=monitor_port or port + 1,
                         max_request_bytes=int(max_request_mb * 2**20) if max_request_mb else None,
                         decoding=decoding, threshold=threshold, threads=threads, echo=click.echo)
    sys.exit(code)


@cli.command()
@click.argument("model")
@click.argument("dataset")
@_run_options
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), default=None,
              help="Reference set (parquet); default: the run's reference.parquet.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=3001, show_default=True)
@click.option("--window", type=click.IntRange(min=10), default=500, show_default=True,
              help="Live rows compared with the reference (a sliding window).")
@click.pass_context
def monitor(ctx, model, dataset, checkpoint, run_dir, reference_path, host, port, window):
    """Run the drift monitor of a trained MODEL on its own (POST /ingest, /metrics)."""
    from ktt_core.monitoring import launch as monitoring

    sys.exit(monitoring.run_monitor(_workspace(ctx), model, dataset, run_dir, checkpoint, reference_path,
                                    host=host, port=port, window=window, echo=click.echo))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="ktt")


if __name__ == "__main__":
    sys.exit(main())
