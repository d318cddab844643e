"""Run a BentoML service as a child process (``bentoml serve``) and stop it cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Mapping

from ktt_core.errors import KttError


def bentoml_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours, KTT's settings, no telemetry, offline Hugging Face."""
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_service(target: str, host: str, port: int, env: Mapping[str, str], workers: int | None = None,
                  **popen) -> subprocess.Popen:
    """Start ``bentoml serve TARGET`` (``module:ServiceClass``) on host:port; returns at once."""
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]
    if workers:
        cmd += ["--api-workers", str(workers)]
    return subprocess.Popen(cmd, env=bentoml_env(env), start_new_session=True, **popen)


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    """Wait until ``url``/readyz answers 200; KttError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KttError(f"the service exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise KttError(f"the service at {url} was not ready after {timeout:.0f}s")


def stop_service(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after ``grace`` seconds.

    BentoML's workers run in sessions of their own, so they are collected first and killed
    one by one if they outlive the grace period (else they would be orphaned).
    """
    if process.poll() is not None:
        return
    tree = process_tree(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
    kill_all(tree)


def process_tree(pid: int) -> list:
    """``pid`` and all its descendants (psutil processes), as they are now."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(processes: list, grace: float = 5.0) -> None:
    """SIGKILL every process of ``processes`` still alive after ``grace`` seconds."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def run_until_interrupted(main: subprocess.Popen, companions: list[subprocess.Popen] = (),
                          echo=print) -> int:
    """Block while ``main`` runs; Ctrl-C stops everything. Returns ``main``'s exit code.

    A companion (the drift monitor) that dies is reported, and ``main`` goes on serving.
    """
    reported = set()

    def interrupt(signum, frame):  # SIGTERM (docker stop, a test's cleanup) stops the children too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while main.poll() is None:
            for process in companions:
                if process.poll() is not None and process.pid not in reported:
                    reported.add(process.pid)
                    echo(f"warning: companion process {process.pid} exited ({process.returncode}); serving goes on")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in (main, *companions):
            stop_service(process)
    return main.returncode if main.returncode and main.returncode > 0 else 0
