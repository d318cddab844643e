"""One writer at a time per dataset and per run.

Everything that writes a dataset folder (import, ``--force`` replace, DVC tracking of it)
holds :func:`lock_dataset`; everything that writes into a run folder (training, resuming,
the reference set, an export into the run, ``ktt test``'s metrics) holds :func:`lock_run`.
A second writer does not wait: it fails at once with a one-line KttError naming the lock.
Readers take no lock: every file is replaced atomically (:mod:`ktt_core.files`), so a
reader sees the old version or the new one, never half of one.

The locks are ``flock`` locks (:class:`filelock.FileLock`): the kernel releases them when
their process ends, however it ends, so a killed writer never leaves a dataset locked. The
lock file itself is removed on release, while still held, so a finished command leaves
nothing behind; filelock refuses a lock taken on a file already removed (a peer that
opened it just before), so two writers never both hold one.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ktt_core.errors import KttError

# A lock file is removed by its holder on release; a peer that opened it just before then
# retries on a fresh file within this many seconds instead of reporting a busy lock.
_RETRY_SECONDS = 1.0


def dataset_lock_path(workspace, name: str) -> Path:
    """``datasets/.NAME.lock``: beside the folder, which an import replaces whole."""
    return workspace.datasets / f".{name}.lock"


def run_lock_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / ".lock"


@contextlib.contextmanager
def lock_dataset(workspace, name: str) -> Iterator[Path]:
    """Hold the write lock of dataset ``name``; KttError at once if another process holds it."""
    with _hold(dataset_lock_path(workspace, name), f"dataset '{name}'", workspace.root) as path:
        yield path


@contextlib.contextmanager
def lock_run(run_dir: Path | str, workspace=None) -> Iterator[Path]:
    """Hold the write lock of the run folder ``run_dir``; KttError at once if another process holds it."""
    root = workspace.root if workspace is not None else None
    with _hold(run_lock_path(run_dir), f"run {_shown(Path(run_dir), root)}", root) as path:
        yield path


@contextlib.contextmanager
def _hold(path: Path, what: str, root: Path | None) -> Iterator[Path]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=_RETRY_SECONDS, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise KttError(f"{what} is being written by another ktt process (lock {_shown(path, root)}); "
                       "try again when it ends") from None
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        # A folder nobody may write needs no lock: the write itself then fails, naming its file.
        yield path
        return
    try:
        yield path
    finally:
        # Removed while still held: nobody can take this file after us; a process that
        # opened it before finds it unlinked and makes a new one.
        with contextlib.suppress(OSError):
            os.unlink(path)
        lock.release()


def _shown(path: Path, root: Path | None) -> str:
    """``path`` relative to the workspace when it is inside it (shorter, and what users type)."""
    if root is not None:
        with contextlib.suppress(ValueError):
            return str(Path(path).resolve().relative_to(root))
    return str(path)
