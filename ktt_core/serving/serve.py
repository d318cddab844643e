"""``ktt serve``: put a trained run into the model store and run its plugin's BentoML service."""
from __future__ import annotations

from typing import Callable

from ktt_core.errors import KttError


def serve(ws, plugins, model_name: str, dataset: str, run_dir, checkpoint, *, host: str, port: int,
          runtime: str = "torch", quantize: str | None = None, max_batch_size: int = 64,
          max_latency_ms: int = 2000, layout: str = "single",
          workers: int | None = None, access_log: bool = False, monitoring: bool = False, monitor_port: int | None = None,
          max_request_bytes: int | None = None, decoding: str = "consistent", threshold: float | None = None,
          threads: int | None = None, echo: Callable = print) -> int:
    """Serve until Ctrl-C; with ``monitoring`` the drift monitor runs beside it. Returns an exit code.

    ``quantize="int8"`` (with ``runtime="onnx"``) serves the int8 copy of the ONNX export, made
    and compared on the test split as ``ktt export --onnx --quantize int8`` does. ``threads``:
    the model runner's CPU threads (``KTT_TORCH_THREADS`` and ``OMP_NUM_THREADS``; None: the
    service's default, :func:`ktt_core.cpu.default_threads`). ``layout``: ``single`` (the
    model in the HTTP process) or ``split`` (BentoML's API + runner), see
    :mod:`ktt_core.serving.service`. ``workers`` processes serve side by side, each with
    ``available CPUs / workers`` threads unless ``threads`` is given (None:
    :func:`default_workers`)."""
    from ktt_core.export import export_with_hook
    from ktt_core.export.bento import model_tag_name, save_model
    from ktt_core.jobs import load_model, resolve_checkpoint
    from ktt_core.serving.launch import (
        check_port,
        run_until_interrupted,
        start_service,
        stop_service,
        wait_ready,
    )

    # Split: the workers are API processes in front of the one runner, which keeps every CPU.
    workers = workers or (default_workers() if layout == "single" else 1)
    if quantize and runtime != "onnx":
        raise KttError(f"--quantize {quantize} goes with --runtime onnx: it quantizes the ONNX export")
    # The ports first: nothing is loaded, stored or started for a port that cannot be used.
    if monitoring:
        if monitor_port == port:
            raise KttError(f"--monitor-port {monitor_port} is the service's --port; pick another")
        if not 1 <= monitor_port <= 65535:
            raise KttError(f"--monitor-port {monitor_port} (--port + 1): a port is a number from 1 to 65535; "
                           f"pick one with --monitor-port")
    check_port(host, port, "--port")
    if monitoring:
        check_port(host, monitor_port, "--monitor-port")
    spec = plugins.model(model_name)
    if not spec.service:
        raise KttError(f"plugin {spec.plugin} declares no BentoML service for {model_name}")
    path = resolve_checkpoint(ws, model_name, dataset, run_dir, checkpoint)
    model_tag_name(model_name, dataset)  # a name that makes no BentoML tag fails before any export
    reference = path.parent / "reference.parquet"
    if monitoring and not reference.is_file():
        raise KttError(f"{path.parent}: no reference set for the drift monitor; "
                       f"train with --reference (or ktt serve without --monitoring)")
    model = load_model(plugins, model_name, path)
    int8_rows = None
    if quantize:  # the test rows of the accuracy check, read (or refused) before anything is exported
        from ktt_core.export.quantize import FOLDER, check_rows, quantize_export

        int8_rows = check_rows(ws, dataset, model)
    onnx_dir = None
    if runtime == "onnx":
        onnx_dir = export_with_hook(plugins, model, "onnx", path.parent / "export" / "onnx")
    if int8_rows is not None:
        check = quantize_export(onnx_dir, onnx_dir.parent / FOLDER, int8_rows)
        onnx_dir = onnx_dir.parent / FOLDER
        for line in check.lines():
            echo(line)
    tag = save_model(plugins, model, path, dataset, include_onnx=onnx_dir)
    echo(f"serving {tag} ({runtime}{' ' + quantize if quantize else ''}, {layout} layout, "
         f"{workers} worker{'s' if workers > 1 else ''}) from {path}")
    env = {"KTT_MODEL": model_name, "KTT_BENTO_MODEL": tag, "KTT_RUNTIME": runtime,
           "KTT_MAX_BATCH_SIZE": max_batch_size, "KTT_MAX_LATENCY_MS": max_latency_ms, "KTT_DECODING": decoding,
           "KTT_SERVICE_LAYOUT": layout, "KTT_ACCESS_LOG": int(access_log), "KTT_WORKERS": workers}
    if threads is None and workers > 1 and layout == "single":  # CPUs shared out among the model copies
        from ktt_core.cpu import available_cpus

        threads = max(1, available_cpus() // workers)
    if threshold is not None:  # compared with calibrated confidences, as ktt predict does
        env["KTT_THRESHOLD"] = threshold
    if max_request_bytes:
        env["KTT_MAX_REQUEST_BYTES"] = max_request_bytes
    if threads:
        # OMP_NUM_THREADS too: onnxruntime (--runtime onnx) and the child's other OpenMP users size to it.
        env["KTT_TORCH_THREADS"] = env["OMP_NUM_THREADS"] = threads
    processes = []
    try:
        if monitoring:
            from ktt_core.monitoring.launch import start_monitor

            processes.append(start_monitor(reference, model_name, host, monitor_port, window=500))
            env["KTT_MONITOR_URL"] = f"http://{host}:{monitor_port}"
            echo(f"drift monitor on http://{host}:{monitor_port} (/metrics)")
        service = start_service(spec.service, host, port, env)
        processes.insert(0, service)
        wait_ready(service, f"http://{host}:{port}", timeout=300)
    except BaseException:
        for process in processes:
            stop_service(process)
        raise
    echo(f"ready: POST http://{host}:{port}/predict  {{\"text\": \"...\"}}   (/metrics, /readyz; Ctrl-C stops)")
    return run_until_interrupted(processes[0], processes[1:], echo)


#: Most serving processes ``ktt serve`` starts by itself: each holds a model copy.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """One serving process per CPU the service may use, at most :data:`MAX_DEFAULT_WORKERS`.

    Measured on 2 cores (benchmarks/README.md#serving): two one-thread processes served
    1.12-1.15x what one two-thread process did, with half the p99 latency, as each keeps its
    core busy with its own HTTP work and model calls. The cap bounds the memory of the
    copies on a large machine (``--workers`` goes beyond it).
    """
    from ktt_core.cpu import available_cpus

    return max(1, min(available_cpus(), MAX_DEFAULT_WORKERS))
