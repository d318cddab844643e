"""Data and checkpoint versioning with DVC, through its Python API (never the ``dvc`` shell command).

The workspace is (inside) a git + DVC repository: ``ktt init --dvc --remote DIR`` sets it
up, ``--dvc`` on ``ktt import`` / ``ktt train`` tracks a dataset folder or a run's
checkpoints (``NAME.dvc`` files beside them, the data in the DVC cache and the remote), and
:func:`ensure_local` fetches a tracked file that is missing before a command reads it.

dvc is imported only when a ``.dvc`` file or a ``--dvc`` option is involved, so commands
that do not use it stay fast. See docs/versioning.md.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from ktt_core.errors import KttError
from ktt_core.files import atomic_write_text

# DVC must never phone home, whichever way it gets imported.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REMOTE_NAME = "ktt"
INIT_HINT = "run: ktt init --dvc --remote DIR"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# -- finding things, without importing dvc ----------------------------------------------
def find_root(start: Path | str) -> Path | None:
    """The DVC repository holding ``start`` (the nearest folder above it with a ``.dvc/``), or None."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _find_git_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def dvc_file(path: Path | str) -> Path | None:
    """The ``.dvc`` file that covers ``path``: ``path.dvc``, or that of a tracked folder above it."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if not candidate.name or (candidate / ".dvc").is_dir():
            break  # the file system root, or a repository root: nothing above it tracks ``path``
        entry = candidate.with_name(candidate.name + ".dvc")
        if entry.is_file():
            return entry
    return None


def is_tracked(path: Path | str) -> bool:
    return dvc_file(path) is not None


def require_repo(root: Path | str) -> Path:
    """The DVC root of workspace ``root``; KttError with the command to run when there is none."""
    dvc_root = find_root(root)
    if dvc_root is None:
        raise KttError(f"--dvc: workspace {Path(root).resolve()} is not in a DVC repository; {INIT_HINT}")
    return dvc_root


# -- dvc, imported lazily ----------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DVC's own logging and hints; KTT reports what happened in its own words."""
    import logging
    import warnings

    from dvc.logger import set_loggers_level

    with set_loggers_level(logging.CRITICAL + 1), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _open(dvc_root: Path):
    from dvc.repo import Repo

    return Repo(str(dvc_root))


def _one_line(exc: BaseException) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _remote(repo) -> tuple[str, str] | None:
    """(name, url) of the default remote, or None; the url is for messages, password masked."""
    from ktt_core.secrets import mask_url

    name = repo.config["core"].get("remote")
    if not name:
        return None
    return name, mask_url(str(repo.config["remote"].get(name, {}).get("url", "?")))


def _ignore_feature_cache(dvc_root: Path, ws_root: Path) -> None:
    """Keep the token/feature cache that training writes into ``datasets/NAME/cache`` out of DVC."""
    rel = ws_root.resolve().relative_to(dvc_root).as_posix()
    pattern = ("" if rel == "." else "/" + rel) + "/datasets/*/cache/"
    ignore = dvc_root / ".dvcignore"
    text = ignore.read_text(encoding="utf-8") if ignore.is_file() else ""
    if pattern not in text.splitlines():
        atomic_write_text(ignore, text + ("" if not text or text.endswith("\n") else "\n")
                          + "# KTT: encoded-text caches are derived data\n" + pattern + "\n")


def init_workspace(root: Path | str, remote: str | Path | None = None) -> list[str]:
    """Make workspace ``root`` a git + DVC repository (or use the one it is in); returns report lines.

    With ``remote``, a local folder (made absolute), it becomes the default DVC remote.
    """
    from dvc.exceptions import DvcException

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    dvc_root = find_root(root)
    try:
        with _quiet():
            if dvc_root is None:
                from dvc.repo import Repo

                git_root = _find_git_root(root)
                if git_root is None:
                    from scmrepo.git import Git

                    Git.init(root).close()
                    lines.append(f"initialised a git repository in {root}")
                Repo.init(str(root), subdir=git_root not in (None, root)).close()
                dvc_root = root
                lines.append(f"initialised a DVC repository in {root}")
            else:
                lines.append(f"using the DVC repository in {dvc_root}")
            if remote is not None:
                url = Path(remote).expanduser().resolve()
                if url.exists() and not url.is_dir():
                    raise KttError(f"--remote {remote}: not a folder")
                if url == dvc_root or dvc_root in url.parents:
                    raise KttError(f"--remote {remote}: must be outside the repository {dvc_root}")
                url.mkdir(parents=True, exist_ok=True)
                repo = _open(dvc_root)
                try:
                    with repo.config.edit() as conf:
                        conf["remote"][REMOTE_NAME] = {"url": str(url)}
                        conf["core"]["remote"] = REMOTE_NAME
                finally:
                    repo.close()
                lines.append(f"default DVC remote '{REMOTE_NAME}': {url}")
    except DvcException as exc:
        raise KttError(f"DVC init in {root} failed: {_one_line(exc)}") from None
    _ignore_feature_cache(dvc_root, root)
    lines.append("commit the .dvc files DVC writes with git to version them")
    return lines


