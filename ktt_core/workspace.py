"""Where KTT keeps things: ``datasets/NAME/`` and ``runs/MODEL/DATASET/TIMESTAMP/``.

Every path built from a name the user typed (dataset, model, study) goes through
:meth:`Workspace.resolve`: the name must be a plain folder name (:func:`check_name`) and the
resulting folder must stay inside the workspace once symbolic links are followed. Paths the
user names on purpose (``--run``, ``--resume``, ``--checkpoint``, ``--output``) are not names
and may point anywhere; their callers check what they hold.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from ktt_core import versioning
from ktt_core.errors import KttError

DATASET_FILES = ("hierarchy.json", "train.parquet", "val.parquet", "test.parquet")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Longest name: a folder name and a BentoML tag part must both fit.
MAX_NAME = 100


class Workspace:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def dataset_names(self) -> list[str]:
        if not self.datasets.is_dir():
            return []
        return sorted({p.name for p in self.datasets.iterdir()
                       if p.is_dir() and (p / "hierarchy.json").is_file()}
                      | {p.name[:-4] for p in self.datasets.glob("*.dvc") if p.is_file()})  # tracked by DVC

    def resolve(self, area: str, *names: tuple[str, ...]) -> Path:
        """``ROOT/area/name/...`` for user-given ``(what, name)`` pairs, e.g.
        ``resolve("runs", ("model", m), ("dataset", d))``; KttError (naming the part) for a
        name that is not a plain folder name or that leads outside the workspace. A third
        item is a prefix of the folder name (``("study", s, "tune-")`` is ``tune-s``).

        Each level is resolved with symbolic links followed and must stay under the area's
        own folder, so ``datasets/evil -> /elsewhere`` is refused. The areas themselves
        (``datasets/``, ``runs/``) may be links: the user set those up on purpose.
        """
        base = self.root / area
        real_base = base.resolve()
        path = base
        for what, name, *prefix in names:
            check_name(name, what)
            path = path / f"{''.join(prefix)}{name}"
            real = path.resolve()
            if not real.is_relative_to(real_base):
                raise KttError(f"{what} '{name}': {path} leads to {real}, outside the workspace's "
                               f"{area}/ folder; KTT keeps {area} inside {self.root} (remove the link; "
                               "a run elsewhere can be named with --run)")
        return path

    def dataset_path(self, name: str) -> Path:
        """Where dataset ``name`` lives (it may not exist yet)."""
        return self.resolve("datasets", ("dataset", name))

    def run_base(self, model: str, dataset: str) -> Path:
        """``runs/MODEL/DATASET``: the runs of one model on one dataset."""
        return self.resolve("runs", ("model", model), ("dataset", dataset))

    def dataset_dir(self, name: str) -> Path:
        """The folder of an imported dataset; KttError lists the ones there are."""
        path = self.dataset_path(name)
        missing = [path / f for f in DATASET_FILES if not (path / f).is_file()]
        if missing and versioning.is_tracked(missing[0]):  # fetch the folder from DVC
            versioning.ensure_local(missing[0], self.root, what="dataset file")
        if not (path / "hierarchy.json").is_file():
            known = ", ".join(self.dataset_names()) or "none yet (use ktt import)"
            raise KttError(f"unknown dataset '{name}' in {self.datasets}; datasets: {known}")
        return path

    def new_run_dir(self, model: str, dataset: str) -> Path:
        base = self.run_base(model, dataset)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = base / stamp, 1
        while path.exists():
            n += 1
            path = base / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return path

    def latest_run(self, model: str, dataset: str) -> Path:
        """The newest run of ``model`` on ``dataset`` that has a checkpoint (or one tracked by DVC)."""
        base = self.run_base(model, dataset)
        runs = sorted((p for p in base.glob("*") if (p / "best.pt").is_file() or (p / "best.pt.dvc").is_file()),
                      key=lambda p: p.stat().st_mtime) if base.is_dir() else []
        if not runs:
            raise KttError(f"no trained run of {model} on {dataset} in {base}; "
                           f"train one with: ktt train {model} {dataset}")
        return runs[-1]


def check_name(name: str, what: str) -> str:
    """``name`` if it can be a folder name of its own: letters, digits, ``_ - .``, starting with a
    letter or digit (so never ``..`` nor a hidden file), no separator, at most :data:`MAX_NAME`
    characters. KttError otherwise, the name shown with escapes (a newline stays on one line)."""
    if not isinstance(name, str) or not name:
        raise KttError(f"{what} name is empty; use letters, digits, '_', '-' and '.'")
    shown = repr(name if len(name) <= 60 else name[:57] + "...")
    if len(name) > MAX_NAME:
        raise KttError(f"{what} name {shown}: {len(name)} characters, at most {MAX_NAME}")
    if not NAME_RE.fullmatch(name):  # fullmatch: "$" would accept a trailing newline
        raise KttError(f"{what} name {shown}: use letters, digits, '_', '-' and '.', "
                       "starting with a letter or digit (no '/', no spaces)")
    return name
