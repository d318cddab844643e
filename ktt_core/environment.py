"""The machine and the paths the user names, checked before work starts.

A read-only workspace, a file where a folder should be, ``--config /dev/zero`` or a FIFO,
a URL whose port is not a number: each is said in one line naming the path, option or
value, before any training or import, instead of a traceback (or a hang) later.

- :func:`require_writable`: the folder KTT is about to write into can be written;
- :func:`read_small_file`: the one reader of small files the user names (``--config``,
  ``--space``): regular files under :data:`SMALL_FILE_LIMIT` only;
- :func:`check_url`: the port of a URL (``--sql-url``, ``--storage``, ``KTT_MONITOR_URL``).

Failures in the middle of a write (disk full, a file size limit) are OSErrors that
:func:`ktt_core.files.atomic_path` attributes to the target file and the CLI reports in
one line (:func:`ktt_core.errors.environment_error`).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ktt_core.errors import KttError

#: Largest small user file read (a config or a search space is a few hundred bytes).
SMALL_FILE_LIMIT = 1 << 20


def require_writable(folder: Path | str, what: str) -> Path:
    """Fail in one line unless files can be created in ``folder`` (or in the folders that
    would be made for it); ``what`` starts the message ("--output out.csv").

    Changes nothing on disk (os.access, no probe file), so a failed command leaves no trace.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise KttError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        reason = "read-only file system" if read_only else "permission denied"
        raise KttError(f"{what}: cannot write in {existing} ({reason})")
    return folder


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def read_small_file(path: Path | str, what: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of a small file the user names, refusing what is not a regular file (a
    FIFO blocks forever, ``/dev/zero`` never ends) or is larger than ``limit`` bytes."""
    path = Path(path)
    try:
        info = path.stat()  # stat never blocks, even on a FIFO
    except FileNotFoundError:
        raise KttError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise KttError(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise KttError(f"{path}: the {what} is {_kind(info.st_mode)}, not a regular file")
    too_large = f"{path}: the {what} is larger than {limit:,} bytes; is it the right file?"
    if info.st_size > limit:
        raise KttError(too_large)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)  # the size may have grown since stat
    except OSError as exc:
        raise KttError(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise KttError(too_large)
    return data


def check_url(url: str, what: str) -> str:
    """``url`` unchanged, or KttError when its port is not a number in 0-65535 (or its
    host part cannot be parsed). The message masks a password in the URL."""
    from urllib.parse import urlsplit

    from ktt_core.secrets import mask_secrets

    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed lazily: a non-numeric or out-of-range port raises here
    except ValueError as exc:
        netloc = url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
        port = netloc.rpartition(":")[2] if ":" in netloc else ""
        reason = (f"port {port!r} is not a number from 0 to 65535" if port
                  else " ".join(str(exc).split()))
        raise KttError(f"{what} {mask_secrets(url)}: {reason}") from None
    return url
