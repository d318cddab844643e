"""``ktt export``: turn a trained run into deployable artefacts.

- ``onnx``: one ONNX graph (encoder + head) with the tokenizer and hierarchy beside it
  (:mod:`ktt_core.export.onnx`), runnable without torch (:mod:`ktt_core.onnx_runtime`);
  with ``--quantize int8`` also an int8 copy beside it, checked for accuracy on the test
  split (:mod:`ktt_core.export.quantize`).
- ``bento``: the model saved into the BentoML model store with safe files only
  (:mod:`ktt_core.export.bento`); optionally a built Bento and a docker-compose stack
  with the drift monitor, Prometheus and Grafana (:mod:`ktt_core.export.compose`).

The files of each format come from the ``ktt_export`` hook (by default the model's own
``export``); the core writes an ONNX folder whole or not at all, and only after the
export scores probe texts as the model does (:mod:`ktt_core.export.parity`).

Every folder written ends with ``manifest.json`` (:mod:`ktt_core.manifest`): loaders verify
each file against it, and an export replaces a folder only when everything in it is KTT's
(``--force`` for an export that was changed; files KTT did not write are never deleted).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ktt_core.errors import KttError
from ktt_core.manifest import export_directory, write_manifest


def export_run(ws, plugins, model_name: str, dataset: str, run_dir, checkpoint, *, onnx: bool = False,
               bento: bool = False, build: bool = False, monitoring: bool = False,
               output=None, force: bool = False, quantize: str | None = None) -> Iterator[str]:
    """Export one trained run; yields a line of report per artefact written.

    ``quantize="int8"`` (with ``onnx``) adds ``OUT/onnx-int8`` and the accuracy comparison
    (:mod:`ktt_core.export.quantize`); with ``bento`` too, that int8 folder is the one stored.
    """
    from ktt_core.environment import require_writable
    from ktt_core.jobs import load_model, resolve_checkpoint

    path = resolve_checkpoint(ws, model_name, dataset, run_dir, checkpoint)
    out = Path(output) if output else path.parent / "export"
    # Before loading the model or writing anything: a folder that cannot be written, and a
    # model name or dataset name that makes no valid BentoML tag.
    if quantize and not onnx:
        raise KttError(f"--quantize {quantize} goes with --onnx: it quantizes the ONNX export")
    if onnx or build or monitoring:
        require_writable(out, f"--output {output}" if output else f"export folder {out}")
    if bento:
        from ktt_core.export.bento import model_tag_name

        model_tag_name(model_name, dataset)
    model = load_model(plugins, model_name, path)
    int8_rows = None
    if quantize:  # the test rows of the accuracy check, read (or refused) before anything is written
        from ktt_core.export.quantize import check_rows

        int8_rows = check_rows(ws, dataset, model)
    with _run_lock(ws, path.parent, out):
        yield from _export(plugins, model_name, dataset, model, path, out, onnx, bento, build, monitoring, force,
                           int8_rows)


def _run_lock(ws, run: Path, out: Path):
    """The run's write lock when the export goes into the run folder (its default place)."""
    import contextlib

    from ktt_core.locks import lock_run

    if out.resolve().is_relative_to(run.resolve()):
        return lock_run(run, ws)
    return contextlib.nullcontext()


def _export(plugins, model_name, dataset, model, path: Path, out: Path, onnx, bento, build,
            monitoring, force, int8_rows=None) -> Iterator[str]:
    onnx_dir = None
    if onnx:
        onnx_dir = written = export_with_hook(plugins, model, "onnx", out / "onnx", force=force)
        yield f"ONNX model written to {written} (ktt predict {model_name} {dataset} --onnx {written} TEXT)"
        if int8_rows is not None:
            from ktt_core.export.quantize import FOLDER, quantize_export

            onnx_dir = out / FOLDER
            check = quantize_export(written, onnx_dir, int8_rows, force)
            yield f"int8 ONNX model written to {onnx_dir} (ktt predict {model_name} {dataset} --onnx {onnx_dir} TEXT)"
            yield from check.lines()
    if bento:
        from ktt_core.export import bento as bentos

        spec = plugins.model(model_name)
        tag = bentos.save_model(plugins, model, path, dataset, include_onnx=onnx_dir)
        yield f"BentoML model saved: {tag} (ktt serve {model_name} {dataset})"
        if build:
            yield f"Bento built: {bentos.build(spec, tag, out / 'bento', force)} (bentoml containerize it)"
        if monitoring:
            from ktt_core.export.compose import write_compose

            reference = path.parent / "reference.parquet"
            if not reference.is_file():
                raise KttError(f"{path.parent}: no reference set for the monitor; train with --reference")
            yield f"docker-compose stack written to {write_compose(spec, tag, out / 'compose', reference, force)}"


def _store_calibration(model, info_path: Path) -> None:
    """Add the model's calibration to the ``ktt.json`` a plugin wrote, so the export's
    runtime applies it as the checkpoint's model does (plugins need not know of it)."""
    import json

    from ktt_core.files import atomic_write_json

    if model.calibration is None or not info_path.is_file():
        return
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["calibration"] = model.calibration.to_dict()
    atomic_write_json(info_path, info)


def export_with_hook(plugins, model, fmt: str, directory: Path, force: bool = False) -> Path:
    """Export ``model`` as ``fmt`` into ``directory`` through the ``ktt_export`` hook.

    The folder appears whole and checked, or not at all: it is written beside the target,
    gets its manifest, an ONNX export must pass :func:`ktt_core.export.parity.check_onnx_parity`
    (loaded as users load it, manifest verified), and only then does it replace the target,
    which :func:`ktt_core.manifest.check_replaceable` first checks holds only KTT's files.
    """
    from ktt_core.export.parity import check_onnx_parity

    spec = plugins.model(model.name)
    directory = Path(directory)
    with export_directory(directory, force) as tmp:
        written = plugins.hook.ktt_export(spec=spec, model=model, fmt=fmt, directory=tmp)
        if written is None:
            raise KttError(f"no installed plugin exports {model.name} as {fmt}")
        if fmt == "onnx":
            _store_calibration(model, tmp / "ktt.json")
            write_manifest(tmp)
            check_onnx_parity(plugins, spec, model, tmp)
    return directory
