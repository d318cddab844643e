"""Where KTT keeps things: ``datasets/NAME/`` and ``runs/MODEL/DATASET/TIMESTAMP/``."""
from __future__ import annotations

import re
import time
from pathlib import Path

from ktt_core import versioning
from ktt_core.errors import KttError

DATASET_FILES = ("hierarchy.json", "train.parquet", "val.parquet", "test.parquet")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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

    def dataset_dir(self, name: str) -> Path:
        """The folder of an imported dataset; KttError lists the ones there are."""
        check_name(name, "dataset")
        path = self.datasets / name
        missing = [path / f for f in DATASET_FILES if not (path / f).is_file()]
        if missing and versioning.is_tracked(missing[0]):  # fetch the folder from DVC
            versioning.ensure_local(missing[0], self.root, what="dataset file")
        if not (path / "hierarchy.json").is_file():
            known = ", ".join(self.dataset_names()) or "none yet (use ktt import)"
            raise KttError(f"unknown dataset '{name}' in {self.datasets}; datasets: {known}")
        return path

    def new_run_dir(self, model: str, dataset: str) -> Path:
        base = self.runs / model / dataset
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = base / stamp, 1
        while path.exists():
            n += 1
            path = base / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return path

    def latest_run(self, model: str, dataset: str) -> Path:
        """The newest run of ``model`` on ``dataset`` that has a checkpoint (or one tracked by DVC)."""
        base = self.runs / model / dataset
        runs = sorted((p for p in base.glob("*") if (p / "best.pt").is_file() or (p / "best.pt.dvc").is_file()),
                      key=lambda p: p.stat().st_mtime) if base.is_dir() else []
        if not runs:
            raise KttError(f"no trained run of {model} on {dataset} in {base}; "
                           f"train one with: ktt train {model} {dataset}")
        return runs[-1]


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name or ""):
        raise KttError(f"{what} name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name
