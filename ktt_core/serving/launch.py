"""Run a BentoML service as a child process (``bentoml serve``) and stop it cleanly."""
from __future__ import annotations

import errno
import os
import signal
import socket
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


def check_port(host: str, port: int, option: str = "--port") -> None:
    """KttError (one line) unless a server could listen on host:port now; nothing is started.

    Binds a socket and releases it at once. SO_REUSEADDR is set as the server will set it:
    on Linux it still refuses a port another socket listens on, but not one that a stopped
    server left in TIME_WAIT (no conflict). :func:`wait_ready` also checks that the server
    answering is ours, for a port taken between this check and the start.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise KttError(f"{option} {port}: a port is a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise KttError(f"--host {host}: {getattr(e, 'strerror', None) or e}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise KttError(f"port {port} on {host} is in use by another process; "
                               f"pick another with {option}") from None
            raise KttError(f"cannot listen on {host}:{port} ({option}): {e.strerror or e}") from None


def start_service(target: str, host: str, port: int, env: Mapping[str, str], workers: int | None = None,
                  **popen) -> subprocess.Popen:
    """Start ``bentoml serve TARGET`` (``module:ServiceClass``) on host:port; returns at once.

    The child gets a random ``KTT_INSTANCE`` token that its answers carry (see
    :mod:`ktt_core.serving.guard`); :func:`wait_ready` accepts only a server that shows it.
    """
    import secrets

    instance = secrets.token_hex(16)
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]
    if workers:
        cmd += ["--api-workers", str(workers)]
    process = subprocess.Popen(cmd, env=bentoml_env({**env, "KTT_INSTANCE": instance}), start_new_session=True,
                               **popen)
    process.ktt_instance = instance
    return process


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    """Wait until ``url``/readyz answers 200; KttError if the process exits or time runs out.

    For a process from :func:`start_service`, only an answer carrying its ``KTT_INSTANCE``
    counts (another server on the port is never taken for ours), and a 503 saying that the
    model failed to load ends the wait at once, with the reason.
    """
    from ktt_core.serving.guard import INSTANCE_HEADER, NOT_READY

    instance = getattr(process, "ktt_instance", None)
    foreign = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if foreign:
                raise KttError(f"another server answers at {url}: the port is in use by another process")
            raise KttError(f"the service exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if instance is None or response.headers.get(INSTANCE_HEADER) == instance:
                    return
                foreign = True
        except urllib.error.HTTPError as e:
            body = e.read(4096).decode("utf-8", "replace")
            if e.code == 503 and NOT_READY in body:
                reason = body[body.index(NOT_READY) + len(NOT_READY):].split("\n")[0].strip().rstrip('"}')
                raise KttError(f"the service is not ready: the model failed to load: {reason}") from None
            if instance is not None and e.headers.get(INSTANCE_HEADER) != instance:
                foreign = True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    if foreign:
        raise KttError(f"another server answers at {url}: the port is in use by another process")
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
