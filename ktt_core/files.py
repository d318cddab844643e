"""Atomic file output: everything KTT writes goes to a temporary name, then is renamed.

A crash or a bad row halfway through never leaves a truncated file that a later command
would trust, and never destroys the previous version before the new one is complete.

Temporary names carry the writer's process id and host (``.NAME.PID-HOST.XXXXXXXX.tmp``), so
the temp of a writer that was killed (SIGKILL, power loss) is recognised and removed by the
next write of the same target (:func:`remove_stale_temps`), instead of lying there forever.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import zlib
from pathlib import Path
from typing import Iterator


def _naming_target(manager):
    """Decorates a context manager taking ``target``: a failure of the machine (disk full,
    read-only, a file size limit) that names no file or only a temporary one is re-raised
    naming ``target``, so the CLI's one line (errors.environment_error) names the file the
    user knows rather than ``.name.x1y2.tmp``."""
    @functools.wraps(manager)
    @contextlib.contextmanager
    def wrapper(target, *args, **kwargs):
        from ktt_core.errors import environment_error

        target = Path(target)
        try:
            with manager(target, *args, **kwargs) as value:
                yield value
        except OSError as exc:
            name = os.fsdecode(exc.filename) if exc.filename is not None else None
            temporary = name is not None and name.startswith(str(target.parent / f".{target.name}."))
            if environment_error(exc) is None or not (name is None or temporary):
                raise
            raise type(exc)(exc.errno, os.strerror(exc.errno), str(target)) from exc
    return wrapper


@_naming_target
@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give normal permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# A short tag of this machine: a PID is only meaningful on the host that wrote it (a
# workspace on a shared file system may have writers on several hosts).
HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-{HOST_TAG}."


def remove_stale_temps(target: Path | str) -> list[Path]:
    """Remove the temporaries of ``target`` left by KTT writers that are no longer running.

    Only names of KTT's own pattern for this target (``.NAME.PID-HOST.XXXXXXXX.tmp`` or
    ``.old``) written on this host by a process that has ended are touched; anything else,
    a live writer's temp included, is kept. A ``.old`` folder (the previous version during
    a swap) goes only when the target exists, since otherwise it holds the only copy.
    Returns what was removed.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-{HOST_TAG}\.[A-Za-z0-9_]{{8}}\.(tmp|old)$")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not target.exists():
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # another writer removed it first, or it is not ours to remove
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a number that is not a PID: leave it
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: Path | str, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(target: Path | str, record: dict) -> None:
    """Append one JSON line (a line is written whole or the file is left as it was)."""
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@_naming_target
@contextlib.contextmanager
def atomic_directory(target: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` when the block succeeds.

    With ``replace`` an existing ``target`` is swapped out only after the new one is whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (exports record it; loaders check it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
