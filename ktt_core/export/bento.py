"""The BentoML side of export: safe model files in the model store, and offline Bento builds.

A stored model is a folder of plain files, never a pickled module:

- ``checkpoint.pt``: the KTT checkpoint (tensors and strings only, read with
  ``weights_only=True``, hash-checked), ``hierarchy.json`` and ``ktt.json`` (what it is);
- ``reference.parquet``: the run's drift reference set, when it has one;
- ``onnx/``: the ONNX export, when ``--onnx`` was exported too (``ktt serve --runtime onnx``):
  the int8 one with ``--quantize int8`` (:mod:`ktt_core.export.quantize`);
- ``manifest.json``: the SHA-256 of each of these files, written last and verified by
  :func:`load_predictor` before anything is loaded (BentoML's own ``model.yaml`` aside).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from ktt_core.errors import KttError
from ktt_core.files import sha256_file
from ktt_core.manifest import export_directory, verify_manifest, write_manifest

FORMAT = "ktt-bento-model"
#: The file BentoML writes into a stored model's folder itself (not KTT's, not in the manifest).
BENTOML_FILES = ("model.yaml",)


#: A BentoML tag name: lowercase letters, digits, '-', '_', '.', starting and ending with a
#: letter or digit, at most 63 characters (bentoml._internal.tag).
TAG_NAME = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
TAG_MAX = 63


def model_tag_name(model_name: str, dataset: str) -> str:
    """The model store name of a model trained on a dataset, made a valid BentoML tag.

    Names KTT accepts may not be tags as they are (uppercase, a trailing '.', longer than
    63 characters together): the name is lowercased, trimmed to end with a letter or digit,
    and, when that changed more than the case or it is too long, shortened and given 8
    hex digits of the full name's SHA-256, so two datasets never share a tag by accident.
    Checked before anything is written (``ktt export --bento``, ``ktt serve``).
    """
    import hashlib

    full = f"ktt-{model_name}-{dataset}"
    name = re.sub(r"[^-._a-z0-9]", "-", full.lower()).strip("-._")
    if name != full.lower() or len(name) > TAG_MAX:
        digest = hashlib.sha256(full.encode("utf-8")).hexdigest()[:8]
        name = f"{name[:TAG_MAX - 9].rstrip('-._')}-{digest}"
    if not TAG_NAME.match(name):  # cannot happen for names check_name accepts; never a traceback
        raise KttError(f"model {model_name!r} on dataset {dataset!r}: no valid BentoML tag can be made "
                       f"from {full!r}")
    return name


def write_model_files(model, directory: Path) -> Path:
    """The core's ``ktt_export(fmt="bento")``: checkpoint, hierarchy and description files."""
    from ktt_core.checkpoint import save_checkpoint
    from ktt_core.files import atomic_write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / "checkpoint.pt", model)
    atomic_write_json(directory / "hierarchy.json", model.hierarchy.to_dict())
    atomic_write_json(directory / "ktt.json", {"format": FORMAT, "version": 1, "model": model.name,
                                               "checkpoint_sha256": sha256_file(directory / "checkpoint.pt")})
    return directory


def find_stored(tag_name: str, checkpoint_sha256: str, include_onnx: Path | None = None):
    """The stored model of this name made from exactly this checkpoint (and, with
    ``include_onnx``, holding an ONNX export quantized as that one is), if any."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored_models = bentoml.models.list(tag_name)
    except NotFound:
        return None
    for stored in stored_models:
        # A model stored before manifests existed cannot be verified: store the checkpoint anew.
        if (stored.info.metadata.get("source_sha256") == checkpoint_sha256
                and (Path(stored.path) / "manifest.json").is_file()
                and (include_onnx is None
                     or onnx_quantized(Path(stored.path) / "onnx") == onnx_quantized(include_onnx))):
            return stored
    return None


def onnx_quantized(folder: Path) -> str | None | bool:
    """How the ONNX export in ``folder`` is quantized (``ktt.json`` ``quantized``: None for fp32),
    False when there is none: a stored model is reused only for the same kind of export, so
    ``ktt serve --runtime onnx --quantize int8`` never serves an fp32 export stored earlier."""
    try:
        return json.loads((Path(folder) / "ktt.json").read_text(encoding="utf-8")).get("quantized")
    except (OSError, ValueError, AttributeError):
        return False


def save_model(plugins, model, checkpoint: Path, dataset: str, include_onnx: Path | None = None) -> str:
    """Save ``model`` (loaded from ``checkpoint``) into the model store; returns its tag.

    Saving the same checkpoint again returns the existing tag instead of a duplicate.
    """
    import bentoml

    name = model_tag_name(model.name, dataset)
    source_sha = sha256_file(checkpoint)
    existing = find_stored(name, source_sha, include_onnx)
    if existing is not None:
        return str(existing.tag)
    spec = plugins.model(model.name)
    metadata = {"model": model.name, "dataset": dataset, "source_checkpoint": str(checkpoint),
                "source_sha256": source_sha, "plugin": spec.plugin, "plugin_version": spec.plugin_version,
                "service": spec.service, "depth": model.hierarchy.depth, "leaves": model.hierarchy.n_leaves}
    # bentoml.models.create writes into a temporary folder and moves it into the store only
    # when the block succeeds: a failed export leaves no half-written model behind.
    with bentoml.models.create(name, labels={"framework": "ktt", "model": model.name},
                               metadata=metadata) as stored:
        folder = Path(plugins.hook.ktt_export(spec=spec, model=model, fmt="bento", directory=Path(stored.path)))
        reference = checkpoint.parent / "reference.parquet"
        if reference.is_file():
            shutil.copyfile(reference, folder / "reference.parquet")
        if include_onnx is not None:
            shutil.copytree(include_onnx, folder / "onnx")
        write_manifest(Path(stored.path), ignore=BENTOML_FILES)
    return str(stored.tag)


def stored_model_dir(tag: str) -> Path:
    """The folder of a stored model; KttError when the store does not have it."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        raise KttError(f"BentoML model {tag} is not in the model store (ktt export MODEL DATASET --bento)") from None


