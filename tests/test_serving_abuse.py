"""The server sheds abuse before it costs memory (issue 11, family 8), on a real `ktt serve`.

One trained tiny model and one server on 127.0.0.1 serve the module (stopped by the fixture,
whatever the tests do); the refusals before a start (busy port) start nothing, and the model
that fails to load gets a start of its own.
"""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from test_serving import MODEL, bento_env, free_port, ktt_cli, trained  # noqa: F401 - module fixtures

from ktt_core.serving.settings import DEFAULT_MAX_REQUEST_BYTES

BIG = 400 * 2**20  # bytes offered by the oversized requests (40 times the cap)


@pytest.fixture(scope="module")
def server(trained):  # noqa: F811 - the fixture imported above
    """`ktt serve` in a child process; yields (URL, process, log path)."""
    from ktt_core.serving.launch import stop_service, wait_ready

    port = free_port()
    log_path = trained.parent / "serve-abuse.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ktt_core", "--workspace", str(trained), "serve", MODEL, "shop",
             "--host", "127.0.0.1", "--port", str(port), "--max-latency-ms", "60000"],  # queued, not refused
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(process, url, timeout=240)
            yield url, process, log_path
        finally:
            stop_service(process, grace=30)


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (the CLI, BentoML's arbiter and workers)."""
    total = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """Samples the tree's RSS in a thread while a request runs; ``growth`` is the peak minus the start."""

    def __init__(self, pid: int) -> None:
        self.pid, self.start, self.peak = pid, tree_rss(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # what the server does right after its answer counts too
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start


def chunks(total: int, size: int = 2**20):
    block = b"x" * size
    sent = 0
    while sent < total:
        yield block[: min(size, total - sent)]
        sent += size


def predict_ok(url: str) -> None:
    answer = httpx.post(f"{url}/predict", json={"text": "edible apple"}, timeout=60)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversized_body_is_refused_413_without_growing_the_server(server, framing):
    url, process, _ = server
    predict_ok(url)  # the model is warm: what grows next is the request's doing
    headers = {"content-type": "application/json"}
    if framing == "content-length":
        headers["content-length"] = str(BIG)
    with PeakRss(process.pid) as rss:
        answer = httpx.post(f"{url}/predict", content=chunks(BIG), headers=headers, timeout=120)
    assert answer.status_code == 413, answer.text
    assert str(DEFAULT_MAX_REQUEST_BYTES) in answer.json()["error"]
    print(f"\n{framing}: {BIG / 2**20:.0f} MB offered, server tree RSS peak growth {rss.growth / 2**20:.1f} MB")
    # The cap is 10 MB: the server may hold one capped body, never the offered 400 MB.
    assert rss.growth < 4 * DEFAULT_MAX_REQUEST_BYTES, f"grew {rss.growth / 2**20:.0f} MB"
    predict_ok(url)


def test_body_just_under_the_cap_is_still_served(server):
    url, _, _ = server
    text = "edible apple " + "a" * 9_000
    body = json.dumps({"texts": [text] * 256}).encode()  # ~2.3 MB, the largest valid request
    assert len(body) < DEFAULT_MAX_REQUEST_BYTES
    answer = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 256


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_gets_415(server, content_type):
    url, _, _ = server
    headers = {"content-type": content_type} if content_type else {}
    answer = httpx.post(f"{url}/predict", content=b'{"text": "edible apple"}', headers=headers, timeout=30)
    assert answer.status_code == 415, answer.text
    assert "application/json" in answer.json()["error"]
    # A charset parameter is still JSON.
    ok = httpx.post(f"{url}/predict", content=b'{"text": "edible apple"}',
                    headers={"content-type": "application/json; charset=utf-8"}, timeout=30)
    assert ok.status_code == 200, ok.text


def raw_request(port: int, head: bytes, body: bytes) -> None:
    """Send a request's head and part of its body, then hang up without reading."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body)


def log_lines_after(path: Path, offset: int, needle: str) -> list[str]:
    """The log's lines after ``offset``, once ``needle`` shows up in them (or 60 s have passed)."""
    deadline = time.monotonic() + 60
    while True:
        text = path.read_text(errors="replace")[offset:]
        if needle in text or time.monotonic() > deadline:
            return text.splitlines()
        time.sleep(0.2)


def test_client_hang_up_is_one_log_line_not_a_500(server):
    url, _, log_path = server
    port = int(url.rsplit(":", 1)[1])
    offset = len(log_path.read_text(errors="replace"))
    # Mid-body: 1,000 bytes of an announced 100,000.
    raw_request(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n", b'{"text": "' + b"a" * 990)
    lines = log_lines_after(log_path, offset, "before its request was read")
    assert any("client closed the connection before its request was read" in line for line in lines), lines
    # Before the answer: the client sends a whole request and leaves while the runner is busy with
    # the requests of others (10 M characters to tokenize: seconds; the body is read in milliseconds).
    load = [threading.Thread(target=httpx.post, args=(f"{url}/predict",), daemon=True,
                             kwargs={"json": {"texts": [f"edible apple {i} " * 550 for i in range(256)]},
                                     "timeout": 300}) for _ in range(4)]
    for thread in load:
        thread.start()
    time.sleep(0.3)
    body = json.dumps({"texts": [f"edible apple {i}" for i in range(200)]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.3)
    for thread in load:
        thread.join()
    lines = log_lines_after(log_path, offset, "before its answer")
    assert any("client closed the connection before its answer" in line for line in lines), lines
    predict_ok(url)
    lines = log_path.read_text(errors="replace")[offset:].splitlines()
    assert not [line for line in lines if "Traceback" in line or "status=5" in line], lines


def test_busy_port_is_refused_before_anything_starts(trained):  # noqa: F811
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = ktt_cli(trained, "serve", MODEL, "shop", "--port", port, check=False)
        seconds = time.monotonic() - started
    assert done.returncode == 1, done
    assert done.stderr.strip() == (f"Error: port {port} on 127.0.0.1 is in use by another process; "
                                   f"pick another with --port"), done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stdout
    print(f"\nbusy port refused in {seconds:.1f}s (no model loaded, nothing started)")

    monitor = free_port()
    same = ktt_cli(trained, "serve", MODEL, "shop", "--port", monitor, "--monitoring", "--monitor-port", monitor,
                   check=False)
    assert same.returncode == 1 and same.stderr.strip().startswith("Error: --monitor-port"), same.stderr
    top = ktt_cli(trained, "serve", MODEL, "shop", "--port", 65535, "--monitoring", check=False)
    assert top.returncode == 1 and "--monitor-port 65536" in top.stderr, top.stderr
    unusable = ktt_cli(trained, "serve", MODEL, "shop", "--host", "192.0.2.1", "--port", free_port(), check=False)
    assert unusable.returncode == 1, unusable.stderr
    assert unusable.stderr.startswith("Error: cannot listen on 192.0.2.1:") and unusable.stderr.count("\n") == 1


class _Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # answers 200 to /readyz as any web server might
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def test_a_foreign_server_on_the_port_is_never_taken_for_ready():
    from ktt_core.errors import KttError
    from ktt_core.serving.launch import wait_ready

    foreign = http.server.HTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    child.ktt_instance = "0123456789abcdef"  # what start_service gives its child
    try:
        with pytest.raises(KttError, match="another server answers .* in use by another process"):
            wait_ready(child, f"http://127.0.0.1:{foreign.server_port}", timeout=60)
    finally:
        child.kill()
        child.wait()
        foreign.shutdown()
        foreign.server_close()


@pytest.mark.parametrize("layout", ["single", "split"])
def test_a_model_that_fails_to_load_is_not_ready_and_serve_says_why(trained, tmp_path, layout):  # noqa: F811
    """The stored model is damaged after `ktt export --bento`; `ktt serve` reuses it, the service
    (or its runner) cannot load it, /readyz answers 503 with the reason and `ktt serve` exits with it."""
    import os

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home")}
    ktt_cli(trained, "export", MODEL, "shop", "--bento", env=env)
    [checkpoint] = (tmp_path / "bentoml-home" / "models").rglob("checkpoint.pt")
    with open(checkpoint, "ab") as f:
        f.write(b"damaged")
    done = ktt_cli(trained, "serve", MODEL, "shop", "--port", free_port(), "--layout", layout, check=False, env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: the service is not ready: the model failed to load: "), done.stderr
    assert "checkpoint.pt" in error and "does not match the stored model's manifest" in error, error
    assert "ready: POST" not in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
