#!/usr/bin/env python
"""Load test of a KTT BentoML service: throughput, latency, errors, memory, against offline inference.

One run on one machine:

1. OFFLINE baseline: the same model, loaded in this process, predicts the same texts in
   batches (``ModelPredictor.run``: the scoring call) — what the hardware gives without a server.
2. SERVED: ``ktt serve`` starts the model's BentoML service on 127.0.0.1 (with the drift
   monitor when ``--monitoring``); N requests, one text each, go out at concurrency C.
   ``--bad-share`` of them are malformed (invalid JSON, wrong types, empty, too long ...).

It reports requests/s, p50/p99 latency, answers by status, 5xx count, whether every good
request got the offline answer (same path), the server's memory (RSS of its process tree)
after warm-up and at the end, and ``served_share`` = served texts/s / offline texts/s
(goal >= 0.7). ``--stop-monitor-at F`` kills the drift monitor after a fraction F of the
requests, to show that predictions go on. ``--json FILE`` writes the figures.

    python benchmarks/serve_load.py MODEL DATASET --workspace WS [--requests 2000] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Malformed requests mixed into the load: (body, content type). Each must get a 4xx.
BAD_REQUESTS = [
    (b'{"text": ', "application/json"),                       # invalid JSON
    (b'{"text": 42}', "application/json"),                     # not a string
    (b'{"text": "   "}', "application/json"),                  # empty text
    (b'{"texts": "not a list"}', "application/json"),          # texts not a list
    (b'{"texts": []}', "application/json"),                    # no texts
    (b'{}', "application/json"),                               # nothing to predict
    (json.dumps({"text": "x" * 20_000}).encode(), "application/json"),  # over-long text
    (json.dumps({"texts": ["a"] * 1000}).encode(), "application/json"),  # too many texts
    (b'{"text": "ok", "top_k": -3}', "application/json"),      # bad top_k
    (b"\xff\xfe\x00garbage", "application/json"),              # not UTF-8
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def tree_total(pid: int, measure, exclude: set[int] = frozenset()) -> float:
    """``measure(process)`` summed over a process and all its children, less the ``exclude``
    pids (the drift monitor's: its use is not the model service's)."""
    import psutil

    from ktt_core.serving.launch import process_tree

    total = 0
    for proc in process_tree(pid):
        try:
            if proc.pid not in exclude:
                total += measure(proc)
        except psutil.NoSuchProcess:
            continue
    return total


def tree_rss(pid: int, exclude: set[int] = frozenset()) -> int:
    """Resident memory of a process tree, in bytes (see :func:`tree_total`)."""
    return tree_total(pid, lambda proc: proc.memory_info().rss, exclude)


def tree_cpu_seconds(pid: int, exclude: set[int] = frozenset()) -> float:
    """CPU seconds (user + system) a process tree used so far (see :func:`tree_total`)."""
    return tree_total(pid, lambda proc: sum(proc.cpu_times()[:2]), exclude)


async def run_load(url: str, texts: list[str], expected: dict[str, list[str]], requests: int,
                   concurrency: int, bad_share: float, seed: int = 0, on_progress=None,
                   texts_per_request: int = 1) -> dict:
    """Send ``requests`` POST /predict at ``concurrency``; returns counts and latencies.

    A good request carries one text (``{"text": ...}``) or, with ``texts_per_request`` > 1,
    that many (``{"texts": [...]}``). ``on_progress(done)`` is called after each answer
    (e.g. to stop the monitor halfway). The client's own CPU time is measured: it shares
    the machine with the server, and ``client_cpu_share`` (CPU seconds per wall second, of
    ``os.cpu_count()`` cores) says how much of it the load generator took.
    """
    import aiohttp  # a lighter client than httpx: the load generator shares the machine's CPUs

    rng = random.Random(seed)
    plan = [("bad", rng.choice(BAD_REQUESTS)) if rng.random() < bad_share
            else ("good", tuple(rng.choice(texts) for _ in range(texts_per_request)))
            for _ in range(requests)]
    latencies: list[float] = []
    status: dict[str, int] = {}
    wrong: list[dict] = []
    failed: list[dict] = []  # good requests not answered 200
    bad_accepted = 0
    transport_errors = 0
    done = 0
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(client: aiohttp.ClientSession) -> None:
        nonlocal done, bad_accepted, transport_errors
        while True:
            try:
                kind, payload = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if kind == "good":
                fields = {"text": payload[0]} if texts_per_request == 1 else {"texts": list(payload)}
                body, ctype = json.dumps(fields).encode(), "application/json"
            else:
                body, ctype = payload
            started = time.perf_counter()
            try:
                async with client.post(f"{url}/predict", data=body, headers={"content-type": ctype}) as response:
                    text = await response.text()
                    code = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                transport_errors += 1
                done += 1
                continue
            elapsed = time.perf_counter() - started
            status[str(code)] = status.get(str(code), 0) + 1
            if kind == "good":
                latencies.append(elapsed)
                if code != 200:
                    failed.append({"text": payload, "status": code, "body": text[:200]})
                else:
                    for item, answer in zip(payload, json.loads(text)["predictions"]):
                        if answer["path"] != expected[item]:
                            wrong.append({"text": item, "got": answer["path"], "expected": expected[item]})
            elif not 400 <= code < 500:
                bad_accepted += 1
            done += 1
            if on_progress is not None:
                on_progress(done)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    good = sum(1 for kind, _ in plan if kind == "good")
    return {"requests": requests, "good_requests": good, "bad_requests": requests - good,
            "concurrency": concurrency, "texts_per_request": texts_per_request, "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 1),
            # Texts answered 200: a request the server shed (503) or failed served nothing.
            "good_texts_per_s": round((good - len(failed)) * texts_per_request / seconds, 1),
            "client_cpu_share": round(cpu_seconds / seconds, 3),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "status": dict(sorted(status.items())),
            "server_errors_5xx": sum(n for code, n in status.items() if code.startswith("5")),
            "transport_errors": transport_errors, "wrong_answers": len(wrong), "wrong_examples": wrong[:5],
            "good_requests_failed": len(failed), "failed_examples": failed[:5],
            "bad_requests_not_4xx": bad_accepted}


def offline_baseline(predictor, texts: list[str], repeats: int) -> tuple[dict[str, list[str]], float]:
    """Each text's offline path, and offline texts/s: the median of ``repeats`` timed passes
    over all the texts, after one untimed pass (bf16 kernels are prepared per input shape,
    and the first pass meets every shape)."""
    import statistics

    predictions, _ = predictor.run(texts)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.run(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    h = predictor.hierarchy
    paths = {}
    for text, ids in zip(texts, predictions.level_ids):
        paths[text] = [h.classes[d][c] for d, c in enumerate(ids) if not h.is_placeholder[h.level_offsets[d] + c]]
    return paths, statistics.median(rates)


def precision_of(predictor) -> str:
    """The precision the offline model runs in (the service resolves the same config)."""
    from ktt_core.devices import describe_precision

    model = getattr(predictor, "model", None)
    if model is None or not hasattr(model, "config"):
        return "onnx (fp32)"
    return describe_precision(model.device, model.config.get("precision", "auto"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--workspace", default=os.environ.get("KTT_HOME", "."))
    parser.add_argument("--run", default=None, help="run folder (default: the latest)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1,
                        help='texts in each good request (1: {"text": ...}; more: {"texts": [...]})')
    parser.add_argument("--layout", choices=["single", "split"], default="single",
                        help="ktt serve --layout: model in the HTTP process, or BentoML's API + runner")
    parser.add_argument("--workers", type=int, default=0, help="ktt serve --workers: serving processes (0: its default)")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of malformed requests")
    parser.add_argument("--texts", type=int, default=500, help="distinct texts, from the dataset's test split")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-latency-ms", type=int, default=2000)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                        help="served (and offline baseline) runtime")
    parser.add_argument("--torch-threads", type=int, default=0, help="the runner's torch threads (0: default)")
    parser.add_argument("--monitoring", action="store_true", help="run the drift monitor beside the service")
    parser.add_argument("--stop-monitor-at", type=float, default=None,
                        help="kill the drift monitor after this fraction of the requests")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    import subprocess

    import torch

    from ktt_core.data.datasets import Dataset
    from ktt_core.jobs import load_model, resolve_checkpoint
    from ktt_core.plugins import get_plugins
    from ktt_core.serving.launch import bentoml_env, stop_service, wait_ready
    from ktt_core.scoring import ModelPredictor
    from ktt_core.workspace import Workspace

    ws = Workspace(args.workspace)
    checkpoint = resolve_checkpoint(ws, args.model, args.dataset, args.run, None)
    texts = list(dict.fromkeys(Dataset(ws.dataset_dir(args.dataset)).split("test")["text"]))[: args.texts]
    if args.runtime == "onnx":  # the baseline runs the same ONNX export that the service will
        from ktt_core.onnx_runtime import OnnxModel

        subprocess.run([sys.executable, "-m", "ktt_core", "--workspace", str(ws.root), "export", args.model,
                        args.dataset, "--onnx", "--checkpoint", str(checkpoint)], check=True,
                       stdout=subprocess.DEVNULL)
        predictor = OnnxModel(checkpoint.parent / "export" / "onnx")
    else:
        plugins = get_plugins()
        predictor = ModelPredictor(plugins, plugins.model(args.model), load_model(plugins, args.model, checkpoint))
    expected, offline = offline_baseline(predictor, texts, repeats=max(3, 2000 // len(texts)))
    precision = precision_of(predictor)
    del predictor
    print(f"offline batch inference ({args.runtime}, {precision}): {offline:.0f} texts/s ({len(texts)} texts, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")

    port, monitor_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "ktt_core", "--workspace", str(ws.root), "serve", args.model, args.dataset,
           "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--max-latency-ms", str(args.max_latency_ms),
           "--runtime", args.runtime, "--layout", args.layout]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.monitoring:
        cmd += ["--monitoring", "--monitor-port", str(monitor_port)]
    server = subprocess.Popen(cmd, env=bentoml_env({"KTT_TORCH_THREADS": args.torch_threads}), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url, timeout=300)
        # Warm-up: fill the adaptive batcher's history and the allocators before measuring memory.
        asyncio.run(run_load(url, texts, expected, min(300, args.requests), args.concurrency, 0.0, seed=1,
                             texts_per_request=args.texts_per_request))
        monitor = {p.pid for p in find_monitor(server.pid, monitor_port)} if args.monitoring else set()
        rss_warm = tree_rss(server.pid, monitor)
        cpu_before = tree_cpu_seconds(server.pid, monitor)
        monitor_stopped = {"at": None}

        def on_progress(done: int) -> None:
            if (args.monitoring and args.stop_monitor_at is not None and monitor_stopped["at"] is None
                    and done >= args.stop_monitor_at * args.requests):
                kill_monitor(server.pid, monitor_port)
                monitor_stopped["at"] = done

        result = asyncio.run(run_load(url, texts, expected, args.requests, args.concurrency, args.bad_share,
                                      on_progress=on_progress, texts_per_request=args.texts_per_request))
        rss_end = tree_rss(server.pid, monitor)
        server_cpu = tree_cpu_seconds(server.pid, monitor) - cpu_before
        batch = mean_batch_size(url)
    finally:
        stop_service(server)
    result.update({
        "model": args.model, "runtime": args.runtime, "precision": precision, "layout": args.layout,
        "offline_texts_per_s": round(offline, 1),
        "served_share": round(result["good_texts_per_s"] / offline, 3),
        "server_cpu_share": round(server_cpu / result["seconds"], 3),
        "server_cpu_ms_per_request": round(1000 * server_cpu / args.requests, 2),
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4) if rss_warm else None,
        "mean_batch_size": batch, "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms,
        "torch_threads": args.torch_threads or "default", "workers": args.workers or "default",
        "monitoring": args.monitoring, "monitor_stopped_after": monitor_stopped["at"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    })
    for key in ("layout", "requests", "concurrency", "texts_per_request", "seconds", "requests_per_s",
                "good_texts_per_s", "client_cpu_share", "server_cpu_share", "server_cpu_ms_per_request",
                "p50_ms", "p99_ms",
                "status", "server_errors_5xx", "transport_errors", "wrong_answers", "good_requests_failed", "bad_requests_not_4xx",
                "offline_texts_per_s", "served_share", "mean_batch_size", "rss_after_warmup_mb", "rss_end_mb", "rss_growth",
                "monitor_stopped_after"):
        print(f"{key:>22}: {result[key]}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    # In fp32 a served path must be the offline one. Under bf16 a few may differ: bf16 rounding
    # depends on the batch a text is padded with, and served batches mix texts differently.
    exact = not precision.startswith("bf16")
    if not exact and result["wrong_answers"]:
        print(f"{result['wrong_answers']} served paths differ from offline ones: bf16 rounding depends on "
              f"the batch a text shares (set precision: fp32 for answers independent of batching)")
    ok = (result["server_errors_5xx"] == 0 and (result["wrong_answers"] == 0 or not exact)
          and result["good_requests_failed"] == 0
          and result["transport_errors"] == 0 and result["bad_requests_not_4xx"] == 0)
    return 0 if ok else 1


def mean_batch_size(url: str) -> float | None:
    """Texts per model call so far, from KTT's batch size histogram (both layouts)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = lambda name: sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))  # noqa: E731
    calls = total("ktt_batch_size_count")
    return round(total("ktt_batch_size_sum") / calls, 2) if calls else None


def find_monitor(server_pid: int, monitor_port: int) -> list:
    """The drift monitor's processes under ``ktt serve``: the one listening on its port and
    its workers (BentoML starts them in sessions of their own)."""
    import psutil

    from ktt_core.serving.launch import process_tree

    for proc in process_tree(server_pid)[1:]:
        try:
            if any(c.laddr and c.laddr.port == monitor_port for c in proc.net_connections(kind="tcp")):
                return process_tree(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise RuntimeError(f"no process of the service tree listens on port {monitor_port}")


def kill_monitor(server_pid: int, monitor_port: int) -> None:
    """SIGKILL every process of the drift monitor, as a crash would (no goodbye to the service)."""
    for proc in find_monitor(server_pid, monitor_port):
        try:
            proc.kill()
        except Exception:  # already gone
            continue


if __name__ == "__main__":
    sys.exit(main())