def load_predictor(directory: Path, runtime: str = "torch", device: str = "cpu"):
    """A predictor (``run(texts)``) for the stored model in ``directory``: the model through the
    scoring call (:class:`ktt_core.scoring.ModelPredictor`) or its ONNX export."""
    from ktt_core.schemas import BENTO_INFO_SCHEMA, validate

    directory = Path(directory)
    info_path = directory / "ktt.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KttError(f"{info_path}: not a KTT model folder ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise KttError(f"{info_path}: not a KTT model folder (format {found!r})")
    # Every file (checkpoint, hierarchy, reference set, ONNX export) as it was stored.
    verify_manifest(directory, "stored model", ignore=BENTOML_FILES)
    validate(info, BENTO_INFO_SCHEMA, str(info_path))
    if runtime == "onnx":
        from ktt_core.onnx_runtime import open_onnx

        if not (directory / "onnx").is_dir():
            raise KttError(f"{directory}: no ONNX export in this model; ktt export ... --bento --onnx")
        return open_onnx(directory / "onnx")
    checkpoint = directory / "checkpoint.pt"
    if sha256_file(checkpoint) != info.get("checkpoint_sha256"):
        raise KttError(f"{checkpoint}: content hash does not match ktt.json; the stored model is damaged")
    from ktt_core.jobs import load_model
    from ktt_core.plugins import get_plugins
    from ktt_core.scoring import ModelPredictor

    plugins = get_plugins()
    model = load_model(plugins, info["model"], checkpoint).to(device)
    return ModelPredictor(plugins, plugins.model(info["model"]), model)


def build(spec, tag: str, output: Path, force: bool = False) -> str:
    """Build a Bento for ``spec``'s service around stored model ``tag``, offline; returns its tag.

    The build runs ``bentoml build`` in a child process, whose environment names the stored
    model (the service module reads it at import). KTT and the plugin travel as wheels
    inside the Bento, as they may not be on any package index the image can reach.
    """
    import subprocess

    from ktt_core.serving.launch import bentoml_env

    if not spec.service:
        raise KttError(f"plugin {spec.plugin} declares no BentoML service for {spec.name}")
    module, _, cls = spec.service.partition(":")
    with export_directory(output, force) as tmp:
        (tmp / "service.py").write_text(
            f'"""Bento entry point: the {spec.name} service of plugin {spec.plugin}."""\n'
            f"from {module} import {cls}, {cls.removesuffix('Service')}Runner  # noqa: F401\n",
            encoding="utf-8")
        wheels = build_wheels(spec, tmp / "wheels")
        (tmp / "bentofile.yaml").write_text(_yaml(bentofile_for(spec, tag, wheels)), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(output / "bentofile.yaml"),
                           "--output", "tag", str(output)], capture_output=True, text=True, cwd=output,
                          env=bentoml_env({"KTT_MODEL": spec.name, "KTT_BENTO_MODEL": tag}))
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise KttError(f"bentoml build failed in {output}: {last}")
    return done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def build_wheels(spec, folder: Path) -> list[str]:
    """Wheels of ktt-core and the plugin, built from their source trees when installed from one."""
    import subprocess
    from importlib.metadata import distribution

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name in ("ktt-core", spec.plugin):
        direct = distribution(name).read_text("direct_url.json") or ""
        url = json.loads(direct).get("url", "") if direct else ""
        if url.startswith("file://"):
            sources.append(url.removeprefix("file://"))
    if sources:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "-q", "-w", str(folder), *sources], capture_output=True, text=True)
        if done.returncode != 0:
            raise KttError(f"building wheels of {', '.join(sources)} failed: "
                           f"{(done.stderr.strip() or 'no output').splitlines()[-1]}")
    return sorted(f"wheels/{p.name}" for p in folder.glob("*.whl"))


def bentofile_for(spec, tag: str, wheels: list[str]) -> dict:
    """bentofile.yaml: the plugin's service, the stored model, pinned runtime packages.

    ``lock_packages: false`` because locking needs the internet; the pins are the versions
    installed here, so the Bento runs what was tested.
    """
    from importlib.metadata import PackageNotFoundError, version

    packages = ["torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "pluggy", "click",
                "onnxruntime", "evidently", "bentoml", "httpx", "PyYAML", "tqdm", "rich", "scikit-learn",
                "SQLAlchemy", "matplotlib", "prometheus-client"]
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # not installed here, so not needed at run time either
            continue
    if not wheels:  # installed from an index: ask for the same versions there
        pins += [f"ktt-core=={version('ktt-core')}", f"{spec.plugin}=={spec.plugin_version}"]
    return {
        "service": f"service:{spec.service.partition(':')[2]}",
        "name": f"ktt-{spec.name}".replace("_", "-"),
        "labels": {"framework": "ktt", "model": spec.name, "plugin": spec.plugin},
        "include": ["service.py", "wheels/*.whl"],
        "models": [tag],
        "envs": [{"name": "KTT_MODEL", "value": spec.name}, {"name": "KTT_BENTO_MODEL", "value": tag}],
        "python": {"packages": pins, "wheels": wheels, "lock_packages": False},
        "docker": {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"},
        "description": f"KTT {spec.display_name}, served by {spec.service}",
    }


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