def track(root: Path | str, paths: list[Path | str]) -> str:
    """``dvc add`` ``paths`` (absolute) and push them to the default remote if there is one.

    Returns a one-line report; KttError when the workspace is not in a DVC repository or
    DVC fails (a push failure names the remote; the data stays tracked in the local cache).
    """
    from dvc.exceptions import DvcException

    dvc_root = require_repo(root)
    paths = [Path(p).resolve() for p in paths]
    for path in paths:
        if not path.exists():
            raise KttError(f"{path}: cannot track with DVC, no such file")
    _ignore_feature_cache(dvc_root, Path(root))
    targets = [str(p) for p in paths]
    names = ", ".join(str(p) for p in paths)
    with _quiet():
        repo = _open(dvc_root)
        try:
            try:
                repo.add(targets)
            except DvcException as exc:
                raise KttError(f"DVC could not track {names}: {_one_line(exc)}") from None
            remote = _remote(repo)
            if remote is None:
                return f"tracked with DVC: {names} (no DVC remote; add one with: ktt init --dvc --remote DIR)"
            try:
                repo.push(targets=targets, remote=remote[0])
            except (DvcException, OSError) as exc:
                raise KttError(f"tracked {names} with DVC, but pushing to remote '{remote[0]}' ({remote[1]}) "
                               f"failed: {_one_line(exc)}") from None
            return f"tracked with DVC and pushed to remote '{remote[0]}' ({remote[1]}): {names}"
        finally:
            repo.close()


def ensure_local(path: Path | str, root: Path | str, what: str = "file") -> Path:
    """Return ``path``, first fetching it from the DVC cache or remote if it is missing but tracked.

    ``root`` is the workspace; the DVC repository is the one holding the ``.dvc`` file.
    KttError (one line) when it is neither there nor tracked, or cannot be fetched.
    """
    path = Path(path)
    if path.exists():
        return path
    entry = dvc_file(path)
    if entry is None:
        raise KttError(f"{path}: no such {what}, and it is not tracked by DVC")
    dvc_root = find_root(entry.parent) or find_root(root)
    if dvc_root is None:
        raise KttError(f"{path}: {entry} tracks it, but no DVC repository holds that file; {INIT_HINT}")
    source = _fetch(dvc_root, entry, path)
    if not path.exists():
        raise KttError(f"{path}: fetched {entry} from DVC, but it does not hold this {what}")
    print(f"fetched {entry.with_suffix('')} from DVC ({source})", file=sys.stderr)
    return path


def _fetch(dvc_root: Path, entry: Path, path: Path) -> str:
    """Check out ``entry`` from the local cache, else fetch it from the default remote first."""
    from dvc.exceptions import CheckoutError, DvcException

    target = [str(entry)]
    with _quiet():
        repo = _open(dvc_root)
        try:
            try:
                repo.checkout(targets=target)
                return "local cache"
            except CheckoutError:
                pass  # not in the local cache
            except (DvcException, OSError) as exc:
                raise KttError(f"{path}: DVC could not restore it from {entry.name}: {_one_line(exc)}") from None
            remote = _remote(repo)
        finally:
            repo.close()
        if remote is None:
            raise KttError(f"{path}: tracked by DVC ({entry.name}) but not in the local cache, and the "
                           f"repository {dvc_root} has no DVC remote; add one with: ktt init --dvc --remote DIR")
        name, url = remote
        # Re-open the repository after each change of the cache under it.
        repo = _open(dvc_root)
        try:
            repo.fetch(targets=target, remote=name)
        except (DvcException, OSError) as exc:
            raise KttError(f"{path}: cannot fetch it from DVC remote '{name}' ({url}): {_one_line(exc)}") from None
        finally:
            repo.close()
        repo = _open(dvc_root)
        try:
            repo.checkout(targets=target)
        except CheckoutError:
            raise KttError(f"{path}: DVC remote '{name}' ({url}) does not hold it (missing data or unreachable "
                           f"remote); push it there from a copy that has it, or fix the remote URL") from None
        except (DvcException, OSError) as exc:
            raise KttError(f"{path}: DVC could not restore it from {entry.name}: {_one_line(exc)}") from None
        finally:
            repo.close()
    return f"remote '{name}'"
