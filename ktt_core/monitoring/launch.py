"""Start the drift monitor (``bentoml serve ktt_core.monitoring.service:KttMonitor``) as a child process."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

from ktt_core.errors import KttError

TARGET = "ktt_core.monitoring.service:KttMonitor"


def check_reference(path: Path | str) -> tuple[int, int]:
    """``(rows, feature columns)`` of a usable reference set; KttError (one line) otherwise."""
    import pandas as pd

    from ktt_core.monitoring.drift import check_reference as check_frame

    path = Path(path)
    if not path.is_file():
        raise KttError(f"{path}: no such reference set")
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise KttError(f"{path}: not a readable parquet file ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    try:
        features = check_frame(frame)
    except ValueError as e:
        raise KttError(f"{path}: not a KTT reference set: {e}") from None
    return len(frame), len(features)


def _check_port(host: str, port: int, option: str = "--port") -> None:
    """KttError when host:port cannot be bound (see :func:`ktt_core.serving.launch.check_port`)."""
    from ktt_core.serving.launch import check_port

    check_port(host, port, option)


def monitor_env(reference_path: Path | str, model_label: str, window: int, interval: float) -> dict[str, str]:
    """The monitor's settings, and a BentoML home of its own.

    Every ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts;
    sharing it with the model service would erase the other's metrics. The monitor needs no
    model store, so it gets a private, throwaway home.
    """
    import tempfile

    return {"KTT_MONITOR_REFERENCE": str(Path(reference_path).resolve()), "KTT_MONITOR_MODEL": model_label,
            "KTT_MONITOR_WINDOW": str(window), "KTT_MONITOR_INTERVAL": str(interval),
            "BENTOML_HOME": tempfile.mkdtemp(prefix="ktt-monitor-bentoml-")}


def start_monitor(reference_path: Path | str, model_label: str, host: str, port: int, window: int = 500,
                  interval: float = 5, timeout: float = 120.0, env: dict | None = None,
                  **popen) -> subprocess.Popen:
    """Start the monitor and wait until it answers ``/readyz``; the process is stopped on failure.

    ``env`` adds environment variables (``KTT_MONITOR_MIN_ROWS``, ...); ``popen`` goes to
    :class:`subprocess.Popen` (``stdout=`` a log file, say).
    """
    from ktt_core.serving.launch import start_service, stop_service, wait_ready

    check_reference(reference_path)
    _check_port(host, port)
    process = start_service(TARGET, host, port, {**monitor_env(reference_path, model_label, window, interval),
                                                 **(env or {})}, **popen)
    try:
        wait_ready(process, f"http://{host}:{port}", timeout=timeout)
    except BaseException as e:
        stop_service(process)
        if isinstance(e, KttError):
            raise KttError(f"drift monitor: {e}") from None
        raise
    return process


def find_reference(ws, model: str, dataset: str, run_dir, checkpoint, reference_path) -> Path:
    """``--reference``, else the run's ``reference.parquet`` (fetched from DVC if tracked)."""
    from ktt_core import versioning
    from ktt_core.jobs import resolve_checkpoint

    if reference_path:
        path = Path(reference_path)
        if not path.is_file():
            raise KttError(f"--reference {reference_path}: no such file")
        return path
    run = resolve_checkpoint(ws, model, dataset, run_dir, checkpoint).parent
    path = run / "reference.parquet"
    if not path.is_file():
        if not versioning.is_tracked(path):
            raise KttError(f"run {run} has no reference set: train with --reference")
        path = versioning.ensure_local(path, ws.root, what="reference set")
    return path


def run_monitor(ws, model: str, dataset: str, run_dir, checkpoint, reference_path, *, host: str = "127.0.0.1",
                port: int = 3001, window: int = 500, interval: float = 5, echo: Callable = print) -> int:
    """``ktt monitor``: serve the drift monitor until Ctrl-C. Returns an exit code."""
    from ktt_core.serving.launch import run_until_interrupted

    path = find_reference(ws, model, dataset, run_dir, checkpoint, reference_path)
    rows, features = check_reference(path)
    _check_port(host, port)
    url = f"http://{host}:{port}"
    echo(f"drift monitor of {model} on {url}: reference {path} ({rows} rows, {features} features), "
         f"window {window} rows; starting...")
    process = start_monitor(path, model, host, port, window=window, interval=interval)
    echo(f"ready: POST {url}/ingest {{\"rows\": [...]}}, POST {url}/drift, GET {url}/metrics   (Ctrl-C stops)")
    return run_until_interrupted(process, [], echo)
