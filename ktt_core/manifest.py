"""The manifest of an export folder: the SHA-256 of every file KTT wrote into it.

Every export (an ONNX folder, an ensemble's ONNX folder, a BentoML model, a built Bento's
sources, a docker-compose stack) ends with ``manifest.json``, written last::

    {"format": "ktt-manifest", "version": 1, "files": {"hierarchy.json": "<sha256>", ...}}

Loaders call :func:`verify_manifest` before reading anything else of the folder: a file
changed, missing or added since the export refuses the whole folder, naming the file, so an
edited ``hierarchy.json`` or ``tokenizer.json`` can never silently change the labels.

The manifest is also what tells KTT's own files from the user's: :func:`check_replaceable`
lets an export replace a folder only when it holds nothing KTT did not write.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ktt_core.errors import KttError
from ktt_core.files import atomic_directory, atomic_write_json, sha256_file

MANIFEST = "manifest.json"
FORMAT = "ktt-manifest"
VERSION = 1

MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "files"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"type": "integer", "minimum": 1, "maximum": VERSION},
        # Relative POSIX paths without '..' or a leading '/'; a 64-digit lowercase hex digest each.
        "files": {"type": "object",
                  "propertyNames": {"pattern": r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\\]+$"},
                  "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    },
}


def _files(directory: Path, ignore: Iterable[str] = ()) -> list[str]:
    """Every file under ``directory`` (relative POSIX paths, sorted), the manifest and ``ignore`` aside."""
    skip = {MANIFEST, *ignore}
    out = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if rel in skip or (path.is_dir() and not path.is_symlink()):
            continue
        out.append(rel)
    return sorted(out)


def write_manifest(directory: Path | str, ignore: Iterable[str] = ()) -> Path:
    """Write ``directory/manifest.json`` listing the SHA-256 of every other file; call it last."""
    directory = Path(directory)
    files = {rel: sha256_file(directory / rel) for rel in _files(directory, ignore)}
    target = directory / MANIFEST
    atomic_write_json(target, {"format": FORMAT, "version": VERSION, "files": files})
    return target


def read_manifest(directory: Path) -> dict[str, str] | None:
    """The manifest's ``files`` (path -> SHA-256), None when there is no manifest."""
    from ktt_core.schemas import validate

    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KttError(f"{path}: cannot read the export's manifest ({' '.join(str(exc).split())[:160]}); "
                       "export it again") from None
    validate(data, MANIFEST_SCHEMA, str(path))
    return data["files"]


def verify_manifest(directory: Path | str, what: str = "export", ignore: Iterable[str] = ()) -> None:
    """Check every file of ``directory`` against its manifest; KttError names the first file
    that was changed, removed or added since the export was written (or the missing manifest).

    ``ignore`` lists files that belong to someone else (BentoML's ``model.yaml``).
    """
    directory = Path(directory)
    files = read_manifest(directory)
    if files is None:
        raise KttError(f"{directory / MANIFEST}: no such file; this {what} was written by an older KTT or "
                       "is incomplete, and cannot be verified: export it again")
    for rel, digest in sorted(files.items()):
        path = directory / rel
        if not path.is_file():
            raise KttError(f"{path}: listed in the {what}'s manifest but missing; export it again")
        if sha256_file(path) != digest:
            raise KttError(f"{path}: SHA-256 does not match the {what}'s manifest; the {what} was changed "
                           "after it was written (export it again)")
    extra = [rel for rel in _files(directory, ignore) if rel not in files]
    if extra:
        raise KttError(f"{directory / extra[0]}: not part of the {what} (not in its manifest); "
                       "remove it or export again")


def check_replaceable(target: Path | str, force: bool = False) -> None:
    """Refuse to replace ``target`` unless everything in it was written by KTT.

    An absent or empty folder, or an intact KTT export (its manifest matches), may be
    replaced. Anything else needs ``force``, and even then only files listed in the
    folder's manifest may go: a file KTT did not write is named and never deleted.
    """
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise KttError(f"{target}: exists and is not a folder KTT wrote; choose another --output")
    present = _files(target)
    if not present and not (target / MANIFEST).exists():
        return
    try:
        listed = read_manifest(target)
    except KttError:
        listed = None
    own = set(listed or ())
    foreign = [rel for rel in present if rel not in own]
    if foreign:
        if listed is not None:
            why = "it holds files the export did not write"
        elif (target / "ktt.json").is_file():  # written before exports had manifests
            why = "an export without manifest.json, so KTT cannot tell its files from yours; delete it to export again"
        else:
            why = "it is not a KTT export"
        raise KttError(f"{target}: {why} ({target / foreign[0]}); KTT never deletes files it did not write: "
                       "move them away or choose another --output")
    if force:
        return
    try:
        verify_manifest(target)
    except KttError as exc:
        raise KttError(f"{target}: the KTT export there was changed ({exc}); pass --force to replace it") from None


@contextlib.contextmanager
def export_directory(target: Path | str, force: bool = False, ignore: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` whole, with its manifest written last,
    when the block succeeds; ``target`` is checked first with :func:`check_replaceable`."""
    check_replaceable(target, force)
    with atomic_directory(target, replace=True) as tmp:
        yield tmp
        write_manifest(tmp, ignore)
